"""Teachers: one cumbersome model or an ensemble, and their cached soft targets (paper section 2).

A teacher's member logits on a transfer set are computed once and cached under a key made of the
SHA-256 of every member's architecture and weights, the SHA-256 of the transfer-set tensor, and an
augmentation "view" name. Soft targets at any temperature and combination rule are derived from the
cached logits on demand, so a changed teacher, temperature or data can never be served stale targets.

Under augmentation (``view_bank``), each transfer image has V views (random crops and mirrors, view codes
of ``data.apply_views``); the members' logits on every view are computed once, cached under a key that
also holds the SHA-256 of the view codes, and served with the codes, so ``fit`` shows a student the very
view its target was computed on. Every student, temperature and ensemble mean reuses the bank.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save
from torch import nn

from darkknowledge.checkpoint import atomic_write_bytes, load_checkpoint
from darkknowledge.data import apply_views, pad_for_jitter
from darkknowledge.errors import DKError
from darkknowledge.losses import COMBINE_METHODS, ensemble_probs


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over the shapes, dtypes and bytes of ``tensors``."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # 0-dim too
    return h.hexdigest()


def model_digest(model: nn.Module, arch: str = "") -> str:
    """SHA-256 of an architecture name and every parameter and buffer, in state-dict order."""
    h = hashlib.sha256(arch.encode())
    for name, t in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_digest(t).encode())
    return h.hexdigest()


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Eval-mode logits ``[N, C]`` in batches on ``x``'s device; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


class Teacher:
    """One or more trained models whose (combined) softened outputs are the students' soft targets.

    Args:
        members: the models (one for a single cumbersome net; several for an ensemble).
        combine: ``"arithmetic"`` or ``"geometric"`` mean of the members' distributions.
        archs: architecture names of the members (part of the cache key).
        cache_dir: if set, member logits are also cached on disk there as safetensors files.
    """

    def __init__(self, members: Sequence[nn.Module], combine: str = "arithmetic",
                 archs: Sequence[str] | None = None, cache_dir: str | Path | None = None) -> None:
        if not members:
            raise DKError("a teacher needs at least one model")
        if combine not in COMBINE_METHODS:
            raise DKError(f"unknown combine method {combine!r}; allowed: {', '.join(COMBINE_METHODS)}")
        self.members = list(members)
        self.combine = combine
        self.archs = list(archs) if archs is not None else [type(m).__name__ for m in members]
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.cache_hits = 0
        self.cache_misses = 0
        self.compute_seconds = 0.0  # spent running members (cache misses)

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path], combine: str = "arithmetic",
                         device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> "Teacher":
        """Load every checkpoint; they must agree on input size and class count."""
        loaded = [load_checkpoint(p, device=device) for p in paths]
        shapes = {(m["in_features"], m["num_classes"]) for _, m, _ in loaded}
        if len(shapes) > 1:
            raise DKError(f"teacher checkpoints disagree on (inputs, classes): {sorted(shapes)}")
        return cls([m for m, _, _ in loaded], combine, [meta["arch"] for _, meta, _ in loaded], cache_dir)

    @property
    def num_classes(self) -> int:
        """Output size of the members (the last linear layer of the first one)."""
        linears = [m for m in self.members[0].modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise DKError("cannot tell the teacher's class count (no linear output layer)")
        return linears[-1].out_features

    def fingerprint(self) -> str:
        """Hash of the members' architectures and current weights (recomputed on every call)."""
        h = hashlib.sha256()
        for arch, m in zip(self.archs, self.members):
            h.update(model_digest(m, arch).encode())
        return h.hexdigest()

    def cache_key(self, x: torch.Tensor, view: str = "plain") -> str:
        return hashlib.sha256(f"{self.fingerprint()}|{tensor_digest(x)}|{view}".encode()).hexdigest()

    def member_logits(self, x: torch.Tensor, view: str = "plain") -> torch.Tensor:
        """``[M, N, C]`` eval-mode logits of every member on ``x``, cached by (teacher, data, view)."""
        return self._cached(x, view, lambda m: predict_logits(m, x))

    def _cached(self, x: torch.Tensor, view: str, member_fn) -> torch.Tensor:
        """``member_fn(member)`` for every member, stacked, from the memory or disk cache when there."""
        key = self.cache_key(x, view)
        if key in self._memory:
            self.cache_hits += 1
            return self._memory[key].to(x.device)
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                logits = load_file(path)["logits"]
                self.cache_hits += 1
            except Exception:  # a damaged cache entry is recomputed, never trusted
                logits = None
        else:
            logits = None
        if logits is None:
            self.cache_misses += 1
            t0 = time.perf_counter()
            logits = torch.stack([member_fn(m.to(x.device)) for m in self.members])
            self.compute_seconds += time.perf_counter() - t0
            if not torch.isfinite(logits).all():
                bad = (~torch.isfinite(logits)).any(-1).reshape(-1, len(x)).any(0).sum().item()
                raise DKError(f"teacher produced NaN or inf outputs on {bad} transfer examples; "
                              "check its checkpoint and the input data")
            if path is not None:
                atomic_write_bytes(path, save({"logits": logits.cpu().contiguous()}))
        self._memory[key] = logits.cpu()
        return logits.to(x.device)

    def bank_logits(self, x: torch.Tensor, codes: torch.Tensor, max_shift: int, flip: bool,
                    fill: float = 0.0) -> torch.Tensor:
        """``[M, V, N, C]`` eval-mode logits of every member on view ``codes[v, n]`` of each image ``x[n]``
        (``data.apply_views`` on ``x`` padded by ``max_shift`` with ``fill``), cached like ``member_logits``
        under a view name holding the SHA-256 of the codes: other codes (a shifted view) never hit it."""
        if codes.dim() != 2 or codes.shape[1] != len(x):
            raise DKError(f"view codes must be [V, {len(x)}], got {tuple(codes.shape)}")
        view = f"bank:k={max_shift}:flip={int(flip)}:fill={fill:g}:{tensor_digest(codes)}"
        return self._cached(x, view, lambda m: self._bank_member(m, x, codes, max_shift, flip, fill))

    @staticmethod
    def _bank_member(model: nn.Module, x: torch.Tensor, codes: torch.Tensor, max_shift: int, flip: bool,
                     fill: float, batch_size: int = 1024) -> torch.Tensor:
        padded = pad_for_jitter(x, max_shift, fill)
        codes = codes.to(x.device)
        out = []
        for v in range(len(codes)):
            rows = []
            for i in range(0, len(x), batch_size):
                idx = torch.arange(i, min(i + batch_size, len(x)), device=x.device)
                rows.append(predict_logits(model, apply_views(padded, idx, codes[v, idx], max_shift, flip)))
            out.append(torch.cat(rows))
        return torch.stack(out)

    def soft_targets(self, x: torch.Tensor, temperature: float, view: str = "plain") -> torch.Tensor:
        """``[N, C]`` soft targets at ``temperature``: the ensemble mean of the members' softened outputs."""
        return ensemble_probs(self.member_logits(x, view), temperature, self.combine)
