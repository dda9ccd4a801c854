"""All defaults, in frozen dataclasses; YAML recipes and CLI flags only override them.

A recipe is a flat YAML mapping of literals. Every key must be a field of one of the dataclasses a
command accepts; an unknown key or a value of the wrong type is a DKError naming the key.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from darkknowledge.device import DEFAULT_DEVICE, check_device
from darkknowledge.errors import DKError
from darkknowledge.losses import COMBINE_METHODS
from darkknowledge.models import check_arch

LR_SCHEDULES = ("cosine", "linear", "constant")
OPTIMIZERS = ("sgd", "adamw")
PRECISIONS = ("auto", "fp32", "bf16")


def _help(text: str, default: Any) -> Any:
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class TrainConfig:
    """How one model is trained (hard labels or distillation share this)."""

    arch: str = _help("registered architecture (see `dk archs`)", "mlp-800x2")
    epochs: int = _help("passes over the training / transfer set", 30)
    batch_size: int = _help("examples per SGD step", 128)
    lr: float = _help("peak learning rate of SGD with momentum", 0.05)
    optimizer: str = _help("sgd (with momentum; the paper's and every image recipe's) or adamw (decoupled weight "
                           "decay, betas (momentum, 0.95): the language models')", "sgd")
    momentum: float = _help("SGD momentum (adamw: its first beta)", 0.9)
    nesterov: bool = _help("Nesterov momentum", False)
    weight_decay: float = _help("L2 weight decay (0: none, as for the paper's unregularised students)", 0.0)
    lr_schedule: str = _help(f"learning-rate schedule over all steps: {', '.join(LR_SCHEDULES)}", "cosine")
    label_smoothing: float = _help("hard-label cross-entropy against (1 - s) x the label + s x uniform (0: plain)", 0.0)
    warmup_epochs: float = _help("epochs of linear learning-rate warm-up to lr before the schedule (capped at the run)",
                                 0.0)
    jitter: int = _help("random translation of training inputs by up to this many pixels, filled with the background "
                        "(paper: 2 for the MNIST teacher; 4 is the usual CIFAR random crop of a 4-pixel-padded image)", 0)
    flip: bool = _help("random left-right mirror of training images, probability 1/2 (CIFAR; not for digits)", False)
    alternate_flips: bool = _help("with flip, derandomised mirrors (airbench): a seeded random half of the images "
                                  "mirrored in even epochs, the other half in odd ones, so every image is seen both "
                                  "ways every two epochs (hard-label and plain runs; a view bank draws its own)", False)
    lookahead: bool = _help("every 5 steps the weights move to, and continue from, their running average (airbench's "
                            "lookahead EMA: decay 0.95^5 x progress^3), the average kept at the end", False)
    seed: int = _help("seed for initialisation, shuffling, dropout and jitter", 0)
    device: str = _help("cpu, cuda, cuda:N, mps, or auto (cuda when available)", DEFAULT_DEVICE)
    precision: str = _help("auto (bf16 where the device computes it natively, else fp32), fp32 or bf16; "
                           "bf16 runs the matmuls in bf16, master weights and SGD stay fp32", "auto")
    fused: bool = _help("MLPs train through the fused step (explicit matmuls, closed-form logit gradients, fused "
                        "SGD); off: autograd, like any other model", True)
    grad_clip: float = _help("clip the global gradient norm to this before each update (0: off)", 0.0)
    eval_every: int = _help("measure test errors every this many epochs (and after the last)", 1)
    compile: bool = _help("train through autograd with the forward under torch.compile (compiles on first use; "
                          "takes precedence over the fused MLP step; benchmarks/mnist_speed.py measures it)", False)

    def __post_init__(self) -> None:
        check_arch(self.arch)
        _positive(self, "epochs", "batch_size", "lr", "eval_every")
        _non_negative(self, "momentum", "weight_decay", "jitter", "warmup_epochs", "grad_clip")
        if not 0 <= self.label_smoothing < 1:
            raise DKError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.alternate_flips and not self.flip:
            raise DKError("alternate_flips needs flip")
        if self.nesterov and self.momentum == 0:
            raise DKError("nesterov needs a momentum above 0")
        if self.optimizer not in OPTIMIZERS:
            raise DKError(f"unknown optimizer {self.optimizer!r}; allowed: {', '.join(OPTIMIZERS)}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise DKError(f"unknown lr_schedule {self.lr_schedule!r}; allowed: {', '.join(LR_SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise DKError(f"unknown precision {self.precision!r}; allowed: {', '.join(PRECISIONS)}")
        check_device(self.device)


@dataclass(frozen=True)
class DistillConfig:
    """The distillation objective of paper section 2."""

    temperature: float = _help("softmax temperature T shared by teacher and student (paper MNIST: 20)", 20.0)
    soft_weight: float = _help("weight of the T^2-scaled soft-target term", 1.0)
    hard_weight: float = _help("weight of the true-label cross-entropy at T = 1 (paper: considerably lower)", 0.0)

    def __post_init__(self) -> None:
        _positive(self, "temperature")
        _non_negative(self, "soft_weight", "hard_weight")
        if self.soft_weight == 0 and self.hard_weight == 0:
            raise DKError("soft_weight and hard_weight are both 0: nothing to learn from")


@dataclass(frozen=True)
class TeacherConfig:
    """Which trained checkpoints teach, and how an ensemble's distributions are averaged."""

    teachers: tuple[str, ...] = field(default=(), metadata={
        "help": "teacher checkpoint directory; repeat for an ensemble", "flag": "--teacher"})
    combine: str = _help(f"ensemble mean of the members' distributions: {', '.join(COMBINE_METHODS)}", "arithmetic")
    baseline: str = _help("checkpoint of a net trained on hard labels to check the teacher against before distilling "
                          "(on the validation split with --val-size, else the test split; '': no check)", "")

    def __post_init__(self) -> None:
        if self.combine not in COMBINE_METHODS:
            raise DKError(f"unknown combine method {self.combine!r}; allowed: {', '.join(COMBINE_METHODS)}")


@dataclass(frozen=True)
class TransferConfig:
    """Which part of the training set the student learns from (paper sections 3 and 6)."""

    omit_classes: tuple[int, ...] = _help("classes removed from the transfer set (paper: 3)", ())
    only_classes: tuple[int, ...] = _help("keep only these classes in the transfer set (paper: 7 8)", ())
    fraction: float = _help("class-balanced random fraction of the transfer set kept (paper section 6: 0.03)", 1.0)
    unlabelled: bool = _help("drop the true labels: learn from soft targets alone", False)
    jitter_views: int = _help("beyond the paper: translate transfer images by up to this many pixels, with the "
                              "teacher's soft targets computed on every translated view (0: the paper's plain "
                              "transfer set)", 0)

    view_bank: int = _help("augmented views per transfer image (the student's jitter/flip), each with the teacher's "
                           "soft targets on that view, computed once and cached (0: the plain transfer set)", 0)

    mixup: float = _help("beyond the paper: mixup alpha of the view bank (Beyer et al. 2022): every view but the plain "
                         "one mixes its image with a seeded partner at a Beta(alpha, alpha) weight, the teacher's "
                         "targets computed on the mixed image (0: unmixed views; needs view_bank)", 0.0)

    def __post_init__(self) -> None:
        _non_negative(self, "jitter_views", "view_bank", "mixup")
        if self.mixup and not self.view_bank:
            raise DKError("mixup mixes the views of a bank: give view_bank > 0 with it")
        if self.jitter_views and self.view_bank:
            raise DKError("give jitter_views or view_bank, not both")
        if not 0 < self.fraction <= 1:
            raise DKError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.omit_classes and self.only_classes:
            raise DKError("give omit_classes or only_classes, not both")


@dataclass(frozen=True)
class SpecialistConfig:
    """How a specialist learns beyond its hard labels (paper sections 5.2 and 6.1)."""

    soft_weight: float = _help("weight of the generalist's soft targets as an extra term (paper 6.1; 0: off)", 0.0)
    temperature: float = _help("temperature of those soft targets", 2.0)
    views: int = _help("augmented views in their target bank (the specialist's jitter/flip)", 4)

    def __post_init__(self) -> None:
        _positive(self, "temperature", "views")
        _non_negative(self, "soft_weight")


@dataclass(frozen=True)
class ClusterConfig:
    """How the classes a generalist confuses are clustered into specialist subsets (paper section 5.3)."""

    specialists: int = _help("how many class subsets", 10)
    max_classes: int = _help("classes per subset at most", 10)
    min_classes: int = _help("classes per subset at least", 2)
    cluster_seed: int = _help("k-means seed", 0)

    def __post_init__(self) -> None:
        _positive(self, "specialists")
        if not 2 <= self.min_classes <= self.max_classes:
            raise DKError(f"cluster sizes must satisfy 2 <= min_classes ({self.min_classes}) <= max_classes "
                          f"({self.max_classes})")


@dataclass(frozen=True)
class RunConfig:
    """Where a command reads data from and writes to."""

    data: str = _help("'digits' (embedded), an MNIST directory, or a .npz file", "digits")
    out: str = _help("output directory (checkpoint, summary, plots)", "runs/model")
    cache_dir: str = _help("directory for cached teacher logits ('' to keep them in memory only)", ".cache/darkknowledge")
    val_size: int = _help("training images carved off (seeded) as a validation split; models train on the rest "
                          "(distill: give the teachers' own value; the teacher check then runs on it)", 0)
    tensorboard: str = _help("also write every epoch's metrics as TensorBoard event files into this directory "
                             "(needs the tensorboard package; '' : none)", "")

    def __post_init__(self) -> None:
        _non_negative(self, "val_size")


def _positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v > 0:
            raise DKError(f"{n} must be > 0, got {v}")


def _non_negative(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not v >= 0:
            raise DKError(f"{n} must be >= 0, got {v}")


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML/CLI value against a field annotation; ints are accepted for floats."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item, _) = typing.get_args(annotation)
        values = value if isinstance(value, (list, tuple)) else [value]
        return tuple(_coerce(key, v, item) for v in values)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is bool and not isinstance(value, bool) or annotation is not bool and isinstance(value, bool) \
            or not isinstance(value, annotation):
        raise DKError(f"key {key!r} must be {annotation.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """``{name: (field, resolved type)}`` of a config dataclass."""
    hints = typing.get_type_hints(cls)
    return {f.name: (f, hints[f.name]) for f in dataclasses.fields(cls)}


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A recipe file: a flat mapping from keys to literals."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise DKError(f"cannot read recipe {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise DKError(f"recipe {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise DKError(f"recipe {path} must be a mapping of keys to values, got {type(data).__name__}")
    return data


def build_configs(classes: tuple[type, ...], overrides: dict[str, Any], source: str = "config") -> dict[type, Any]:
    """Route each key of ``overrides`` to the dataclass that owns it and build them all.

    Raises DKError for an unknown key (listing the allowed ones) or a value of the wrong type.
    """
    owner: dict[str, tuple[type, Any]] = {}
    for cls in classes:
        for name, (_, ann) in config_fields(cls).items():
            if name in owner:  # a key must have one meaning: two classes sharing it would take one value silently
                raise ValueError(f"config key {name!r} is a field of both {owner[name][0].__name__} and {cls.__name__}")
            owner[name] = (cls, ann)
    kwargs: dict[type, dict[str, Any]] = {cls: {} for cls in classes}
    for key, value in overrides.items():
        if key not in owner:
            raise DKError(f"unknown key {key!r} in {source}; allowed: {', '.join(sorted(owner))}")
        cls, ann = owner[key]
        kwargs[cls][key] = _coerce(key, value, ann)
    return {cls: cls(**kw) for cls, kw in kwargs.items()}


def recipe_path(family: str, name: str) -> Path:
    """A packaged recipe file: ``darkknowledge/recipes/FAMILY/NAME.yaml`` (``mnist/teacher``, ...)."""
    from importlib.resources import files

    return Path(str(files(f"darkknowledge.recipes.{family}") / f"{name}.yaml"))


def packaged_recipe(family: str, name: str, classes: tuple[type, ...] = (TrainConfig,)) -> dict[type, Any]:
    """A packaged recipe, validated like any user recipe: ``{config class: instance}``."""
    path = recipe_path(family, name)
    return build_configs(classes, load_yaml(path), f"recipe {family}/{path.name}")
