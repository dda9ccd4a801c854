"""Test-set metrics, the output-bias correction of paper section 3, and the teacher sanity check."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from torch import nn

from darkknowledge.errors import DKError


TTA_LEVELS = {0: "none", 1: "mirror (2 views)", 2: "mirror x (none, 1-pixel shifts up-left and down-right) (6 views)"}


def _shift(x: torch.Tensor, d: int) -> torch.Tensor:
    """Images ``[B, C, H, W]`` moved by one pixel along both axes (``d`` = 1: content moves down-right; -1:
    up-left), the edge filled by reflection; any dtype."""
    padded = torch.cat([x[..., 1:2, :], x, x[..., -2:-1, :]], -2)
    padded = torch.cat([padded[..., 1:2], padded, padded[..., -2:-1]], -1)
    h, w = x.shape[-2:]
    o = 1 - d
    return padded[..., o:o + h, o:o + w]


def tta_views(x: torch.Tensor, level: int) -> list[tuple[torch.Tensor, float]]:
    """The test-time views of images ``x`` and their weights (summing to 1): level 0 the images; 1 with their
    mirrors; 2 (six views, airbench's weights) half on the image and its mirror, half on that pair shifted by one
    pixel up-left and down-right (airbench mirrors the shifted images instead: its mirrored views shift the other
    diagonal; equally many views, the same weights)."""
    if level not in TTA_LEVELS:
        raise DKError(f"unknown test-time augmentation level {level}; allowed: "
                      + ", ".join(f"{k} ({v})" for k, v in TTA_LEVELS.items()))
    if level == 0:
        return [(x, 1.0)]
    if x.dim() != 4:
        raise DKError(f"test-time augmentation needs images [N, C, H, W]; got {tuple(x.shape)}")
    mirror = [(x, 0.5), (x.flip(-1), 0.5)]
    if level == 1:
        return mirror
    shifted = [_shift(v, d) for d in (-1, 1) for v, _ in mirror]
    return [(v, 0.25) for v, _ in mirror] + [(v, 0.125) for v in shifted]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 8192, tta: int = 0) -> torch.Tensor:
    """Eval-mode logits ``[N, C]`` in batches on ``x``'s device; the model's train/eval mode is restored.
    ``tta``: test-time augmentation level (``tta_views``): the weighted mean of the logits over the views."""
    was_training = model.training
    model.eval()
    try:
        out = []
        for i in range(0, len(x), batch_size):
            views = tta_views(x[i:i + batch_size], tta)
            out.append(sum(w * model(v).float() for v, w in views))
        return torch.cat(out)
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
             bias: torch.Tensor | None = None, tta: int = 0) -> dict:
    """Evaluate at T = 1 (deployment), optionally with additive output-bias offsets ``[C]`` and test-time
    augmentation (``tta_views``)."""
    logits = predict_logits(model, x, tta=tta)
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
        grid = offset_grid(logits.device)
    grid = grid[grid.abs().argsort(stable=True)].to(logits.device)  # smallest |offset| first: wins ties
    errors = offset_errors(logits, y, classes, grid)
    best = int(errors.argmin())
    return round(float(grid[best]), 4), int(errors[best])


def offset_grid(device: str | torch.device = "cpu") -> torch.Tensor:
    """The offsets ``fit_bias_offset`` tries by default: -20 to 20 in steps of 0.1."""
    return torch.arange(-200, 201, device=device) / 10


def offset_errors(logits: torch.Tensor, y: torch.Tensor, classes: list[int] | tuple[int, ...],
                  grid: torch.Tensor) -> torch.Tensor:
    """``[G]`` errors on ``(logits, y)`` with each offset of ``grid`` added to the logits of ``classes``."""
    mask = torch.zeros(logits.shape[-1], device=logits.device)
    mask[list(classes)] = 1.0
    # [G, N]: predictions for every candidate offset at once.
    preds = (logits[None] + grid.to(logits.device)[:, None, None] * mask).argmax(-1)
    return (preds != y[None]).sum(-1)


def teacher_check(teacher_errors: Sequence[float], baseline_errors: Sequence[float], size: int, split: str, *,
                  teacher: str = "teacher", baseline: str = "hard-label baseline") -> dict:
    """Is the teacher better than a net trained on hard labels? The sanity check every distillation needs.

    ``teacher_errors[i]`` and ``baseline_errors[i]`` are paired counts (seed by seed, or the one teacher
    beside each of several baselines) out of ``size`` examples of ``split`` (the validation split where the
    teacher never trained on it, else the test split: reported, never used to choose anything). A teacher no
    better than its baseline rarely teaches a student to beat hard labels; ``warning`` then says so plainly
    (None when the teacher is better in every pair).
    """
    if len(teacher_errors) != len(baseline_errors) or not teacher_errors:
        raise ValueError("teacher_check needs one baseline count per teacher count, and at least one pair")
    worse = sum(t >= b for t, b in zip(teacher_errors, baseline_errors))
    t_mean = sum(teacher_errors) / len(teacher_errors)
    b_mean = sum(baseline_errors) / len(baseline_errors)
    warning = None
    if worse:
        pairs = "" if len(teacher_errors) == 1 else f" in {worse} of {len(teacher_errors)} pairs"
        warning = (f"the {teacher} ({t_mean:.6g} errors of {size} on the {split} split) is not better than the "
                   f"{baseline} ({b_mean:.6g}){pairs}: distilling it is unlikely to beat training on hard labels; "
                   "regularise the teacher more (jitter, dropout), train it longer, or make it bigger")
    return {"teacher": teacher, "baseline": baseline, "split": split, "size": size,
            "teacher_errors": list(teacher_errors), "baseline_errors": list(baseline_errors),
            "teacher_better": worse == 0, "warning": warning}
