"""Paper sections 4 and 6 on real CIFAR-10: ``dk reproduce cifar10``.

Section 4, an ensemble distilled into one model: M members of one fast CNN (``airnet``) that differ only by
seed (each also a "single net" baseline); the ensemble under the arithmetic and geometric means; the
ensemble's soft targets on a bank of augmented views of the transfer set, computed once and reused by
every student; the temperature chosen on a validation split carved from the training set (the paper's
T in {1, 2, 5, 10}, hard-label weight 0.5); then one distilled single net of the members' size per seed,
and the fraction of the ensemble's gain it keeps (paper: 86% of the frame-accuracy gain). When the students
train longer than the members, a hard-label single net trains as long per seed and is the baseline of the
gain kept, so the gain is never bought with budget. Every net and the ensemble are also scored with
test-time augmentation (``evaluation.tta_views``), the same views for all (the ``*_tta`` rows).

Section 6, soft targets as a regulariser: 3% of the training set (class-balanced, seeded) with hard
labels vs with the soft targets of a net trained on all of it (member s for seed s), beside that
100%-hard net; train and test accuracy per epoch, no early stopping, and the fraction of the gap the soft
targets recover (paper: 87%). The soft run learns the teacher's targets alone on a bank of views mixed
with mixup (Beyer et al. 2022), at a temperature chosen on the validation split (the ``select3`` stages),
settings measured on validation in recipes/README.md.

Every training run is a stage of ``experiments.runner`` (recorded as it ends, resumable); ensemble
members go through the executor interface (``--executor local|ray``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from darkknowledge.checkpoint import load_checkpoint
from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig, packaged_recipe
from darkknowledge.data import Dataset, balanced_fraction, load_split
from darkknowledge.device import resolve_device
from darkknowledge.ensembles import MemberTask, evaluate_ensemble, member_task
from darkknowledge.errors import DKError
from darkknowledge.evaluation import TTA_LEVELS, errors_from_logits, predict_logits
from darkknowledge.experiments.report import Experiment, paired_check, relative_to, save_figure, seed_row, values_row
from darkknowledge.experiments.runner import DONE, PENDING, Stage, model_dir
from darkknowledge.teachers import Teacher
from darkknowledge.workflows import Result, distill, student_bank, train

# The paper's numbers: section 4 (speech frame accuracy, %) and section 6 (table 5). Different data and
# nets: the percentages of gain kept and gap recovered are what carries over.
PAPER: dict[str, tuple[str, float | None]] = {
    "single": ("test_accuracy_percent", 58.9),
    "ensemble": ("test_accuracy_percent", 61.1),
    "ensemble_geometric": ("test_accuracy_percent", None),
    "distilled_from_ensemble": ("test_accuracy_percent", 60.8),
    "distilled_from_geometric": ("test_accuracy_percent", None),
    "single_long": ("test_accuracy_percent", None),
    "gain_kept_percent": ("percent", 86.4),
    "single_tta": ("test_accuracy_percent", None),
    "ensemble_tta": ("test_accuracy_percent", None),
    "distilled_from_ensemble_tta": ("test_accuracy_percent", None),
    "gain_kept_tta_percent": ("percent", 86.4),
    "hard_100pct": ("test_accuracy_percent", 58.9),
    "hard_100pct_train": ("train_accuracy_percent", 63.4),
    "hard_3pct": ("test_accuracy_percent", 44.5),
    "hard_3pct_train": ("train_accuracy_percent", 67.3),
    "soft_3pct": ("test_accuracy_percent", 57.0),
    "soft_3pct_train": ("train_accuracy_percent", 65.4),
    "gap_recovered_percent": ("percent", 86.8),
}


@dataclass(frozen=True)
class Scale:
    """How much compute one reproduction spends."""

    members: int
    member_epochs: int
    student_epochs: int
    select_epochs: int  # each temperature's validation run
    temperatures: tuple[float, ...]
    small_epochs: int  # the 3%-data runs (no early stopping)
    views: int  # augmented views per transfer image in the soft-target bank
    small_views: int = 32  # the 3%-data soft run's bank: a small set, so many views are cheap
    small_temperatures: tuple[float, ...] = (1, 5, 10)  # the 3%-data soft run's T, chosen on validation
    small_mixup: float = 1.0  # mixup alpha of that bank (Beyer et al. 2022; recipes/README.md)
    val_size: int = 5000
    train_limit: int = 0  # 0: all 50,000 training images (before the validation split)
    fraction: float = 0.03
    default_seeds: int = 3
    geometric_seeds: int = 1  # distilled-from-the-geometric-mean students on the first N seeds
    arch: str | None = None  # None: the recipes' (airnet-32-128-128)
    batch_size: int = 0  # members and students; 0: the recipes' (1024), else the peak lr scaled linearly with it
    tta: int = 2  # test-time augmentation level of the *_tta rows (evaluation.TTA_LEVELS)


SCALES: dict[str, Scale] = {
    # airnet-32-128-128 trains at ~1,000 images/s in bf16 on 2 AVX512-BF16/AMX cores (~51 s per 45,000-image
    # epoch): 4 members of 20 epochs (the epochs chosen on the validation split, recipes/README.md), an
    # 8-view bank, T chosen among the paper's four on short validation runs, students as long as the members.
    "full": Scale(members=4, member_epochs=20, student_epochs=20, select_epochs=4, temperatures=(1, 2, 5, 10),
                  small_epochs=100, views=8),
    # Minutes on 2 cores: a 10,000-image subset (1,000 of it for validation), 3 members, 6% of it for the
    # small-data runs (54 images per class, as many as 3% of the full training set would give 135). The
    # quarter-width airnet-16-64-64 (0.13 M parameters, 2.6x the training images/s of airnet-32-128-128 in fp32
    # on a 2-core AVX2 EPYC: 1,665 vs 651) and no geometric-mean student: with airnet-32-128-128 and one, this
    # scale took 3,275 s there (recipes/README.md).
    "quick": Scale(members=3, member_epochs=12, student_epochs=12, select_epochs=4, temperatures=(2, 5),
                   small_epochs=100, views=8, val_size=1000, train_limit=10_000, fraction=0.06, batch_size=512,
                   arch="airnet-16-64-64", geometric_seeds=0),
    # Seconds: every stage and the results contract on 1,200 images; students twice the members' epochs, so
    # the equal-budget single net runs too.
    "smoke": Scale(members=2, member_epochs=1, student_epochs=2, select_epochs=1, temperatures=(2, 5),
                   small_epochs=2, views=2, small_views=4, small_temperatures=(2, 5), val_size=200, train_limit=1200,
                   fraction=0.1, default_seeds=1,
                   arch="airnet-8-16-16", batch_size=128, tta=1),
}
SMALL_BATCH = 64  # the small-data runs (section 6)
EVALS = 4  # test evaluations per run (and after the last epoch)
CURVE = 2000  # per-epoch test errors on a seeded sample of 2,000 test images (a fifth of the cost); the final on all


MEMBER = packaged_recipe("cifar10", "member")[TrainConfig]
_distilled = packaged_recipe("cifar10", "distilled", (TrainConfig, DistillConfig))
DISTILLED, DISTILL = _distilled[TrainConfig], _distilled[DistillConfig]
# Section 6's soft run: the teacher's targets alone (on 3% of the data the hard-label term is fitted as
# completely as by the hard run, and with mixed views one hard label is wrong): recipes/README.md.
DISTILL_SMALL = replace(DISTILL, soft_weight=1.0, hard_weight=0.0)


def scaled(cfg: TrainConfig, sc: Scale, epochs: int, seed: int, device: str, batch_size: int = 0) -> TrainConfig:
    """The recipe at a scale: its epochs (warm-up 20% of them, at most the recipe's), architecture and batch
    size (the peak learning rate scaled linearly with the batch)."""
    bs = batch_size or sc.batch_size or cfg.batch_size
    return replace(cfg, epochs=epochs, seed=seed, device=device, arch=sc.arch or cfg.arch, batch_size=bs,
                   lr=cfg.lr * bs / cfg.batch_size, warmup_epochs=min(cfg.warmup_epochs, 0.2 * epochs),
                   eval_every=max(1, epochs // EVALS))


def long_baseline(sc: Scale) -> bool:
    """Whether the students train longer than the members, so an equal-budget hard-label single net runs."""
    return sc.student_epochs > sc.member_epochs


# ---- data: the validation split and the 3% subset, identical in every process -------------------------

_DATA: dict[tuple, tuple[Dataset, tuple[torch.Tensor, torch.Tensor]]] = {}


def load_data_for(data_dir: str | Path, sc: Scale, device: torch.device) -> tuple[Dataset, tuple]:
    """CIFAR-10 split as the members see it (``ensembles.load_split``: ``train_limit`` images of a seeded
    permutation, then ``val_size`` of them carved off for validation), resident on ``device``; cached."""
    key = (str(data_dir), sc.train_limit, sc.val_size, str(device))
    if key not in _DATA:
        data, (xv, yv) = load_split(member_source(data_dir), sc.val_size, sc.train_limit)
        data = replace(data, x_train=data.x_train.to(device), y_train=data.y_train.to(device),
                       x_test=data.x_test.to(device), y_test=data.y_test.to(device))
        _DATA[key] = (data, (xv.to(device), yv.to(device)))
    return _DATA[key]


def member_source(data_dir: str | Path) -> str:
    return f"cifar10:{data_dir}"


# ---- stages ---------------------------------------------------------------------------------------------

def build_stages(sc: Scale, seeds: int, ctx: dict[str, Any]) -> list[Stage]:
    n = (sc.train_limit or 50_000) - sc.val_size
    members = max(sc.members, seeds)
    member_names = tuple(f"member/m{i}" for i in range(members))
    stages = [Stage(name, "member", {**ctx, "member": i}, cost=sc.member_epochs * n / 1e5)
              for i, name in enumerate(member_names)]
    stages.append(Stage("ensemble", "ensemble", ctx, member_names, cost=sc.views * members * n / 3e5))
    select = tuple(f"select/T{t:g}" for t in sc.temperatures)
    stages += [Stage(name, "select", {**ctx, "temperature": float(t)}, ("ensemble",),
                     sc.select_epochs * n / 1e5) for name, t in zip(select, sc.temperatures)]
    for s in range(seeds):
        p = {**ctx, "seed": s}
        if long_baseline(sc):
            stages.append(Stage(f"single-long/s{s}", "single_long", p, (), sc.student_epochs * n / 1e5))
        stages.append(Stage(f"distilled/s{s}", "distilled", p, ("ensemble",) + select, sc.student_epochs * n / 1e5))
        if s < sc.geometric_seeds:
            stages.append(Stage(f"distilled-geometric/s{s}", "distilled_geometric", p, ("ensemble",) + select,
                                sc.student_epochs * n / 1e5))
    small = sc.small_epochs * sc.fraction * n / 1e5 + sc.small_epochs / 20 * 0.1  # + evaluations
    # Its temperature: chosen on the validation split with seed 0's subset and teacher.
    select3 = tuple(f"select3/T{t:g}" for t in sc.small_temperatures)
    stages += [Stage(name, "select_small", {**ctx, "seed": 0, "temperature": float(t)}, ("member/m0",), small * 1.2)
               for name, t in zip(select3, sc.small_temperatures)]
    for s in range(seeds):
        p = {**ctx, "seed": s}
        stages.append(Stage(f"hard3/s{s}", "hard_small", p, (), small))
        stages.append(Stage(f"soft3/s{s}", "soft_small", p, (f"member/m{s}",) + select3, small * 1.2))
    return stages


def _choice(inputs: dict[str, Any], prefix: str = "select/") -> float:
    """The temperature with the fewest validation errors among the ``prefix`` stages' results (ties: the lower T)."""
    best = None
    for name, r in inputs.items():
        if name.startswith(prefix) and (best is None or r["val_errors"] < best[1]):
            best = (float(r["temperature"]), r["val_errors"])
    return best[0]


def _teacher(inputs: dict[str, Any], device: torch.device, out: Path, combine: str = "arithmetic") -> Teacher:
    """The ensemble of the members the ensemble stage evaluated (its result names their checkpoints)."""
    return Teacher.from_checkpoints([out / m for m in inputs["ensemble"]["member_checkpoints"]], combine, device=device,
                                    cache_dir=out / "cache")


def _curve(data: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-epoch sample of the test split: seeded, random (a split may be stored class by class)."""
    idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(0))[:CURVE].sort().values
    idx = idx.to(data.y_test.device)
    return data.x_test[idx], data.y_test[idx]


def _summary(r: Result, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"test_errors": r.test["errors"], "test_size": r.test["test_size"], "curve_size": CURVE,
            "accuracy": r.test["accuracy"], "transfer_size": r.transfer_size, "epochs": len(r.history),
            "seconds": round(r.seconds, 2),
            "curve": [{k: h[k] for k in ("epoch", "test_errors", "train_errors") if k in h} for h in r.history],
            **(extra or {})}


def _train_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> float:
    return errors_from_logits(predict_logits(model, x), y, num_classes)["accuracy"]


def _tta(model: torch.nn.Module, data: Dataset, sc: Scale) -> dict[str, Any]:
    """Test errors with the scale's test-time augmentation."""
    r = errors_from_logits(predict_logits(model, data.x_test, tta=sc.tta), data.y_test, data.num_classes)
    return {"test_errors_tta": r["errors"], "accuracy_tta": r["accuracy"], "tta": sc.tta}


def run_stage(stage: Stage, inputs: dict[str, Any]) -> dict[str, Any]:
    """Execute one stage (in this process or a worker); ``inputs`` are the results of its dependencies."""
    p = stage.params
    sc, device, progress, out = p["scale"], p["device"], p["progress"], Path(p["out"])
    dev = resolve_device(device)
    data, (x_val, y_val) = load_data_for(p["data_dir"], sc, dev)
    ckpt = model_dir(out, stage.name)
    if stage.kind == "member":
        i = p["member"]
        task = MemberTask(data=member_source(p["data_dir"]), config=scaled(MEMBER, sc, sc.member_epochs, i, device),
                          out=str(out / "members" / f"member{i}"), name=f"member{i}", val_size=sc.val_size,
                          limit=sc.train_limit, progress=progress)
        result = member_task(task)  # the members' split is this one: same limit, same validation carve-out
        model, _, _ = load_checkpoint(task.out, device=dev)
        result["train_accuracy"] = _train_accuracy(model, data.x_train, data.y_train, data.num_classes)
        return {**result, **_tta(model, data, sc), "out": relative_to(out, task.out)}
    if stage.kind == "single_long":  # the members' recipe on hard labels, as long as a student trains
        cfg = scaled(MEMBER, sc, sc.student_epochs, p["seed"], device)
        r = train(stage.name, data, cfg, out=ckpt, resume=True, progress=progress, curve=_curve(data))
        return _summary(r, _tta(r.model, data, sc))
    if stage.kind == "ensemble":
        paths = [inputs[name]["out"] for name in sorted(inputs, key=lambda k: int(k.split("/m")[1]))]
        teacher = Teacher.from_checkpoints([out / m for m in paths], device=dev, cache_dir=out / "cache")
        result = evaluate_ensemble(teacher, data.x_test, data.y_test, data.num_classes)
        tta = evaluate_ensemble(teacher, data.x_test, data.y_test, data.num_classes, tta=sc.tta)
        result.update({f"{k}_tta": v for k, v in tta.items() if k != "test_size"}, tta=sc.tta)
        # The teacher check's numbers: the members never trained on the validation split.
        val = evaluate_ensemble(teacher, x_val, y_val, data.num_classes)
        result.update(val_members=val["members"], val_arithmetic=val["arithmetic"], val_size=val["test_size"])
        # The soft-target bank every student draws on, made as the students make it (``student_bank``):
        # paid here, once, and timed.
        t0 = time.perf_counter()
        _, bank = student_bank(data.x_train, scaled(DISTILLED, sc, sc.student_epochs, 0, device),
                               TransferConfig(view_bank=sc.views))
        teacher.bank_logits(data.x_train, bank)
        bank_seconds = time.perf_counter() - t0
        return {**result, "bank_seconds": round(bank_seconds, 2), "views": sc.views, "members": len(paths),
                "member_checkpoints": paths, "transfer_size": len(data.x_train),
                # Running the ensemble on every batch instead costs one pass over the transfer set per epoch:
                "teacher_seconds_per_epoch_on_the_fly": round(bank_seconds / sc.views, 2)}
    dcfg = DISTILL
    if stage.kind == "select":  # a student on the train split, scored on the validation split
        cfg = scaled(DISTILLED, sc, sc.select_epochs, 100, device)
        r = distill(stage.name, data, _teacher(inputs, dev, out), cfg, replace(dcfg, temperature=p["temperature"]),
                    TransferConfig(view_bank=sc.views), out=ckpt, resume=True, progress=progress, curve=_curve(data))
        val = errors_from_logits(predict_logits(r.model, x_val), y_val, data.num_classes)
        return _summary(r, {"temperature": p["temperature"], "val_errors": val["errors"], "val_size": len(y_val)})
    if stage.kind in ("distilled", "distilled_geometric"):
        temperature = _choice(inputs)
        combine = "geometric" if stage.kind == "distilled_geometric" else "arithmetic"
        teacher = _teacher(inputs, dev, out, combine)
        cfg = scaled(DISTILLED, sc, sc.student_epochs, p["seed"], device)
        t0 = time.perf_counter()
        r = distill(stage.name, data, teacher, cfg, replace(dcfg, temperature=temperature),
                    TransferConfig(view_bank=sc.views), out=ckpt, resume=True, progress=progress, curve=_curve(data))
        return _summary(r, {**_tta(r.model, data, sc), "temperature": temperature, "combine": combine,
                            "cache_hits": teacher.cache.hits,
                            "teacher_seconds": round(teacher.cache.compute_seconds, 2),
                            "wall_seconds": round(time.perf_counter() - t0, 2)})
    # Section 6: 3% of the training split, class-balanced, seeded by the seed.
    x_small, y_small = balanced_fraction(data.x_train, data.y_train, sc.fraction, seed=p["seed"])
    # Both 3% runs use the members' augmentation (random crops, mirrors), chosen on the validation split
    # over none for either (recipes/README.md); the soft run draws its views from a bank with the teacher's
    # targets on each view. Batch 64 for enough steps (the peak lr scaled with it); 10 evaluations for the plot.
    cfg = replace(scaled(MEMBER, sc, sc.small_epochs, p["seed"], device, SMALL_BATCH),
                  eval_every=max(1, sc.small_epochs // 10))
    track = dict(train_eval=(x_small, y_small), curve=_curve(data))
    if stage.kind == "hard_small":
        r = train(stage.name, data, cfg, out=ckpt, resume=True, progress=progress, transfer=(x_small, y_small),
                  **track)
        return _summary(r, {"train_accuracy": _train_accuracy(r.model, x_small, y_small, data.num_classes)})
    if stage.kind in ("soft_small", "select_small"):  # the soft run, or one of its temperature's validation runs
        temperature = p["temperature"] if stage.kind == "select_small" else _choice(inputs, "select3/")
        teacher = Teacher.from_checkpoints([out / inputs[f"member/m{p['seed']}"]["out"]], device=dev,
                                           cache_dir=out / "cache")
        r = distill(stage.name, data, teacher, cfg, replace(DISTILL_SMALL, temperature=temperature),
                    TransferConfig(view_bank=sc.small_views, mixup=sc.small_mixup), transfer=(x_small, y_small),
                    out=ckpt, resume=True, progress=progress, **track)
        extra = {"temperature": temperature, "views": sc.small_views, "mixup": sc.small_mixup,
                 "train_accuracy": _train_accuracy(r.model, x_small, y_small, data.num_classes)}
        if stage.kind == "select_small":
            extra.update(val_errors=errors_from_logits(predict_logits(r.model, x_val), y_val, data.num_classes)["errors"],
                         val_size=len(y_val))
        return _summary(r, extra)
    raise DKError(f"unknown stage kind {stage.kind!r}")


# ---- results --------------------------------------------------------------------------------------------

def _pct(r: dict[str, Any]) -> float:
    return 100 * r["accuracy"]


def _gain_row(name: str, single: dict[str, Any], single_long: dict[str, Any] | None, ensemble: dict[str, Any],
              students: list[Stage], records: dict[str, dict[str, Any]], value) -> dict[str, Any]:
    """(student - baseline) / (ensemble - single) per student seed; the baseline is the equal-budget single net
    (``single_long``) when there is one, else the members' mean."""
    base = single_long or single
    if base["status"] != DONE or single["status"] != DONE or ensemble["mean"] is None:
        return {**seed_row(name, *PAPER[name], [], records, value), "status": PENDING}
    gain = ensemble["mean"] - single["mean"]
    row = seed_row(name, *PAPER[name], students, records,
                   lambda r: 100 * (value(r) - base["mean"]) / gain if gain else float("nan"))
    which = "the equal-budget single net's mean" if single_long else "the single nets' mean"
    row["note"] = (f"(distilled - baseline) / (ensemble - single mean), baseline {which} {base['mean']:.2f}; "
                   f"ensemble gain {gain:.2f} points")
    return row


def summarise(stages: list[Stage], records: dict[str, dict[str, Any]], sc: Scale, seeds: int) -> dict[str, Any]:
    """The CIFAR-10 part of ``results.json`` (see ``experiments.report``) from the stage records so far."""
    by_kind: dict[str, list[Stage]] = {}
    for s in stages:
        by_kind.setdefault(s.kind, []).append(s)
    done = {s.name: records[s.name]["result"] for s in stages if records[s.name]["status"] == DONE}
    members, hard100 = by_kind["member"], by_kind["member"][:seeds]
    ens = done.get("ensemble")
    test_size = ens["test_size"] if ens else None
    rows = [seed_row("single", *PAPER["single"], members, records, _pct)]

    def ensemble_row(name: str, method: str) -> dict[str, Any]:
        row = seed_row(name, *PAPER[name], by_kind["ensemble"], records,
                       lambda r: 100 * (1 - r[method] / r["test_size"]))
        return row

    rows += [ensemble_row("ensemble", "arithmetic"), ensemble_row("ensemble_geometric", "geometric"),
             seed_row("distilled_from_ensemble", *PAPER["distilled_from_ensemble"], by_kind["distilled"], records,
                      _pct)]
    geometric = by_kind.get("distilled_geometric", [])  # only on the scale's first geometric_seeds seeds
    rows += [seed_row("distilled_from_geometric", *PAPER["distilled_from_geometric"], geometric, records, _pct)
             ] if geometric else []
    longs = by_kind.get("single_long", [])
    long_row = seed_row("single_long", *PAPER["single_long"], longs, records, _pct,
                        note="hard labels, the members' recipe for the students' epochs: the gain kept's baseline")
    rows += [long_row] if longs else []  # only where the students train longer than the members
    rows.append(_gain_row("gain_kept_percent", rows[0], long_row if longs else None, rows[1], by_kind["distilled"],
                          records, _pct))
    tta = lambda r: 100 * r["accuracy_tta"]  # noqa: E731
    rows += [seed_row("single_tta", *PAPER["single_tta"], members, records, tta),
             seed_row("ensemble_tta", *PAPER["ensemble_tta"], by_kind["ensemble"], records,
                      lambda r: 100 * (1 - r["arithmetic_tta"] / r["test_size"])),
             seed_row("distilled_from_ensemble_tta", *PAPER["distilled_from_ensemble_tta"], by_kind["distilled"],
                      records, tta)]
    long_tta = seed_row("single_long_tta", None, None, longs, records, tta) if longs else None
    rows.append(_gain_row("gain_kept_tta_percent", rows[-3], long_tta, rows[-2], by_kind["distilled"], records, tta))
    rows += [seed_row("hard_100pct", *PAPER["hard_100pct"], hard100, records, _pct),
             seed_row("hard_100pct_train", *PAPER["hard_100pct_train"], hard100, records,
                      lambda r: 100 * r["train_accuracy"]),
             seed_row("hard_3pct", *PAPER["hard_3pct"], by_kind["hard_small"], records, _pct),
             seed_row("hard_3pct_train", *PAPER["hard_3pct_train"], by_kind["hard_small"], records,
                      lambda r: 100 * r["train_accuracy"]),
             seed_row("soft_3pct", *PAPER["soft_3pct"], by_kind["soft_small"], records, _pct),
             seed_row("soft_3pct_train", *PAPER["soft_3pct_train"], by_kind["soft_small"], records,
                      lambda r: 100 * r["train_accuracy"])]
    # Gap recovered, per seed: (soft_s - hard_s) / (hard100_s - hard_s).
    gaps = []
    for s in range(seeds):
        h, f, m = done.get(f"hard3/s{s}"), done.get(f"soft3/s{s}"), done.get(f"member/m{s}")
        if h and f and m and _pct(m) != _pct(h):
            gaps.append(100 * (_pct(f) - _pct(h)) / (_pct(m) - _pct(h)))
    rows.append(values_row("gap_recovered_percent", *PAPER["gap_recovered_percent"], gaps, seeds,
                           note="(soft 3% - hard 3%) / (hard 100% - hard 3%), test accuracy, per seed"))
    def selection(kind: str) -> list[dict[str, Any]]:  # each temperature's validation errors, as measured so far
        return [{k: done[s.name][k] for k in ("temperature", "val_errors", "val_size")}
                for s in by_kind.get(kind, []) if s.name in done]

    curves = {s.name: {"train_size": done[s.name]["transfer_size"], "curve": done[s.name]["curve"],
                       "curve_size": done[s.name].get("curve_size", test_size)}
              for s in by_kind["hard_small"] + by_kind["soft_small"] if s.name in done}
    teacher_cost = None
    if ens:
        students = [done[s.name] for s in by_kind["distilled"] + by_kind.get("distilled_geometric", [])
                    + by_kind["select"] if s.name in done]
        epochs = sum(r["epochs"] for r in students)
        teacher_cost = {"bank_seconds": ens["bank_seconds"], "views": ens["views"], "members": ens["members"],
                        "student_epochs_served": epochs,
                        "bank_seconds_per_student_epoch": round(ens["bank_seconds"] / epochs, 3) if epochs else None,
                        "on_the_fly_seconds_per_student_epoch": ens["teacher_seconds_per_epoch_on_the_fly"],
                        "cache_hits": sum(r.get("cache_hits", 0) for r in students)}
    check = None
    if ens:  # the ensemble (the students' teacher) against each of its members, trained on hard labels alone
        if "val_members" in ens:
            split, size, teacher_errors, member_errors = "validation", ens["val_size"], ens["val_arithmetic"], ens["val_members"]
        else:  # a run from before the check: its stages measured the test split only
            split, size, teacher_errors = "test", ens["test_size"], ens["arithmetic"]
            member_errors = [done[s.name]["test_errors"] for s in members if s.name in done]
        check = paired_check("ensemble", "hard-label single net", split, [teacher_errors] * len(member_errors),
                             member_errors, size, "ensemble",
                             "" if split == "validation" else "this run's ensemble stage predates the validation check")
    return {"test_size": test_size, "rows": rows, "temperature_selection": selection("select"),
            "temperature_selection_3pct": selection("select_small"), "teacher_cost": teacher_cost,
            "ensemble": ens, "curves_3pct": curves, "teacher_check": [check] if check else []}


def preface(results: dict[str, Any]) -> list[str]:
    return ["The paper's column is its speech numbers (frame accuracy, %): other data and nets; the gain kept "
            "and the gap recovered are what carry over.", ""]


def markdown(results: dict[str, Any]) -> list[str]:
    """The sections after the rows: the temperature choice and the teacher's cost."""
    lines: list[str] = []
    if results["temperature_selection"]:
        lines += ["", "Temperature chosen on the validation split (hard-label weight 0.5):", "",
                  "| T | validation errors |", "|---|---|"]
        lines += [f"| {s['temperature']:g} | {s['val_errors']} of {s['val_size']} |"
                  for s in results["temperature_selection"]]
    if results.get("temperature_selection_3pct"):
        lines += ["", "Temperature of the 3% soft run, chosen on the validation split (soft targets alone, mixup "
                  f"alpha {results['scale_config'].get('small_mixup', 0)} on the bank's views; seed 0's subset and "
                  "teacher):", "", "| T | validation errors |", "|---|---|"]
        lines += [f"| {s['temperature']:g} | {s['val_errors']} of {s['val_size']} |"
                  for s in results["temperature_selection_3pct"]]
    tc = results["teacher_cost"]
    if tc:
        lines += ["", f"Teacher cost: the ensemble's targets on {tc['views']} views of the transfer set took "
                  f"{tc['bank_seconds']:.1f} s once ({tc['members']} members), reused for {tc['student_epochs_served']} "
                  f"student epochs: {tc['bank_seconds_per_student_epoch']} s per student epoch, against "
                  f"{tc['on_the_fly_seconds_per_student_epoch']} s per epoch running the ensemble on every batch."]
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    """``small_data.png``: train and test accuracy per epoch of the 3% runs (seed 0), hard vs soft targets."""
    curves = results["curves_3pct"]
    pct = f"{100 * results['scale_config']['fraction']:g}%"
    pair = [(name, label) for name, label in (("hard3/s0", f"{pct}, hard targets"), ("soft3/s0", f"{pct}, soft targets"))
            if name in curves]
    if not pair:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    test_size = results.get("test_size") or 10_000
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for (name, label), color in zip(pair, ("tab:red", "tab:blue")):
        pts = [c for c in curves[name]["curve"] if "test_errors" in c]
        ep = [c["epoch"] for c in pts]
        size = curves[name].get("curve_size", test_size)
        ax.plot(ep, [100 * (1 - c["test_errors"] / size) for c in pts], color=color,
                label=f"{label}: test" + (f" ({size:,} images)" if size != test_size else ""))
        if all("train_errors" in c for c in pts):
            train_n = curves[name]["train_size"]
            ax.plot(ep, [100 * (1 - c["train_errors"] / train_n) for c in pts], color=color, linestyle="--",
                    label=f"{label}: train")
    n = curves[pair[0][0]]["train_size"]
    ax.set(xlabel="epoch", ylabel="accuracy (%)",
           title=f"CIFAR-10, {pct} of the training split ({n} images), crops and mirrors, seed 0")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8)
    return [save_figure(fig, out / "small_data.png")]


EXPERIMENT = Experiment(
    name="cifar10", title="CIFAR-10 reproduction of paper sections 4 and 6", scales=SCALES,
    check_data=lambda data_dir, sc: load_data_for(data_dir, sc, torch.device("cpu")),
    stages=build_stages, run_stage=run_stage, summarise=summarise, markdown=markdown, plots=plots,
    precision=MEMBER.precision, preface=preface,
    configs=lambda sc: {"member": MEMBER, "distilled": DISTILLED, "distill": DISTILL, "distill_3pct": DISTILL_SMALL},
    # Read by the 3% soft runs alone (run_stage): changing one re-runs them on --resume, members kept.
    owners={key: ("select_small", "soft_small") for key in
            ("recipes.distill_3pct", "scale.small_mixup", "scale.small_temperatures", "scale.small_views")})
