"""The short Python API: ``dk.train`` and ``dk.distill`` on any data and any models.

    import darkknowledge as dk
    teacher, _ = dk.train("airnet-32-128-128", "cifar10:data", epochs=20)
    student, report = dk.distill(teacher, "resnet-s-w8", "cifar10:data", temperature=4, epochs=20)
    print(report)

Data is a known source (``"digits"``, ``cifar10:DIR``, ``mnist:DIR``, ``folder:DIR``, a ``.npz`` file), a
``data.Dataset``, or tensors / arrays: ``(x_train, y_train, x_test, y_test)``, or ``(x, y)`` from which a
seeded, stratified tenth is held out as the test split. A teacher is a module, a list of modules (an
ensemble: ``combine`` says how their distributions are averaged), a checkpoint path or a list of them, or a
``teachers.Teacher``; a student is a module or a registry name (``dk.ARCHITECTURES``). Modules from
torchvision, timm or Hugging Face ``transformers`` work as they are: a module whose output is not a tensor
(a ``transformers`` ``ModelOutput``, a tuple) is read by its ``logits`` (or first element), and images
stored as bytes reach it as floats in [0, 1]. Training goes through the same loop, checkpoints, resume,
progress bars and teacher cache as the CLI; the trained module is the one passed in, trained in place.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig
from darkknowledge.data import Dataset, from_arrays, load_data, split_validation
from darkknowledge.device import resolve_device
from darkknowledge.errors import DKError
from darkknowledge.models import CUSTOM_PREFIX, check_arch
from darkknowledge.teachers import Teacher, TeacherLike
from darkknowledge import workflows

HELD_OUT = 0.1  # the share of ``(x, y)`` held out as the test split when no test split is given
_TRAIN_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)} - {"arch"}


@dataclass
class Report:
    """What one ``train`` or ``distill`` call measured: test errors and accuracy, per-epoch history, seconds, the
    settings, the checkpoint directory, and (``distill`` with a ``baseline``) the teacher check."""

    name: str
    test: dict[str, Any]
    history: list[dict[str, Any]]
    seconds: float
    settings: dict[str, Any]
    checkpoint: str | None = None
    teacher_check: dict[str, Any] | None = None
    transfer_size: int = 0
    data: str = ""

    @property
    def accuracy(self) -> float:
        return float(self.test["accuracy"])

    @property
    def errors(self) -> int:
        return int(self.test["errors"])

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        rows = [("model", self.name), ("data", self.data),
                ("test errors", f"{self.errors} of {self.test['test_size']}"),
                ("test accuracy", f"{100 * self.accuracy:.2f}%"), ("transfer set", str(self.transfer_size)),
                ("epochs", str(len(self.history))), ("seconds", f"{self.seconds:.1f}")]
        if self.teacher_check is not None:
            c = self.teacher_check
            rows.append(("teacher check", f"teacher {c['teacher_errors'][0]} vs baseline {c['baseline_errors'][0]} "
                                          f"errors of {c['size']} ({c['split']} split)"))
        if self.checkpoint:
            rows.append(("checkpoint", self.checkpoint))
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


class UserModule(nn.Module):
    """A user's module as the loop expects one: byte images in as floats in [0, 1], logits out (a
    ``ModelOutput``'s ``logits`` or a tuple's first element), its class count known (``output_classes``)."""

    def __init__(self, module: nn.Module, probe: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        try:
            with torch.no_grad():
                was = module.training
                out = self.eval()(probe[:1].to(_device_of(module)))
                module.train(was)
        except (RuntimeError, TypeError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DKError(f"{type(module).__name__} does not take this data's inputs of shape "
                          f"{tuple(probe.shape[1:])}: {first}") from None
        if out.dim() != 2:
            raise DKError(f"{type(module).__name__} gives outputs of shape {tuple(out.shape)} for one input; a "
                          "classifier gives [batch, classes]")
        self.output_classes = int(out.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float() / 255
        out = self.module(x)
        if isinstance(out, torch.Tensor):
            return out
        logits = getattr(out, "logits", None)
        if isinstance(logits, torch.Tensor):
            return logits
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            return out[0]
        raise DKError(f"{type(self.module).__name__} returns a {type(out).__name__}, not logits (a tensor, an "
                      "output with .logits, or a tuple starting with them)")


def _device_of(module: nn.Module) -> torch.device:
    p = next(iter(module.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _ours(module: nn.Module) -> bool:
    """Built by this package's registry (takes byte images and gives logits itself)."""
    return type(module).__module__.startswith("darkknowledge.") and not isinstance(module, UserModule)


def _adapt(module: nn.Module, data: Dataset) -> nn.Module:
    return module if _ours(module) or isinstance(module, UserModule) else UserModule(module, data.x_test)


def as_dataset(data: Any, seed: int = 0) -> Dataset:
    """A ``Dataset`` from a source string, a ``Dataset``, or tensors / arrays (see the module docstring)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, (str, Path)):
        return load_data(str(data))
    if isinstance(data, (tuple, list)) and len(data) in (2, 4):
        arrays = [torch.as_tensor(t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)) for t in data]
        if len(arrays) == 2:
            x, y = arrays
            if len(x) != len(y):
                raise DKError(f"data: {len(x)} inputs but {len(y)} labels")
            if len(y) < 20:
                raise DKError(f"data: {len(y)} examples are too few to hold a tenth out as the test split")
            x_tr, y_tr, x_te, y_te = _held_out(x, y, seed)
        else:
            x_tr, y_tr, x_te, y_te = arrays
        if y_tr.is_floating_point() or y_te.is_floating_point():
            raise DKError("data: labels must be integers (class indices)")
        if x_tr.dtype != torch.uint8 and not x_tr.is_floating_point():
            raise DKError(f"data: inputs must be floats or bytes (uint8), not {x_tr.dtype}")
        scale = None if x_tr.dtype == torch.uint8 else 1.0
        return from_arrays("tensors", *(t.numpy() for t in (x_tr, y_tr, x_te, y_te)), scale=scale)
    raise DKError(f"data must be a source string (digits, cifar10:DIR, mnist:DIR, folder:DIR, FILE.npz), a Dataset, "
                  f"(x, y) or (x_train, y_train, x_test, y_test), not {type(data).__name__}")


def _held_out(x: torch.Tensor, y: torch.Tensor, seed: int):
    """A seeded, stratified tenth of ``(x, y)`` as the test split (scikit-learn's ``train_test_split``)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    counts = np.bincount(y.numpy().astype(np.int64))
    stratify = y.numpy() if counts[counts > 0].min() >= 2 else None
    tr, te = train_test_split(idx, test_size=HELD_OUT, random_state=seed, stratify=stratify)
    tr, te = torch.as_tensor(np.sort(tr)), torch.as_tensor(np.sort(te))
    return x[tr], y[tr], x[te], y[te]


def as_teacher(teacher: Any, data: Dataset, combine: str = "arithmetic", device: str | torch.device = "cpu",
               cache_dir: str | Path | None = None) -> TeacherLike:
    """A teacher from a module, a list of modules, a checkpoint path, a list of paths, or a ``TeacherLike``."""
    if hasattr(teacher, "soft_targets") and hasattr(teacher, "fingerprint"):
        return teacher
    items = list(teacher) if isinstance(teacher, (list, tuple)) else [teacher]
    if not items:
        raise DKError("a teacher needs at least one model")
    if all(isinstance(t, (str, Path)) for t in items):
        return Teacher.from_checkpoints(items, combine, device=device, cache_dir=cache_dir)
    if all(isinstance(t, nn.Module) for t in items):
        members = [_adapt(m, data).to(device) for m in items]
        archs = [_arch_of(_inner(m)) for m in members]
        return Teacher(members, combine, archs, cache_dir)
    raise DKError("a teacher is a module, a checkpoint path, a list of either, or a darkknowledge Teacher, "
                  f"not {', '.join(sorted({type(t).__name__ for t in items}))}")


def _arch_of(module: nn.Module) -> str:
    """The registry name a module was built from (``models.build_model`` tags it), else ``custom:CLASS``."""
    arch = getattr(module, "dk_arch", None)
    return arch if isinstance(arch, str) and _ours(module) else f"{CUSTOM_PREFIX}{type(module).__name__}"


def _inner(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, UserModule) else m


def _config(arch: str, settings: dict[str, Any]) -> TrainConfig:
    unknown = sorted(set(settings) - _TRAIN_FIELDS)
    if unknown:
        raise DKError(f"unknown training setting(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_TRAIN_FIELDS))}")
    return TrainConfig(arch=arch, **settings)


def _student(student: nn.Module | str, data: Dataset, settings: dict[str, Any]
             ) -> tuple[nn.Module | None, nn.Module | None, TrainConfig]:
    """``(module to train or None: build cfg.arch, the user's own module to hand back, config)``."""
    if isinstance(student, str):
        check_arch(student)
        return None, None, _config(student, settings)
    if isinstance(student, nn.Module):
        model = _adapt(student, data)
        cfg = _config(_arch_of(student), settings)
        return model, student, cfg
    raise DKError(f"a student is a module or a registry name (see dk.ARCHITECTURES), not {type(student).__name__}")


def _split(data: Dataset, val_size: int, seed: int) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor] | None]:
    if not val_size:
        return data, None
    x, y, xv, yv = split_validation(data.x_train, data.y_train, val_size, seed)
    return dataclasses.replace(data, x_train=x, y_train=y), (xv, yv)


def _report(result: workflows.Result, data: Dataset, settings: dict[str, Any],
            check: dict[str, Any] | None) -> Report:
    report = Report(result.name, result.test, result.history, result.seconds, settings, result.checkpoint, check,
                    result.transfer_size, data.name)
    if result.checkpoint:
        from darkknowledge.checkpoint import atomic_write_json

        atomic_write_json(Path(result.checkpoint) / "report.json", json.loads(json.dumps(report.to_dict(),
                                                                                          default=str)))
    return report


def train(model: nn.Module | str, data: Any, *, epochs: int = 10, val_size: int = 0, out: str | Path | None = None,
          resume: bool = False, progress: bool = True, tensorboard: str | Path | None = None,
          **settings: Any) -> tuple[nn.Module, Report]:
    """Train ``model`` (a module, trained in place, or a registry name) on hard labels.

    ``settings`` are ``TrainConfig`` fields (``lr``, ``batch_size``, ``jitter``, ``flip``, ``device``,
    ``precision``, ...); ``val_size`` images are held out of the training split (seeded by ``seed``), so a
    later ``distill(..., val_size=...)`` can check this model against its teacher on images neither learnt.
    ``tensorboard``: every epoch's metrics also as TensorBoard event files there (``logs``). Returns the trained module and its ``Report``.
    """
    ds = as_dataset(data, settings.get("seed", 0))
    module, given, cfg = _student(model, ds, {"epochs": epochs, **settings})
    ds, _ = _split(ds, val_size, cfg.seed)
    result = workflows.train(cfg.arch, ds, cfg, out=out, resume=resume, progress=progress,
                             meta={"command": "api.train", "val_size": val_size}, model=module,
                             tensorboard=tensorboard)
    report = _report(result, ds, {"train": dataclasses.asdict(cfg), "val_size": val_size}, None)
    return (given if given is not None else result.model), report


def distill(teacher: Any, student: nn.Module | str, data: Any, *, temperature: float = 4.0, epochs: int = 10,
            hard_weight: float = 0.0, soft_weight: float = 1.0, combine: str = "arithmetic", views: int = 0,
            mixup: float = 0.0, baseline: nn.Module | str | Path | None = None, val_size: int = 0,
            cache_dir: str | Path | None = None, out: str | Path | None = None, resume: bool = False,
            progress: bool = True, tensorboard: str | Path | None = None, **settings: Any) -> tuple[nn.Module, Report]:
    """Train ``student`` on ``teacher``'s soft targets at ``temperature`` (paper section 2) over ``data``'s
    training split.

    ``hard_weight``/``soft_weight``: the loss's weights (``dk.distillation_loss``); ``views`` > 0: a bank of
    that many augmented views of every image (the student's own ``jitter``/``flip``), the teacher's targets
    computed once on each and the student taught on exactly the view it sees; ``mixup``: those views mixed
    in pairs (Beyer et al. 2022; needs ``hard_weight`` 0). ``baseline``: a module or checkpoint trained on hard
    labels; the teacher is compared with it on the ``val_size`` images held out of the training split (on the
    test split without one: reported, never used to choose), a warning when the teacher is no better.
    ``cache_dir``: the teacher's outputs also cached on disk there. ``settings`` and ``tensorboard`` as for
    ``train`` (the log also holds ``teacher/seconds``, what the teacher's targets cost).
    Returns the trained student and its ``Report``.
    """
    ds = as_dataset(data, settings.get("seed", 0))
    module, given, cfg = _student(student, ds, {"epochs": epochs, **settings})
    dcfg = DistillConfig(temperature=temperature, soft_weight=soft_weight, hard_weight=hard_weight)
    tcfg = TransferConfig(view_bank=views, mixup=mixup)
    ds, val = _split(ds, val_size, cfg.seed)
    device = resolve_device(cfg.device)
    tch = as_teacher(teacher, ds, combine, device, cache_dir)
    tch.check_fits(ds)
    check = None
    if baseline is not None:
        base = _baseline(baseline, ds, device)
        x, y, split = (*val, "validation") if val is not None else (ds.x_test, ds.y_test, "test")
        check = workflows.check_teacher(tch, base, x.to(device), y.to(device), split)
        if check["warning"]:
            warnings.warn(check["warning"], stacklevel=2)
    if (unmatched := workflows.unmatched_views(cfg, tcfg)) is not None:
        warnings.warn(unmatched, stacklevel=2)
    result = workflows.distill(f"distilled-{cfg.arch}", ds, tch, cfg, dcfg, tcfg, out=out, resume=resume,
                               progress=progress, meta={"command": "api.distill", "val_size": val_size},
                               model=module, tensorboard=tensorboard)
    settings_out = {"train": dataclasses.asdict(cfg), "distill": dataclasses.asdict(dcfg),
                    "transfer": dataclasses.asdict(tcfg), "combine": combine, "val_size": val_size}
    return (given if given is not None else result.model), _report(result, ds, settings_out, check)


def _baseline(baseline: Any, data: Dataset, device: torch.device) -> nn.Module:
    if isinstance(baseline, (str, Path)):
        from darkknowledge.checkpoint import load_checkpoint
        from darkknowledge.teachers import check_model_fits

        model, meta, _ = load_checkpoint(baseline, device=device)
        check_model_fits(model, int(meta["num_classes"]), data, "the baseline")
        return model
    if isinstance(baseline, nn.Module):
        return _adapt(baseline, data).to(device)
    raise DKError(f"a baseline is a module or a checkpoint path, not {type(baseline).__name__}")


__all__: Sequence[str] = ("Report", "UserModule", "as_dataset", "as_teacher", "distill", "train")
