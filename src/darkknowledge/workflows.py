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
from darkknowledge.data import Dataset, balanced_fraction, drop_classes, drop_labels, keep_classes, split_validation
from darkknowledge.device import resolve_device
from darkknowledge.errors import DKError
from darkknowledge.evaluation import (bias_vector, errors_from_logits, evaluate, fit_bias_offset, predict_logits,
                                      teacher_check)
from darkknowledge.logs import TensorBoardLog, check_available
from darkknowledge.teachers import Teacher, TeacherLike, output_size
from darkknowledge.training import HardLabels, MatchLogits, Objective, SoftTargets, fit, new_model
from darkknowledge.views import ViewBank


@dataclass
class Result:
    """A trained model with its per-epoch history, wall time and final test metrics."""

    name: str
    model: nn.Module
    history: list[dict[str, Any]]
    seconds: float
    test: dict[str, Any]
    transfer_size: int
    checkpoint: str | None = None  # where ``fit`` wrote it (None: not written)


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


def fit_and_evaluate(name: str, data: Dataset, x: torch.Tensor, objective: Objective, cfg: TrainConfig,
                     out: str | Path | None = None, resume: bool = False, progress: bool = True,
                     meta: dict[str, Any] | None = None,
                     train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
                     curve: tuple[torch.Tensor, torch.Tensor] | None = None,
                     model: nn.Module | None = None, tensorboard: str | Path | TensorBoardLog | None = None) -> Result:
    """Build ``cfg.arch`` (or take ``model``, a user's own module), fit it to ``objective`` over inputs ``x``,
    and evaluate it on the test split (and, every evaluated epoch, on ``train_eval``'s examples too, if given).
    The per-epoch test errors are measured on ``curve``'s examples if given (e.g. a sample of the test
    split), the final on all. ``tensorboard``: every epoch's metrics also as TensorBoard scalars there."""
    device = resolve_device(cfg.device)
    t0 = time.perf_counter()
    model = model if model is not None else new_model(cfg, data.in_shape, data.num_classes)
    x_tr, y_tr = train_eval if train_eval is not None else (None, None)
    x_c, y_c = curve if curve is not None else (data.x_test, data.y_test)
    history = fit(model, x, objective, cfg, x_test=x_c, y_test=y_c, x_train_eval=x_tr,
                  y_train_eval=y_tr, checkpoint=out,
                  meta={"role": name, "data": data.name, **(meta or {})}, resume=resume, desc=name, progress=progress,
                  tensorboard=tensorboard)
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.x_test.to(device), data.y_test.to(device), data.num_classes)
    return Result(name, model, history, seconds, test, len(x), None if out is None else str(out))


def train(name: str, data: Dataset, cfg: TrainConfig, out: str | Path | None = None, resume: bool = False,
          progress: bool = True, meta: dict[str, Any] | None = None,
          transfer: tuple[torch.Tensor, torch.Tensor] | None = None,
          train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
          curve: tuple[torch.Tensor, torch.Tensor] | None = None, model: nn.Module | None = None,
          tensorboard: str | Path | None = None) -> Result:
    """Hard-label training of ``cfg.arch`` (or of ``model``) on the training split (or on ``transfer``)."""
    x, y = transfer if transfer is not None else (data.x_train, data.y_train)
    return fit_and_evaluate(name, data, x, HardLabels(y), cfg, out, resume, progress, meta, train_eval, curve,
                            model, tensorboard)


def student_bank(x: torch.Tensor, cfg: TrainConfig, tcfg: TransferConfig) -> tuple[TrainConfig, ViewBank | None]:
    """The views a student trained with ``cfg`` on transfer inputs ``x`` sees, and its config to train with.

    ``view_bank`` V: a bank of V views drawn from the student's own augmentation (jitter, flip); ``jitter_views``
    k (beyond the paper): every translation by up to k pixels (the student then jitters by k). Neither: None,
    the plain transfer set. The one place a bank is made from a student: a stage that fills the teacher's
    cache ahead of the students calls it too, so both compute the same codes and the same cache key.
    """
    if tcfg.jitter_views:
        cfg = replace(cfg, jitter=tcfg.jitter_views)
        return cfg, ViewBank.for_student(x, cfg.jitter, cfg.flip)
    if tcfg.view_bank:
        return cfg, ViewBank.for_student(x, cfg.jitter, cfg.flip, tcfg.view_bank, tcfg.mixup)
    return cfg, None


def unmatched_views(cfg: TrainConfig, tcfg: TransferConfig) -> str | None:
    """What is wrong when a student augments its images (``jitter``/``flip``) without a view bank: the teacher's
    targets are then those of the plain images, not of the views the student sees (None when they match)."""
    if tcfg.view_bank or tcfg.jitter_views or not (cfg.jitter or cfg.flip):
        return None
    what = [w for w, on in ((f"jitter {cfg.jitter}", cfg.jitter), ("flips", cfg.flip)) if on]
    verb = "change" if len(what) > 1 else "changes"
    return (f"the student's {' and '.join(what)} {verb} its images, but without a view bank the teacher's targets "
            f"are those of the plain images: give a view bank (view_bank / --view-bank V) so that it learns the teacher's "
            f"targets on exactly the views it sees")


def distill(name: str, data: Dataset, teacher: TeacherLike, cfg: TrainConfig, dcfg: DistillConfig,
            tcfg: TransferConfig = TransferConfig(), out: str | Path | None = None, resume: bool = False,
            progress: bool = True, meta: dict[str, Any] | None = None,
            transfer: tuple[torch.Tensor, torch.Tensor] | None = None,
            train_eval: tuple[torch.Tensor, torch.Tensor] | None = None,
            curve: tuple[torch.Tensor, torch.Tensor] | None = None, model: nn.Module | None = None,
            tensorboard: str | Path | None = None) -> Result:
    """Train ``cfg.arch`` (or ``model``) on the teacher's soft targets at ``dcfg.temperature`` over the transfer set.

    The teacher is any ``teachers.TeacherLike``: one model, an ensemble, a generalist with its specialists.
    The transfer set is the training split filtered by ``tcfg``, unless ``transfer`` gives it directly; with a
    view bank (``student_bank``) the student sees each example in a view of the bank, scored against the
    teacher's target on exactly that view.
    """
    teacher.check_fits(data)
    if tensorboard is not None:
        check_available()  # before the teacher's cost is paid
    x, y = transfer if transfer is not None else transfer_set(data, tcfg, cfg.seed)
    device = resolve_device(cfg.device)
    if tcfg.mixup and dcfg.hard_weight:
        raise DKError(f"mixup mixes two images, so one hard label is wrong for a mixed view: give hard_weight 0 "
                      f"with mixup (the teacher's targets alone, as Beyer et al. 2022), not {dcfg.hard_weight}")
    cfg, bank = student_bank(x, cfg, tcfg)
    t0 = time.perf_counter()
    if bank is None:
        objective = SoftTargets(teacher.soft_targets(x.to(device), dcfg.temperature), y, dcfg)
    else:
        targets = teacher.bank_targets(x.to(device), bank, dcfg.temperature)
        objective = SoftTargets(targets, y.to(device).repeat(bank.views), dcfg, bank)
    log = None
    if tensorboard is not None:
        log = TensorBoardLog(tensorboard)
        log.teacher(time.perf_counter() - t0)  # the teacher's targets on the transfer set (~0 from the cache)
    meta = {"distill_config": dataclasses.asdict(dcfg), "transfer_config": dataclasses.asdict(tcfg),
            "teacher_fingerprint": teacher.fingerprint(), "combine": teacher.combine,
            **(meta or {})}
    return fit_and_evaluate(name, data, x, objective, cfg, out, resume, progress, meta, train_eval, curve, model,
                            log)


def check_teacher(teacher: TeacherLike, baseline: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  split: str = "validation") -> dict[str, Any]:
    """``evaluation.teacher_check`` of ``teacher`` against ``baseline`` (a net trained on hard labels) on
    ``(x, y)``: a split neither learnt from (the validation split), or the test split, said so in ``split``."""
    if output_size(baseline) != teacher.num_classes:
        raise DKError(f"the baseline has {output_size(baseline)} outputs but the teacher {teacher.num_classes}")
    t = int((teacher.soft_targets(x, 1.0).argmax(1) != y).sum())
    b = int((predict_logits(baseline, x).argmax(1) != y).sum())
    return teacher_check([t], [b], len(y), split)


def distill_with_bias_fix(name: str, data: Dataset, teacher: TeacherLike, cfg: TrainConfig, dcfg: DistillConfig,
                          classes: tuple[int, ...], *, only: bool = False, val_size: int, out: str | Path | None = None,
                          resume: bool = False, progress: bool = True) -> tuple[Result, dict[str, Any]]:
    """Paper section 3: distil on a transfer set without ``classes`` (or, ``only``, with only them), then fit
    one output-bias offset for those classes on a validation split of ``val_size`` training images (carved
    off first, seeded by ``cfg.seed``; never the test set) and apply it to the test logits.

    Returns the distilled ``Result`` and ``{offset, test_optimal_offset, fixed_errors, fixed_per_class_errors}``;
    the test-optimal offset is reported beside the fitted one, as the paper reported its +3.5 and -7.6.
    """
    x_rest, y_rest, x_val, y_val = split_validation(data.x_train, data.y_train, val_size, seed=cfg.seed)
    transfer = (keep_classes if only else drop_classes)(x_rest, y_rest, list(classes))
    result = distill(name, data, teacher, cfg, dcfg, transfer=transfer, out=out, resume=resume, progress=progress)
    device = resolve_device(cfg.device)
    test_logits = predict_logits(result.model, data.x_test.to(device))
    y_test = data.y_test.to(device)
    offset, _ = fit_bias_offset(predict_logits(result.model, x_val.to(device)), y_val.to(device), classes)
    test_optimal, _ = fit_bias_offset(test_logits, y_test, classes)
    fixed = errors_from_logits(test_logits + bias_vector({c: offset for c in classes}, data.num_classes, device),
                               y_test, data.num_classes)
    return result, {"offset": offset, "test_optimal_offset": test_optimal, "fixed_errors": fixed["errors"],
                    "fixed_per_class_errors": fixed["per_class_errors"]}


def match_logits(name: str, data: Dataset, teacher: Teacher, cfg: TrainConfig, x: torch.Tensor,
                 out: str | Path | None = None, resume: bool = False, progress: bool = True) -> Result:
    """Train ``cfg.arch`` to regress the teacher's (ensemble-mean) logits on ``x`` (paper section 2.1)."""
    teacher.check_fits(data)
    logits = teacher.member_logits(x.to(resolve_device(cfg.device))).mean(0)
    meta = {"objective": "logit matching", "teacher_fingerprint": teacher.fingerprint()}
    return fit_and_evaluate(name, data, x, MatchLogits(logits), cfg, out, resume, progress, meta)
