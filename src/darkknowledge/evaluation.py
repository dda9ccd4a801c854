"""Test-set metrics and the output-bias correction of paper section 3."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from darkknowledge.errors import DKError


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Eval-mode logits ``[N, C]`` in batches on ``x``'s device; the model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    try:
        return torch.cat([model(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


def bias_vector(offsets: Mapping[int, float], num_classes: int, device: str | torch.device = "cpu") -> torch.Tensor:
    """``[C]`` additive logit offsets from ``{class: offset}`` (e.g. ``{3: 3.5}``: the paper's omitted-3 fix)."""
    bias = torch.zeros(num_classes, device=device)
    for c, v in offsets.items():
        if not 0 <= c < num_classes:
            raise DKError(f"bias-fix class {c} is outside 0..{num_classes - 1}")
        bias[c] = v
    return bias


def errors_from_logits(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict:
    """Error count, accuracy and per-class error counts of argmax predictions."""
    if logits.shape[-1] != num_classes:
        raise DKError(f"model has {logits.shape[-1]} outputs but the data has {num_classes} classes")
    wrong = logits.argmax(-1) != y
    per_class = torch.bincount(y[wrong], minlength=num_classes)
    errors = int(wrong.sum())
    return {"errors": errors, "test_size": len(y), "accuracy": 1 - errors / len(y),
            "per_class_errors": per_class.tolist()}


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
             bias: torch.Tensor | None = None) -> dict:
    """Evaluate at T = 1 (deployment), optionally with additive output-bias offsets ``[C]``."""
    logits = predict_logits(model, x)
    if bias is not None:
        logits = logits + bias.to(logits.device)
    return errors_from_logits(logits, y, num_classes)


def fit_bias_offset(logits: torch.Tensor, y: torch.Tensor, classes: list[int] | tuple[int, ...],
                    grid: torch.Tensor | None = None) -> tuple[float, int]:
    """The offset added to the logits of ``classes`` that minimises errors on ``(logits, y)``.

    Paper section 3: a student that never saw a 3 has too low a bias for 3; raising it by 3.5 fixed
    most errors, and lowering the 7 and 8 biases by 7.6 fixed a 7s-and-8s-only student. Fit this on
    a validation split, never on the test set. Ties go to the offset of smallest magnitude.

    Args:
        logits: ``[N, C]`` student logits on the validation examples.
        y: ``[N]`` their true labels.
        classes: the classes whose logits move together.
        grid: candidate offsets (default: -20 to 20 in steps of 0.1).

    Returns:
        ``(offset, errors at that offset)``.
    """
    if grid is None:
        grid = torch.arange(-200, 201, device=logits.device) / 10
    grid = grid[grid.abs().argsort(stable=True)].to(logits.device)  # smallest |offset| first: wins ties
    mask = torch.zeros(logits.shape[-1], device=logits.device)
    mask[list(classes)] = 1.0
    # [G, N]: predictions for every candidate offset at once.
    preds = (logits[None] + grid[:, None, None] * mask).argmax(-1)
    errors = (preds != y[None]).sum(-1)
    best = int(errors.argmin())
    return round(float(grid[best]), 4), int(errors[best])
