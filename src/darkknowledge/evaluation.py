"""Test-set metrics and the output-bias correction of paper section 3."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.teachers import predict_logits


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
