"""Model builders and the one registry of named architectures.

The paper's MNIST nets (section 3) are plain MLPs: the cumbersome teacher has 2 x 1200 ReLU units,
dropout on the input and hidden layers and a max-norm constraint on each unit's incoming weights;
the students have 2 x 800 (or 300, or 30) units and no regularisation.
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ArchSpec:
    """What a registry entry builds; ``description`` is shown by ``dk archs``."""

    build: Callable[[int, int], nn.Module]
    description: str


def _mlp(hidden: tuple[int, ...], **kwargs) -> Callable[[int, int], nn.Module]:
    return lambda in_features, num_classes: MLP(in_features, hidden, num_classes, **kwargs)


# The teacher regularisation of paper section 3: 20% input dropout, 50% hidden dropout and a max-norm
# of 15 on incoming weights (the values of Hinton et al. 2012 / Srivastava et al. 2014 for MNIST).
_TEACHER_REG = dict(input_dropout=0.2, hidden_dropout=0.5, max_norm=15.0)

ARCHITECTURES: dict[str, ArchSpec] = {
    "mlp-1200x2": ArchSpec(_mlp((1200, 1200), **_TEACHER_REG), "paper's MNIST teacher: 2x1200 ReLU, dropout, max-norm"),
    "mlp-800x2": ArchSpec(_mlp((800, 800)), "paper's MNIST student: 2x800 ReLU, no regularisation"),
    "mlp-300x2": ArchSpec(_mlp((300, 300)), "student for the T x width sweep: 2x300 ReLU"),
    "mlp-30x2": ArchSpec(_mlp((30, 30)), "tiny student for the T x width sweep: 2x30 ReLU"),
}


def build_model(arch: str, in_features: int, num_classes: int) -> nn.Module:
    """Build a registered architecture; an unknown name is a DKError listing the known ones."""
    if arch not in ARCHITECTURES:
        raise DKError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[arch].build(in_features, num_classes)


def apply_constraints(model: nn.Module) -> None:
    """Apply a model's weight constraints if it has any (called after every optimiser step)."""
    fn = getattr(model, "apply_constraints", None)
    if fn is not None:
        fn()
