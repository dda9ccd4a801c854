"""Teachers: anything that maps transfer inputs to soft targets (paper section 2); students never know which.

A teacher is one cumbersome model or an ensemble (``Teacher``), or a generalist with its specialists
(``specialists.CombinedTeacher``, section 5). Every teacher offers the same four things (``TeacherLike``):
``num_classes``, ``fingerprint()``, ``soft_targets(x, T)`` ``[N, C]`` and ``bank_targets(x, bank, T)``
``[V * N, C]`` (its targets on every view of a ``views.ViewBank``), and ``check_fits(data)``.

What a teacher computes on a transfer set is computed once and cached (``OutputCache``) under a key made of
the teacher's fingerprint (the SHA-256 of every model's architecture and weights, and of whatever else
shapes its outputs), the SHA-256 of the transfer-set tensor, and a view name (``plain``, or a bank's
``ViewBank.key()``, which holds the SHA-256 of its codes). Soft targets at any temperature and combination
rule are derived from the cached outputs on demand, so a changed teacher, temperature, view or data can
never be served stale targets.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import torch
from safetensors.torch import load_file, save
from torch import nn

from darkknowledge.checkpoint import atomic_write_bytes, load_checkpoint
from darkknowledge.data import pad_for_jitter
from darkknowledge.errors import DKError
from darkknowledge.evaluation import predict_logits
from darkknowledge.losses import COMBINE_METHODS, ensemble_probs

if TYPE_CHECKING:
    from darkknowledge.data import Dataset
    from darkknowledge.views import ViewBank


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


def output_key(fingerprint: str, x: torch.Tensor, view: str = "plain") -> str:
    """The cache key of a teacher's outputs: its fingerprint, the transfer set's SHA-256 and the view name."""
    return hashlib.sha256(f"{fingerprint}|{tensor_digest(x)}|{view}".encode()).hexdigest()


class TeacherLike(Protocol):
    """What ``workflows.distill`` needs of a teacher."""

    combine: str  # how it combines its models' outputs: an ensemble mean, or the specialists' KL combination

    @property
    def num_classes(self) -> int: ...

    def fingerprint(self) -> str: ...

    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor: ...

    def bank_targets(self, x: torch.Tensor, bank: "ViewBank", temperature: float) -> torch.Tensor: ...

    def check_fits(self, data: "Dataset") -> None: ...


class OutputCache:
    """A teacher's outputs by key, in memory and (with ``cache_dir``) on disk as safetensors files; counts
    hits, misses and the seconds spent computing on misses."""

    def __init__(self, cache_dir: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._memory: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.misses = 0
        self.compute_seconds = 0.0

    def get(self, key: str, compute: Callable[[], torch.Tensor], device: torch.device) -> torch.Tensor:
        """The tensor cached under ``key`` (on ``device``), else ``compute()``'s, checked finite and stored."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key].to(device)
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir is not None else None
        value = None
        if path is not None and path.is_file():
            try:
                value = load_file(path)["logits"]
                self.hits += 1
            except Exception:  # a damaged cache entry is recomputed, never trusted
                value = None
        if value is None:
            self.misses += 1
            t0 = time.perf_counter()
            value = compute()
            self.compute_seconds += time.perf_counter() - t0
            if not torch.isfinite(value).all():
                bad = int((~torch.isfinite(value)).reshape(-1, value.shape[-1]).any(-1).sum())
                raise DKError(f"teacher produced NaN or inf outputs on {bad} transfer examples or views; "
                              "check its checkpoint and the input data")
            if path is not None:
                atomic_write_bytes(path, save({"logits": value.cpu().contiguous()}))
        self._memory[key] = value.cpu()
        return value.to(device)


def bank_logits_of(model: nn.Module, x: torch.Tensor, bank: "ViewBank", batch_size: int = 1024) -> torch.Tensor:
    """``[V, N, C]`` eval-mode logits of ``model`` on view ``bank.codes[v, n]`` of each image ``x[n]``."""
    bank = bank.to(x.device)  # its codes index the padded images where they live
    padded = pad_for_jitter(x, bank.max_shift, bank.fill)
    out = []
    for v in range(bank.views):
        rows = []
        for i in range(0, len(x), batch_size):
            idx = torch.arange(i, min(i + batch_size, len(x)), device=x.device)
            rows.append(predict_logits(model, bank.images(padded, v, idx)))
        out.append(torch.cat(rows))
    return torch.stack(out)


def check_model_fits(model: nn.Module, num_classes: int, data: "Dataset", what: str = "teacher") -> None:
    """``model`` must take the data's inputs and predict over the data's classes."""
    if num_classes != data.num_classes:
        raise DKError(f"{what} predicts {num_classes} classes but the data has {data.num_classes}")
    try:
        with torch.no_grad():
            model.eval()(data.x_test[:1].to(next(model.parameters()).device))
    except RuntimeError:
        raise DKError(f"{what} does not take this data's inputs of shape {tuple(data.x_test.shape[1:])}") from None


def output_size(model: nn.Module) -> int:
    """Output size of a classifier: what it says (``output_classes``, a user's module wrapped by ``api``), else
    its last linear layer's."""
    if isinstance(getattr(model, "output_classes", None), int):
        return model.output_classes
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DKError("cannot tell the teacher's class count (no linear output layer)")
    return linears[-1].out_features


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
        self.cache = OutputCache(cache_dir)

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
        return output_size(self.members[0])

    def fingerprint(self) -> str:
        """Hash of the members' architectures and current weights (recomputed on every call)."""
        h = hashlib.sha256()
        for arch, m in zip(self.archs, self.members):
            h.update(model_digest(m, arch).encode())
        return h.hexdigest()

    def cache_key(self, x: torch.Tensor, view: str = "plain") -> str:
        return output_key(self.fingerprint(), x, view)

    def member_logits(self, x: torch.Tensor, view: str = "plain", tta: int = 0) -> torch.Tensor:
        """``[M, N, C]`` eval-mode logits of every member on ``x``, cached by (teacher, data, view); ``tta``: each
        member's mean over the test-time views (``evaluation.tta_views``), cached apart."""
        key = self.cache_key(x, view if not tta else f"{view}:tta{tta}")
        return self.cache.get(key, lambda: torch.stack([predict_logits(m.to(x.device), x, tta=tta)
                                                        for m in self.members]), x.device)

    def bank_logits(self, x: torch.Tensor, bank: "ViewBank") -> torch.Tensor:
        """``[M, V, N, C]`` eval-mode logits of every member on every view of ``bank`` (``bank_logits_of``),
        cached under the bank's key: other codes, augmentation or fill never hit it."""
        if bank.codes.dim() != 2 or bank.codes.shape[1] != len(x):
            raise DKError(f"view codes must be [V, {len(x)}], got {tuple(bank.codes.shape)}")
        return self.cache.get(self.cache_key(x, bank.key()),
                              lambda: torch.stack([bank_logits_of(m.to(x.device), x, bank) for m in self.members]),
                              x.device)

    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """``[N, C]`` soft targets at ``temperature``: the ensemble mean of the members' softened outputs."""
        return ensemble_probs(self.member_logits(x), temperature, self.combine)

    def bank_targets(self, x: torch.Tensor, bank: "ViewBank", temperature: float) -> torch.Tensor:
        """``[V * N, C]`` soft targets on every view of ``bank``, row ``v * N + n`` for view v of example n."""
        return ensemble_probs(self.bank_logits(x, bank).flatten(1, 2), temperature, self.combine)

    def check_fits(self, data: "Dataset") -> None:
        """The members must take the data's inputs and predict over the data's classes."""
        check_model_fits(self.members[0], self.num_classes, data)
