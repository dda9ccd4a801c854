"""Model builders and the one registry of named architectures.

The paper's MNIST nets (section 3) are plain MLPs: the cumbersome teacher has 2 x 1200 ReLU units,
dropout on the input and hidden layers and a max-norm constraint on each unit's incoming weights;
the students have 2 x 800 (or 300, or 30) units and no regularisation.

For colour images (CIFAR) the registry has a small residual CNN family, ``resnet-s-w{W}`` (``W``: the
stem width; 4 conv stages, 7 convolutions, channels-last), and any torchvision classification model
by name, ``torchvision:NAME`` (built for the data's class count; needs torchvision). Every image model
starts with ``InputNorm``, which takes uint8 or float images and normalises them by the training
split's per-channel statistics (buffers saved with the weights). From Python, any ``nn.Module`` can be
a teacher, an ensemble member or a student (``custom:NAME`` in a ``TrainConfig`` labels it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from darkknowledge.errors import DKError


class MLP(nn.Module):
    """Flatten -> subtract the input shift -> [dropout -> linear -> ReLU] x len(hidden) -> dropout -> linear.

    The input shift (a buffer, saved with the weights) is the data's background level, set by
    ``calibrate_input`` before training: 0 for MNIST, whose numerics it leaves untouched; 1 for
    inverted digits, which then reach the first layer with a background of 0, as MNIST does, instead
    of feeding 784 ones through input dropout into every unit.

    Args:
        in_features: input size after flattening (784 for MNIST, 64 for 8x8 digits).
        hidden: width of each hidden layer.
        num_classes: number of outputs (logits).
        input_dropout: dropout rate on the input (paper: 20%, after Hinton et al. 2012).
        hidden_dropout: dropout rate on each hidden layer (paper: 50%).
        max_norm: if set, every unit's incoming weight vector is rescaled after each optimiser step so
            its L2 norm is at most this (the "weight constraints" of paper section 3).
    """

    def __init__(
        self,
        in_features: int,
        hidden: tuple[int, ...],
        num_classes: int,
        input_dropout: float = 0.0,
        hidden_dropout: float = 0.0,
        max_norm: float | None = None,
    ) -> None:
        super().__init__()
        self.input_dropout, self.hidden_dropout, self.max_norm = input_dropout, hidden_dropout, max_norm
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for i, h in enumerate(hidden):
            rate = input_dropout if i == 0 else hidden_dropout
            if rate:
                layers.append(nn.Dropout(rate))
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        if hidden and hidden_dropout:
            layers.append(nn.Dropout(hidden_dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        self.register_buffer("input_shift", torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, ...] -> [B, num_classes]`` logits."""
        return self.net(x - self.input_shift)

    @torch.no_grad()
    def calibrate_input(self, background: float) -> None:
        """Set the input shift to the training inputs' background level (``data.background_value``)."""
        self.input_shift.fill_(background)

    @property
    def linears(self) -> list[nn.Linear]:
        """The linear layers, input to output."""
        return [m for m in self.net if isinstance(m, nn.Linear)]

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Project each unit's incoming weights onto the ball of radius ``max_norm`` (no-op if unset).

        Same result as ``torch.renorm(w, 2, 0, max_norm)`` (rows above the cap are scaled by
        ``max_norm / (norm + 1e-7)``), in one read of the weights; on a CPU, where asking costs no
        device sync, the rescaling pass is skipped when no row is above the cap.
        """
        if self.max_norm is None:
            return
        for m in self.linears:
            # Rows of weight [out, in] are the incoming weights of one unit.
            norms = torch.linalg.vector_norm(m.weight, dim=1, keepdim=True)
            over = norms > self.max_norm
            if m.weight.device.type == "cpu" and not bool(over.any()):
                continue
            m.weight.mul_(torch.where(over, self.max_norm / (norms + 1e-7), 1.0))


class InputNorm(nn.Module):
    """Images ``[B, C, H, W]`` (uint8 in 0..255 or floats in [0, 1]) -> ``(x - mean) / std`` per channel,
    float32, channels-last. ``mean``/``std`` are buffers set from the training split (``calibrate_norm``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(channels, 1, 1))
        self.register_buffer("std", torch.ones(channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return ((x - self.mean) / self.std).contiguous(memory_format=torch.channels_last)

    @torch.no_grad()
    def calibrate_norm(self, mean: list[float], std: list[float]) -> None:
        self.mean.copy_(torch.tensor(mean).view(-1, 1, 1))
        self.std.copy_(torch.tensor(std).view(-1, 1, 1))


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class ResBlock(nn.Module):
    """conv -> 2x2 max-pool -> BN -> ReLU (half the resolution), then ``x + ReLU(BN(conv(x)))``.

    Pooling before the normalisation, as in fast CIFAR nets (airbench, ResNet-9 of the DAWNBench
    entries), runs BN and ReLU on a quarter of the pixels."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
                                  nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
        self.res = nn.Sequential(*conv_bn(c_out, c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.res(x)


class ResNetS(nn.Module):
    """A small residual CNN for 32x32 colour images: stem (W) -> blocks (2W, 4W, 4W) -> global max-pool -> linear.

    7 convolutions; W = 16: 0.14 M parameters, W = 32: 0.57 M. ``width`` is the knob that sizes teachers
    (wide) and students (narrow) of one family.
    """

    def __init__(self, in_channels: int, num_classes: int, width: int = 16, zero_head: bool = True) -> None:
        super().__init__()
        w = width
        self.norm = InputNorm(in_channels)
        self.features = nn.Sequential(*conv_bn(in_channels, w), ResBlock(w, 2 * w), ResBlock(2 * w, 4 * w),
                                      ResBlock(4 * w, 4 * w), nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(4 * w, num_classes)
        if zero_head:  # every class equally likely at the start: loss ln(C), no first-epoch gradient spike
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.norm(x)))

    def calibrate_norm(self, mean: list[float], std: list[float]) -> None:
        self.norm.calibrate_norm(mean, std)


class Normalized(nn.Module):
    """Any image classifier behind an ``InputNorm`` (how torchvision models enter the registry)."""

    def __init__(self, module: nn.Module, channels: int) -> None:
        super().__init__()
        self.norm = InputNorm(channels)
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.norm(x))

    def calibrate_norm(self, mean: list[float], std: list[float]) -> None:
        self.norm.calibrate_norm(mean, std)


@dataclass(frozen=True)
class ArchSpec:
    """What a registry entry builds from ``(in_shape, num_classes)``; ``description`` is shown by ``dk archs``."""

    build: Callable[[tuple[int, ...], int], nn.Module]
    description: str


def _features(in_shape: tuple[int, ...]) -> int:
    n = 1
    for d in in_shape:
        n *= d
    return n


def _mlp(hidden: tuple[int, ...], **kwargs) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda in_shape, num_classes: MLP(_features(in_shape), hidden, num_classes, **kwargs)


def _channels(in_shape: tuple[int, ...], arch: str) -> int:
    if len(in_shape) != 3:
        raise DKError(f"{arch} takes images [C, H, W]; this data's inputs are {tuple(in_shape)}")
    return in_shape[0]


def _resnet_s(width: int) -> Callable[[tuple[int, ...], int], nn.Module]:
    return lambda in_shape, num_classes: ResNetS(_channels(in_shape, f"resnet-s-w{width}"), num_classes, width)


def _torchvision(name: str) -> Callable[[tuple[int, ...], int], nn.Module]:
    def build(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        try:
            import torchvision
        except ImportError as e:
            raise DKError(f"torchvision:{name} needs torchvision, which does not import here ({e})") from None
        try:
            module = torchvision.models.get_model(name, weights=None, num_classes=num_classes)
        except (ValueError, KeyError) as e:
            raise DKError(f"torchvision has no classification model {name!r} ({e})") from None
        return Normalized(module, _channels(in_shape, f"torchvision:{name}")).to(memory_format=torch.channels_last)

    return build


# The teacher regularisation of paper section 3: 20% input dropout, 50% hidden dropout and a max-norm
# of 15 on incoming weights (the values of Hinton et al. 2012 / Srivastava et al. 2014 for MNIST).
_TEACHER_REG = dict(input_dropout=0.2, hidden_dropout=0.5, max_norm=15.0)

ARCHITECTURES: dict[str, ArchSpec] = {
    "mlp-1200x2": ArchSpec(_mlp((1200, 1200), **_TEACHER_REG), "paper's MNIST teacher: 2x1200 ReLU, dropout, max-norm"),
    "mlp-800x2": ArchSpec(_mlp((800, 800)), "paper's MNIST student: 2x800 ReLU, no regularisation"),
    "mlp-300x2": ArchSpec(_mlp((300, 300)), "student for the T x width sweep: 2x300 ReLU"),
    "mlp-30x2": ArchSpec(_mlp((30, 30)), "tiny student for the T x width sweep: 2x30 ReLU"),
    "resnet-s-w{W}": ArchSpec(_resnet_s(16), "small residual CNN for 32x32 colour images, stem width W "
                              "(e.g. resnet-s-w16: 0.14 M parameters; resnet-s-w32: 0.57 M)"),
    "torchvision:{NAME}": ArchSpec(_torchvision("resnet18"), "any torchvision classification model by name, "
                                   "e.g. torchvision:resnet18 (needs torchvision)"),
}
_PATTERNS = ((re.compile(r"resnet-s-w([1-9]\d{0,3})"), lambda m: _resnet_s(int(m.group(1)))),
             (re.compile(r"torchvision:([A-Za-z0-9_.]+)"), lambda m: _torchvision(m.group(1))))
CUSTOM_PREFIX = "custom:"  # a user's own nn.Module, trained from Python; not buildable by name


def arch_builder(arch: str) -> Callable[[tuple[int, ...], int], nn.Module]:
    """The builder of a registered name or pattern; an unknown name is a DKError listing the known ones."""
    if arch in ARCHITECTURES and "{" not in arch:
        return ARCHITECTURES[arch].build
    for pattern, make in _PATTERNS:
        m = pattern.fullmatch(arch)
        if m:
            return make(m)
    raise DKError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")


def check_arch(arch: str) -> None:
    """A name a ``TrainConfig`` accepts: a registered one, or ``custom:NAME`` for a module built in Python."""
    if not (arch.startswith(CUSTOM_PREFIX) and len(arch) > len(CUSTOM_PREFIX)):
        arch_builder(arch)


def build_model(arch: str, in_shape: int | tuple[int, ...], num_classes: int) -> nn.Module:
    """Build a registered architecture for inputs of ``in_shape`` (a shape, or a flat feature count)."""
    if arch.startswith(CUSTOM_PREFIX):
        raise DKError(f"{arch!r} is a user's own module: build it in Python and pass it to fit / Teacher")
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(int(d) for d in in_shape)
    return arch_builder(arch)(shape, num_classes)


def apply_constraints(model: nn.Module) -> None:
    """Apply a model's weight constraints if it has any (called after every optimiser step)."""
    fn = getattr(model, "apply_constraints", None)
    if fn is not None:
        fn()
