"""Train and distill end to end: data + configs in, evaluated model (and checkpoint) out.

These are what the CLI commands and the experiments call; the loop itself is ``training.fit``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig
from darkknowledge.data import (Dataset, background_value, balanced_fraction, bank_codes, drop_classes, drop_labels, jittered_views,
                                keep_classes)
from darkknowledge.losses import ensemble_probs
from darkknowledge.errors import DKError
from darkknowledge.evaluation import evaluate
from darkknowledge.teachers import Teacher
from darkknowledge.training import HardLabels, MatchLogits, Objective, SoftTargets, fit, new_model, resolve_device


@dataclass
class Result:
    """A trained model with its per-epoch history, wall time and final test metrics."""

    name: str
    model: nn.Module
    history: list[dict[str, Any]]
    seconds: float
    test: dict[str, Any]
    transfer_size: int


def transfer_set(data: Dataset, cfg: TransferConfig, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training split filtered as ``cfg`` says (omitted/only classes, fraction, no labels)."""
    x, y = data.x_train, data.y_train
    for c in cfg.omit_classes + cfg.only_classes:
        if not 0 <= c < data.num_classes:
            raise DKError(f"class {c} is outside the data's classes 0..{data.num_classes - 1}")
    if cfg.omit_classes:
        x, y = drop_classes(x, y, cfg.omit_classes)
    if cfg.only_classes:
        x, y = keep_classes(x, y, cfg.only_classes)
    if cfg.fraction < 1:
        x, y = balanced_fraction(x, y, cfg.fraction, seed)
    if len(y) == 0:
        raise DKError("the transfer set is empty after filtering")
    if cfg.unlabelled:
        y = drop_labels(y)
    return x, y


def check_teacher_fits(teacher: Teacher, data: Dataset) -> None:
    """The teacher must take the data's inputs and predict over the data's classes."""
    if teacher.num_classes != data.num_classes:
        raise DKError(f"teacher predicts {teacher.num_classes} classes but the data has {data.num_classes}")
    try:
        with torch.no_grad():
            teacher.members[0].eval()(data.x_test[:1].to(next(teacher.members[0].parameters()).device))
    except RuntimeError:
        raise DKError(f"teacher does not take this data's inputs of shape {tuple(data.x_test.shape[1:])}") from None


def fit_and_evaluate(name: str, data: Dataset, x: torch.Tensor, objective: Objective, cfg: TrainConfig,
                     out: str | Path | None = None, resume: bool = False, progress: bool = True,
                     meta: dict[str, Any] | None = None,
                     train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
                     curve: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Build ``cfg.arch``, fit it to ``objective`` over inputs ``x``, and evaluate it on the test split
    (and, every evaluated epoch, on ``train_eval``'s examples too, if given). The per-epoch test errors
    are measured on ``curve``'s examples if given (e.g. a sample of the test split), the final on all."""
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    model = new_model(cfg, data.in_shape, data.num_classes)
    x_tr, y_tr = train_eval if train_eval is not None else (None, None)
    x_c, y_c = curve if curve is not None else (data.x_test, data.y_test)
    history = fit(model, x, objective, cfg, x_test=x_c, y_test=y_c, x_train_eval=x_tr,
                  y_train_eval=y_tr, checkpoint=out,
                  meta={"role": name, "data": data.name, **(meta or {})}, resume=resume, desc=name, progress=progress)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.x_test.to(device), data.y_test.to(device), data.num_classes)
    return Result(name, model, history, seconds, test, len(x))


def train(name: str, data: Dataset, cfg: TrainConfig, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, meta: dict[str, Any] | None = None,
          transfer: tuple[torch.Tensor, torch.Tensor] | None = None,
          train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
          curve: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Hard-label training of ``cfg.arch`` on the training split (or on ``transfer``)."""
    x, y = transfer if transfer is not None else (data.x_train, data.y_train)
    return fit_and_evaluate(name, data, x, HardLabels(y), cfg, out, resume, progress, meta, train_eval, curve)


def distill(name: str, data: Dataset, teacher: Teacher, cfg: TrainConfig, dcfg: DistillConfig,
            tcfg: TransferConfig = TransferConfig(), out: str | Path | None = None, resume: bool = False,
            progress: bool = True, meta: dict[str, Any] | None = None,
            transfer: tuple[torch.Tensor, torch.Tensor] | None = None,
            train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
            curve: tuple[torch.Tensor, torch.Tensor] | None = None) -> Result:
    """Train ``cfg.arch`` on the teacher's soft targets at ``dcfg.temperature`` over the transfer set.

    The transfer set is the training split filtered by ``tcfg``, unless ``transfer`` gives it directly.
    """
    check_teacher_fits(teacher, data)
    x, y = transfer if transfer is not None else transfer_set(data, tcfg, cfg.seed)
    device = resolve_device(cfg.device)
    if tcfg.jitter_views:  # beyond the paper: the student sees translated views, each with its own targets
        k = tcfg.jitter_views
        if x.dim() != 3:
            raise DKError(f"jitter_views needs images [N, H, W]; the transfer set is {tuple(x.shape)}")
        views = (2 * k + 1) ** 2
        targets = torch.empty(len(x), views, data.num_classes, device=device)
        # The views fit will draw: padded with the same background level (data.background_value).
        for code, view in jittered_views(x.to(device), k, background_value(x)):
            targets[:, code] = teacher.soft_targets(view, dcfg.temperature)
        objective = SoftTargets(targets.flatten(0, 1), y.to(device).repeat_interleave(views), dcfg, views)
        cfg = replace(cfg, jitter=k)
    elif tcfg.view_bank:  # the student's own augmentation, on a bank of views with the teacher's targets
        if not (cfg.jitter or cfg.flip):
            raise DKError("view_bank needs an augmentation to draw views from: set jitter and/or flip")
        codes = bank_codes(len(x), tcfg.view_bank, cfg.jitter, cfg.flip)
        logits = teacher.bank_logits(x.to(device), codes, cfg.jitter, cfg.flip, background_value(x))
        targets = ensemble_probs(logits.flatten(1, 2), dcfg.temperature, teacher.combine)
        objective = SoftTargets(targets, y.to(device).repeat(tcfg.view_bank), dcfg, bank_codes=codes)
    else:
        objective = SoftTargets(teacher.soft_targets(x.to(device), dcfg.temperature), y, dcfg)
    meta = {"distill_config": dataclasses.asdict(dcfg), "transfer_config": dataclasses.asdict(tcfg),
            "teacher_fingerprint": teacher.fingerprint(), "combine": teacher.combine, **(meta or {})}
    return fit_and_evaluate(name, data, x, objective, cfg, out, resume, progress, meta, train_eval, curve)


def match_logits(name: str, data: Dataset, teacher: Teacher, cfg: TrainConfig, x: torch.Tensor,
                 out: str | Path | None = None, resume: bool = False, progress: bool = True) -> Result:
    """Train ``cfg.arch`` to regress the teacher's (ensemble-mean) logits on ``x`` (paper section 2.1)."""
    check_teacher_fits(teacher, data)
    logits = teacher.member_logits(x.to(resolve_device(cfg.device))).mean(0)
    meta = {"objective": "logit matching", "teacher_fingerprint": teacher.fingerprint()}
    return fit_and_evaluate(name, data, x, MatchLogits(logits), cfg, out, resume, progress, meta)
