"""The fused MLP training step: the matrix products of forward and backward, and little else.

Autograd on a small MLP pays for much more than its matmuls. Profiled on 2 CPU cores (2x1200 net,
batch 128, bf16 autocast): nn.Dropout's Bernoulli masks cost more than the matmuls they mask, every
forward re-casts every weight to bf16, bf16 elementwise ops with bool masks are slow, and the
optimiser and max-norm constraint make several passes over the weights. This step instead

- keeps low-precision (bf16) copies of the weights in step with the fp32 master weights, refreshed
  once per update (fp32 training uses the masters directly);
- runs forward and backward as explicit ``addmm`` / ``mm`` calls, the backward of ReLU and dropout
  as one ``threshold_backward`` on the stored (masked) activations;
- builds dropout masks directly as ``{0, 1/(1-p)}`` tensors in the compute dtype from random bits
  (one bit per unit for p = 0.5, one byte otherwise: p is then rounded to a multiple of 1/256),
  never through bool tensors, whose conversions cost more than the matmuls on a CPU;
- takes the gradient of the logits in closed form from the objective (``loss_and_grad``);
- writes fp32 gradients into ``p.grad`` and updates with PyTorch's fused SGD, then the max-norm
  constraint, then refreshes the low-precision copies.

``benchmarks/roofline.py`` times this step against its matmuls alone. Used by ``training.fit`` for
every ``MLP``; other models take the autograd path.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from darkknowledge.models import MLP


class LossAndGrad(Protocol):
    """What the fused step needs of an objective: the loss and its closed-form gradient in the logits."""

    def loss_and_grad(self, logits: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class DropoutMask:
    """Masks of i.i.d. ``{0, scale}`` entries for drop probability ``p``, made in ``dtype`` directly.

    ``p = 0.5`` is exact (one random bit per unit: each random byte picks a row of a 256 x 8 table of
    mask values). Any other p is rounded to ``k / 256`` (one random byte per unit): 0.2 becomes
    51/256 = 0.1992. ``scale`` is ``1 / (1 - p)`` rounded to ``dtype``.
    """

    def __init__(self, p: float, dtype: torch.dtype) -> None:
        if not 0 <= p < 1:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.dtype = dtype
        self.bits = p == 0.5
        self.threshold = 128 if self.bits else round(p * 256)  # drop when the byte is below this
        self.p = self.threshold / 256
        self.scale = torch.tensor(1 / (1 - self.p), dtype=dtype).item()
        # Row b holds the 8 mask values whose keep bits are the bits of byte b.
        self._table = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(dtype) * self.scale
        self._tables: dict[torch.device, torch.Tensor] = {}

    def __call__(self, shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        if self.bits:
            table = self._tables.get(device)
            if table is None:
                table = self._tables[device] = self._table.to(device)
            byte = _random_words(-(-n // 8), generator, device)
            return table.index_select(0, byte.long()).view(-1)[:n].view(shape)
        byte = _random_words(n, generator, device)[:n].to(self.dtype)  # 0..255, exact in bf16
        # byte - (t - 1) is <= 0 exactly when byte < t (drop) and >= 1 otherwise (keep).
        return byte.sub_(self.threshold - 1).clamp_(0, 1).mul_(self.scale).view(shape)


def _random_words(n_bytes: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """At least ``n_bytes`` uniformly random bytes (uint8) from ``generator``."""
    words = torch.randint(-2**63, 2**63 - 1, (-(-n_bytes // 8),), dtype=torch.int64, generator=generator,
                          device=device)
    return words.view(torch.uint8)


class FusedMLPStep:
    """One SGD step of an ``MLP``: ``step(x, objective, rows, generator) -> loss`` (``training.AutogradStep``'s
    interface: ``fit`` drives either the same way).

    Args:
        model: the MLP; its fp32 parameters are the master weights, updated in place.
        opt: an SGD optimiser over ``model.parameters()`` (fused where the device has it).
        dtype: compute dtype of the matmuls (``torch.bfloat16`` or ``torch.float32``).
        grad_clip: if > 0, the global gradient norm is clipped to it before the update.
    """

    def __init__(self, model: MLP, opt: torch.optim.Optimizer, dtype: torch.dtype, grad_clip: float = 0.0) -> None:
        self.model, self.opt, self.dtype, self.grad_clip = model, opt, dtype, grad_clip
        self.linears = model.linears
        # The dropout in front of each linear layer (input dropout before the first, hidden after).
        self.dropout: list[DropoutMask | None] = []
        previous: nn.Module | None = None
        for m in model.net:
            if isinstance(m, nn.Linear):
                p = previous.p if isinstance(previous, nn.Dropout) else 0.0
                self.dropout.append(DropoutMask(p, dtype) if p else None)
            previous = m
        self.params = [p for lin in self.linears for p in (lin.weight, lin.bias)]
        for p in self.params:
            p.grad = torch.zeros_like(p)  # written in place by every step
        self.low = [p.detach().to(dtype) for p in self.params] if dtype != torch.float32 else None
        self.last_grad_norm: torch.Tensor | None = None
        # Read once: fit sets the model's input shift (or loads it) before building the step.
        self.shift = float(model.input_shift)

    @staticmethod
    def supports(model: nn.Module) -> bool:
        return isinstance(model, MLP)

    @torch.no_grad()
    def refresh(self) -> None:
        """Copy the master weights into the low-precision copies (after loading weights)."""
        if self.low is not None:
            torch._foreach_copy_(self.low, [p.detach() for p in self.params])

    def weights(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The compute-dtype weight and bias of linear layer ``i``."""
        src = self.low if self.low is not None else [p.detach() for p in self.params]
        return src[2 * i], src[2 * i + 1]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, objective: LossAndGrad, rows: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        """Forward, backward and update on the batch ``x [B, ...]`` against the objective's ``rows``; returns
        the (fp32, 0-dim) loss."""
        dt, device, n_layers = self.dtype, x.device, len(self.linears)
        h = x.reshape(len(x), -1)
        h = (h.float() - self.shift).to(dt) if self.shift else h.to(dt)
        inputs = []
        for i in range(n_layers):
            drop = self.dropout[i]
            if drop is not None:
                mask = drop(tuple(h.shape), generator, device)
                h = h * mask if i == 0 else h.mul_(mask)  # never write into the caller's batch
            inputs.append(h)
            w, b = self.weights(i)
            a = torch.addmm(b, h, w.t())
            if i < n_layers - 1:
                h = a.relu_()
        loss, d = objective.loss_and_grad(a.float(), rows)
        d = d.to(dt)
        for i in reversed(range(n_layers)):
            gw, gb = self.linears[i].weight.grad, self.linears[i].bias.grad
            if dt == torch.float32:
                torch.mm(d.t(), inputs[i], out=gw)
            else:
                gw.copy_(torch.mm(d.t(), inputs[i]))
            torch.sum(d, 0, dtype=torch.float32, out=gb)
            if i:
                # d loss / d pre-activation: zero where ReLU or dropout zeroed the unit; kept units
                # were scaled by 1 / (1 - p) on the way forward.
                d = torch.ops.aten.threshold_backward(torch.mm(d, self.weights(i)[0]), inputs[i], 0)
                if self.dropout[i] is not None:
                    d.mul_(self.dropout[i].scale)
        if self.grad_clip > 0:
            self.last_grad_norm = nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
        self.opt.step()
        self.model.apply_constraints()
        self.refresh()
        return loss
