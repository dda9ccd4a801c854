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


class PatchWhitening(nn.Module):
    """A frozen 2x2 convolution that whitens image patches (airbench's first layer).

    ``calibrate(x)`` sets its filters from the training images' 2x2 patches: the eigenvectors of their
    covariance scaled by ``1 / sqrt(eigenvalue + eps)``, each also negated (``2 * C * 4`` channels: the
    GELU after it then passes both signs). The filters never train; the bias does."""

    def __init__(self, channels: int, eps: float = 5e-4) -> None:
        super().__init__()
        self.eps = eps
        self.conv = nn.Conv2d(channels, 2 * channels * 4, 2, bias=True)
        self.conv.weight.requires_grad_(False)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """``x``: normalised training images ``[N, C, H, W]`` (a few thousand are plenty)."""
        c = x.shape[1]
        patches = x.float().unfold(2, 2, 1).unfold(3, 2, 1)  # [N, C, H-1, W-1, 2, 2]
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * 4).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None]).view(-1, c, 2, 2)
        self.conv.weight.copy_(torch.cat([filters, -filters]).to(self.conv.weight.dtype))


def _frozen_scale_bn(channels: int, momentum: float) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(channels, momentum=momentum)
    bn.weight.requires_grad_(False)  # airbench: scales fixed at 1, only the shifts train
    return bn


class ConvGroup(nn.Module):
    """conv -> 2x2 max-pool -> BN -> GELU -> conv -> BN -> GELU (half the resolution, no residual)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), _frozen_scale_bn(c_out, bn_momentum),
            nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _frozen_scale_bn(c_out, bn_momentum),
            nn.GELU())
        for m in self.net:  # identity on the first c_in filters: the group starts close to a pass-through
            if isinstance(m, nn.Conv2d):
                nn.init.dirac_(m.weight[:min(m.in_channels, m.out_channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AirNet(nn.Module):
    """A fast CIFAR net after airbench (Keller Jordan's cifar10-airbench), written here from its techniques:
    input norm -> frozen 2x2 patch whitening -> GELU -> three conv groups of widths ``widths`` (each halves
    the resolution) -> 3x3 max-pool -> linear without bias, its logits scaled by ``1/9``.

    Batch norms keep their scales at 1 and move their statistics fast (momentum 0.4, airbench's 0.6 in
    its convention); their shifts train at ``bias_lr_scale`` times the learning rate (``param_groups``),
    with the same decay per step as every other weight. widths 64/256/256: 1.97 M parameters.
    """

    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, int, int] = (64, 256, 256),
                 bn_momentum: float = 0.4, bias_lr_scale: float = 64.0) -> None:
        super().__init__()
        self.bias_lr_scale = bias_lr_scale
        self.norm = InputNorm(in_channels)
        self.whiten = PatchWhitening(in_channels)
        w0 = self.whiten.conv.out_channels
        self.features = nn.Sequential(nn.GELU(), ConvGroup(w0, widths[0], bn_momentum),
                                      ConvGroup(widths[0], widths[1], bn_momentum),
                                      ConvGroup(widths[1], widths[2], bn_momentum),
                                      nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        self.logit_scale = 1 / 9
        self.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.whiten(self.norm(x)))) * self.logit_scale

    def calibrate_norm(self, mean: list[float], std: list[float]) -> None:
        self.norm.calibrate_norm(mean, std)

    @torch.no_grad()
    def calibrate_whitening(self, x: torch.Tensor, sample: int = 5000) -> None:
        """Whitening filters from ``sample`` training images drawn with a fixed seed (after ``calibrate_norm``):
        a training set stored class by class still gives every class's patches."""
        idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:sample].sort().values
        xs = x[idx.to(x.device)].to(self.norm.mean.device)
        self.whiten.calibrate(self.norm(xs))

    def param_groups(self) -> list[dict]:
        """Batch-norm shifts at ``bias_lr_scale`` x the learning rate (airbench), the rest at 1 x."""
        shifts = [m.bias for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
        ids = {id(p) for p in shifts}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        return [{"params": rest, "lr_scale": 1.0}, {"params": shifts, "lr_scale": self.bias_lr_scale}]


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


def _airnet(widths: tuple[int, int, int]) -> Callable[[tuple[int, ...], int], nn.Module]:
    name = f"airnet-{'-'.join(map(str, widths))}"
    return lambda in_shape, num_classes: AirNet(_channels(in_shape, name), num_classes, widths)


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

def _gpt(dim: int, layers: int, dropout: float) -> Callable[[tuple[int, ...], int], nn.Module]:
    """A causal LM (``lm.TinyGPT``) for token windows of the input length, over ``num_classes`` tokens."""
    def build(in_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        from darkknowledge.lm import TinyGPT

        if len(in_shape) != 1:
            raise DKError(f"gpt-{dim}x{layers} takes token windows [N, S], not inputs of shape {in_shape}")
        return TinyGPT(num_classes, dim, layers, in_shape[0], dropout=dropout)
    return build


ARCHITECTURES: dict[str, ArchSpec] = {
    "mlp-1200x2": ArchSpec(_mlp((1200, 1200), **_TEACHER_REG), "paper's MNIST teacher: 2x1200 ReLU, dropout, max-norm"),
    "mlp-800x2": ArchSpec(_mlp((800, 800)), "paper's MNIST student: 2x800 ReLU, no regularisation"),
    "mlp-300x2": ArchSpec(_mlp((300, 300)), "student for the T x width sweep: 2x300 ReLU"),
    "mlp-30x2": ArchSpec(_mlp((30, 30)), "tiny student for the T x width sweep: 2x30 ReLU"),
    "mlp-{H}x{L}-d{I}-{D}": ArchSpec(_mlp((1200, 1200), **_TEACHER_REG), "any MLP: L hidden layers of H ReLU units, "
                                     "input dropout I% and hidden dropout D% with max-norm 15 (mlp-1200x2-d20-50 is "
                                     "the paper's teacher; -d0-0: no dropout)"),
    "resnet-s-w{W}": ArchSpec(_resnet_s(16), "small residual CNN for 32x32 colour images, stem width W "
                              "(e.g. resnet-s-w16: 0.14 M parameters; resnet-s-w32: 0.57 M)"),
    "airnet-{A}-{B}-{C}": ArchSpec(_airnet((64, 256, 256)), "fast CIFAR net after airbench: frozen patch whitening, "
                                   "three conv groups of widths A, B, C (airnet-64-256-256: 1.97 M parameters, "
                                   "airnet-32-128-128: 0.50 M)"),
    "gpt-{D}x{L}[-d{P}]": ArchSpec(_gpt(128, 2, 0.0), "a causal language model (token windows in, hidden states "
                                   "out, head tied to the embedding; lm.TinyGPT): width D, L blocks, dropout P%"),
    "torchvision:{NAME}": ArchSpec(_torchvision("resnet18"), "any torchvision classification model by name, "
                                   "e.g. torchvision:resnet18 (needs torchvision)"),
}
_PATTERNS = ((re.compile(r"mlp-([1-9]\d{0,4})x([1-9])-d(\d|[1-9]\d)-(\d|[1-9]\d)"),
              lambda m: _mlp((int(m.group(1)),) * int(m.group(2)), input_dropout=int(m.group(3)) / 100,
                             hidden_dropout=int(m.group(4)) / 100, max_norm=_TEACHER_REG["max_norm"])),
             (re.compile(r"resnet-s-w([1-9]\d{0,3})"), lambda m: _resnet_s(int(m.group(1)))),
             (re.compile(r"airnet-([1-9]\d{0,3})-([1-9]\d{0,3})-([1-9]\d{0,3})"),
              lambda m: _airnet((int(m.group(1)), int(m.group(2)), int(m.group(3))))),
             (re.compile(r"torchvision:([A-Za-z0-9_.]+)"), lambda m: _torchvision(m.group(1))),
             (re.compile(r"gpt-([1-9]\d{0,4})x([1-9]\d?)(?:-d([1-9]\d?))?"),
              lambda m: _gpt(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0) / 100)))
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
    model = arch_builder(arch)(shape, num_classes)
    model.dk_arch = arch  # what it was built from: ``api`` passes a built module on under its own name
    return model


def apply_constraints(model: nn.Module) -> None:
    """Apply a model's weight constraints if it has any (called after every optimiser step)."""
    fn = getattr(model, "apply_constraints", None)
    if fn is not None:
        fn()
