"""What the student sees of each transfer example, and which teacher target goes with it.

Every augmentation is a view code (``data.apply_views``): the crop at (dy, dx) of the image padded by
``max_shift`` with the background ``fill``, mirrored or not. Two kinds of ``Views`` share one interface,
``draw(padded, idx, generator) -> (images, rows)``: the batch ``fit`` trains on, and the row of the
objective's targets for each of its images.

- ``RandomViews``: a fresh random view of every example at every step (or the example as it is, without
  jitter and flips); one target row per example. The hard-label and plain soft-target runs.
  ``AlternatingFlips`` is the same with each image's mirror fixed per epoch and alternating between epochs.
- ``ViewBank``: V views per example as codes ``[V, N]``, the teacher's output on view v of example n at
  row ``v * N + n`` of the targets (computed once, cached, reused by every student). A *random* bank
  (``ViewBank.random``) keeps slot 0 plain and draws the other slots' codes seeded, and the student picks
  a random slot per example; an *exhaustive* bank (``ViewBank.every``) holds every code, and the student
  draws its view exactly as ``RandomViews`` would, then reads the target of the code it drew.

A *mixed* bank (``mixup`` alpha > 0) also gives every slot but the plain one a partner example and a mixing
weight (mixup, Zhang et al. 2018; Beyer et al. 2022 distil on such views): view v of example n is
``w * view(x[n]) + (1 - w) * view(x[partner])``, both in the codes of slot v, and the teacher's target row is
its output on that mixed image; partners and weights are part of the bank's key, so other pairings or weights
never hit its cache.

A bank is made from the student's own augmentation and inputs in one place, ``ViewBank.for_student``, so
a teacher stage that fills the cache and the student stage that reads it always agree on codes and key.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from darkknowledge.data import apply_views, background_value, gather_views, view_count
from darkknowledge.errors import DKError


def _digest(codes: torch.Tensor) -> str:
    from darkknowledge.teachers import tensor_digest

    return tensor_digest(codes)


@dataclass(frozen=True)
class RandomViews:
    """A new random view per example and step (``data.gather_views``); targets one row per example."""

    max_shift: int
    flip: bool

    def draw(self, padded: torch.Tensor, idx: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        return gather_views(padded, idx, self.max_shift, self.flip, generator), idx


@dataclass(frozen=True)
class AlternatingFlips:
    """Random translations, but derandomised mirrors (airbench's alternating flips): image n is mirrored in
    this epoch exactly when ``mirrored[n]`` is 1; ``fit`` passes a seeded random half, inverted every other
    epoch, so each image is seen both ways every two epochs. Targets one row per example."""

    max_shift: int
    mirrored: torch.Tensor  # [N] int64, 0 or 1

    @classmethod
    def for_epoch(cls, max_shift: int, n: int, seed: int, epoch: int, device: torch.device) -> "AlternatingFlips":
        base = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(seed))
        return cls(max_shift, (base ^ (epoch % 2)).to(device))

    def draw(self, padded: torch.Tensor, idx: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.max_shift
        shifts = torch.randint(0, 2 * k + 1, (2, len(idx)), device=padded.device, generator=generator)
        codes = shifts[0] * (2 * k + 1) + shifts[1] + self.mirrored[idx] * (2 * k + 1) ** 2
        return apply_views(padded, idx, codes, k, True), idx


@dataclass(frozen=True)
class ViewBank:
    """V views of each of N examples: ``codes [V, N]``; the teacher's target for view v of example n is row
    ``v * N + n``. ``exhaustive``: the bank holds every code (``codes[v] == v``) and is drawn like random
    augmentation; otherwise a random slot is drawn per example."""

    codes: torch.Tensor  # [V, N] int64 view codes
    max_shift: int
    flip: bool
    fill: float
    exhaustive: bool = False
    # Mixed views (None: unmixed): view v of example n mixes it with example partners[v, n] at weight weights[v, n].
    partners: torch.Tensor | None = None  # [V, N] int64
    weights: torch.Tensor | None = None  # [V, N] float32 in [0, 1]: the weight of example n itself

    @classmethod
    def random(cls, n: int, views: int, max_shift: int, flip: bool, fill: float, seed: int = 0,
               mixup: float = 0.0) -> "ViewBank":
        """Slot 0 every image as it is (untranslated, unmirrored, unmixed), the other slots random codes, seeded,
        so every student drawing on one bank sees the same views and the teacher's targets on them are paid
        once. ``mixup`` alpha > 0: the other slots also mix each image with a random partner at a weight drawn
        from Beta(alpha, alpha)."""
        if views < 1:
            raise DKError(f"a view bank needs at least 1 view, got {views}")
        if mixup < 0:
            raise DKError(f"mixup alpha must be >= 0, got {mixup}")
        gen = torch.Generator().manual_seed(seed)
        codes = torch.randint(0, view_count(max_shift, flip), (views, n), generator=gen)
        codes[0] = max_shift * (2 * max_shift + 1) + max_shift
        if not mixup:
            return cls(codes, max_shift, flip, fill)
        partners = torch.randint(0, n, (views, n), generator=gen)
        partners[0] = torch.arange(n)
        # The weights from the seed too (torch's Beta sampler takes no generator): the same bank in every process.
        weights = torch.from_numpy(np.random.default_rng(seed).beta(mixup, mixup, (views, n)))
        weights[0] = 1.0
        return cls(codes, max_shift, flip, fill, partners=partners, weights=weights.float())

    @classmethod
    def every(cls, n: int, max_shift: int, flip: bool, fill: float) -> "ViewBank":
        """Every view ``data.gather_views`` can draw (every translation, mirrored or not), for all N examples."""
        v = view_count(max_shift, flip)
        return cls(torch.arange(v)[:, None].expand(v, n).contiguous(), max_shift, flip, fill, exhaustive=True)

    @classmethod
    def for_student(cls, x: torch.Tensor, max_shift: int, flip: bool, views: int = 0,
                    mixup: float = 0.0) -> "ViewBank":
        """The bank a student with this augmentation sees on transfer inputs ``x``: ``views`` random slots (mixed
        with ``mixup`` alpha > 0), or (``views`` 0) every view; filled with the inputs' background level, as
        ``fit`` pads them."""
        if not (max_shift or flip or mixup):
            raise DKError("a view bank needs an augmentation to draw views from: set jitter, flip and/or mixup")
        if x.dim() not in (3, 4):
            raise DKError(f"a view bank needs images [N, H, W] or [N, C, H, W]; the transfer set is {tuple(x.shape)}")
        fill = background_value(x)
        if views:
            return cls.random(len(x), views, max_shift, flip, fill, mixup=mixup)
        if mixup:
            raise DKError("mixed views need a bank of random slots: give view_bank > 0 with mixup")
        return cls.every(len(x), max_shift, flip, fill)

    @property
    def views(self) -> int:
        return int(self.codes.shape[0])

    @property
    def mixed(self) -> bool:
        return self.partners is not None

    def key(self) -> str:
        """The cache name of this bank: augmentation, fill and the SHA-256 of the codes, and of the partners
        and weights of a mixed bank (other codes, pairings or weights never hit)."""
        key = f"bank:k={self.max_shift}:flip={int(self.flip)}:fill={self.fill:g}:{_digest(self.codes)}"
        if self.mixed:
            key += f":mixup:{_digest(self.partners)}:{_digest(self.weights)}"
        return key

    def to(self, device: torch.device) -> "ViewBank":
        move = (lambda t: None if t is None else t.to(device))
        return ViewBank(self.codes.to(device), self.max_shift, self.flip, self.fill, self.exhaustive,
                        move(self.partners), move(self.weights))

    def check(self, n: int, max_shift: int, flip: bool, fill: float) -> None:
        """The bank must be for ``n`` examples seen with this augmentation and background, as ``fit`` draws them."""
        if (self.codes.dim() != 2 or self.codes.shape[1] != n or self.max_shift != max_shift or self.flip != flip
                or self.fill != fill or int(self.codes.max()) >= view_count(max_shift, flip)
                or (self.mixed and (self.partners.shape != self.codes.shape or self.weights.shape != self.codes.shape
                                    or int(self.partners.max()) >= n))):
            raise DKError(f"the objective's view bank {tuple(self.codes.shape)} (jitter {self.max_shift}, flip "
                          f"{self.flip}, fill {self.fill:g}) does not fit {n} examples with jitter {max_shift}, flip "
                          f"{flip} and background {fill:g}")

    def _view(self, padded: torch.Tensor, slot: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Examples ``idx``, example ``idx[i]`` in its view of slot ``slot[i]``, mixed with its partner there."""
        xb = apply_views(padded, idx, self.codes[slot, idx], self.max_shift, self.flip)
        if not self.mixed:
            return xb
        partner = self.partners[slot, idx]
        xp = apply_views(padded, partner, self.codes[slot, partner], self.max_shift, self.flip)
        if xb.dtype == torch.uint8:  # mixed pixels are no longer integers: floats in [0, 1], as models take them
            xb, xp = xb.float() / 255, xp.float() / 255
        w = self.weights[slot, idx].view(-1, *([1] * (xb.dim() - 1))).to(xb.dtype)
        return w * xb + (1 - w) * xp

    def images(self, padded: torch.Tensor, v: int, idx: torch.Tensor) -> torch.Tensor:
        """Examples ``idx`` in their view of slot ``v`` (the teacher's inputs for those target rows); the bank's
        codes, ``padded`` and ``idx`` on one device (``to``)."""
        return self._view(padded, torch.full_like(idx, v), idx)

    def draw(self, padded: torch.Tensor, idx: torch.Tensor,
             generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.codes.shape[1]
        if self.exhaustive:  # drawn as random augmentation is; the target is the one of the code drawn
            xb, code = gather_views(padded, idx, self.max_shift, self.flip, generator, return_code=True)
            return xb, code * n + idx
        slot = torch.randint(0, self.views, (len(idx),), device=padded.device, generator=generator)
        return self._view(padded, slot, idx), slot * n + idx


Views = RandomViews | AlternatingFlips | ViewBank
