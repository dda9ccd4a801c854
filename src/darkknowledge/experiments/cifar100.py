"""Paper section 5 on real CIFAR-100: ``dk reproduce cifar100``.

Per seed s: a generalist (a conv net of the registry, trained on the training split with a validation split
held out); the covariance of its predicted probabilities on the validation split, clustered with
scikit-learn's MiniBatchKMeans into K overlapping subsets of confusable classes (``specialists.cluster_classes``);
one specialist per subset, initialised from the generalist (new head over its classes + a dustbin, batches
half special, dustbin logit corrected by log(oversampling)); the generalist and the active specialists
combined on the test set by minimising the sum of KL divergences (``specialists.combine``), scored by how
many specialists cover each test example's true class (the paper's table 4). Beyond the paper: the
combination's soft targets (on a bank of augmented views of the training split) distilled back into one net
of the generalist's size. Seed 0 also trains its specialists with the generalist's soft targets as an extra
term (section 6.1) to say whether that helps.

Every training run is a stage of ``experiments.runner`` (recorded as it ends, resumable); stages run in a
process pool (``--workers``) or as Ray tasks (``--executor ray``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from darkknowledge import specialists as sp
from darkknowledge.checkpoint import load_checkpoint
from darkknowledge.config import (ClusterConfig, DistillConfig, SpecialistConfig, TrainConfig, TransferConfig,
                                  packaged_recipe)
from darkknowledge.data import load_split
from darkknowledge.device import resolve_device
from darkknowledge.ensembles import MemberTask, member_task
from darkknowledge.errors import DKError
from darkknowledge.evaluation import predict_logits
from darkknowledge.experiments.report import Experiment, paired_check, relative_to, values_row
from darkknowledge.experiments.runner import DONE, FAILED, Stage
from darkknowledge.workflows import distill, student_bank

# The paper's table 4 (speech, 61 specialists): relative frame-accuracy gain by how many specialists
# cover the true class; and section 5.4's overall gain. Other data and nets: the shape (gain rising with
# coverage) is what carries over.
PAPER_TABLE4 = {0: 0.0, 1: 3.1, 2: 4.4, 3: 4.9, 4: 4.9, 5: 6.3, 6: 7.2}  # 6: "6 or more" (7.2%)
PAPER_OVERALL = (25.0, 26.1)  # test frame accuracy %: baseline, + 61 specialists (relative gain 4.4%)


@dataclass(frozen=True)
class Scale:
    """How much compute one reproduction spends."""

    generalist_epochs: int
    specialists: int  # K
    max_classes: int  # classes per specialist at most
    specialist_epochs: int
    distill_epochs: int  # the distilled-back student (0: no such stage)
    views: int  # augmented views per training image in the distilled-back student's target bank
    arch: str
    batch_size: int = 0  # generalist and distilled-back student; 0: the recipes' (1024), else lr scaled with it
    val_size: int = 5000
    train_limit: int = 0
    default_seeds: int = 3
    soft_seeds: int = 1  # seeds whose specialists are also trained with the generalist's soft targets
    soft_weight: float = 1.0
    soft_temperature: float = 2.0
    top_n: tuple[int, ...] = (1, 2, 3)  # chosen on the validation split


SCALES: dict[str, Scale] = {
    # airnet-32-128-128 at ~1,000 images/s in bf16 on 2 AVX512-BF16/AMX cores: per seed a 20-epoch generalist
    # (the CIFAR-10 member's epochs), 12 specialists of 5 epochs over about 9,000 images each, a 20-epoch
    # distilled-back student; about 45 minutes a seed (estimated from the epoch rate, not yet run whole).
    "full": Scale(generalist_epochs=20, specialists=12, max_classes=10, specialist_epochs=5, distill_epochs=20,
                  views=4, arch="airnet-32-128-128"),
    # Short generalists and students, 8 specialists of 2 epochs, no section-6.1 variant; the quarter-width
    # airnet-16-64-64 (2.6x the training images/s of airnet-32-128-128 in fp32 on a 2-core AVX2 EPYC), as
    # CIFAR-10's quick scale: with airnet-32-128-128 one seed's generalist alone took 502 s there.
    "quick": Scale(generalist_epochs=4, specialists=8, max_classes=10, specialist_epochs=2, distill_epochs=4,
                   views=2, arch="airnet-16-64-64", soft_seeds=0),
    # Seconds: every stage and the results contract on 2,400 images.
    "smoke": Scale(generalist_epochs=1, specialists=3, max_classes=8, specialist_epochs=1, distill_epochs=1,
                   views=2, arch="airnet-8-16-16", batch_size=128, val_size=600, train_limit=2400, default_seeds=1),
}
EVALS = 3  # test evaluations per generalist / student run


GENERALIST = packaged_recipe("cifar100", "generalist")[TrainConfig]
SPECIALIST = packaged_recipe("cifar100", "specialist")[TrainConfig]
_distilled = packaged_recipe("cifar100", "distilled", (TrainConfig, DistillConfig))
DISTILLED, DISTILL = _distilled[TrainConfig], _distilled[DistillConfig]


def source(data_dir: str | Path) -> str:
    return f"cifar100:{data_dir}"


def _scaled(cfg: TrainConfig, sc: Scale, epochs: int, seed: int, device: str, batch_size: int = 0) -> TrainConfig:
    """The recipe at a scale: its epochs (warm-up 20% of them, at most the recipe's), the scale's net and batch
    size (the peak learning rate scaled linearly with the batch)."""
    bs = batch_size or sc.batch_size or cfg.batch_size
    return replace(cfg, epochs=epochs, seed=seed, device=device, arch=sc.arch, batch_size=bs,
                   lr=cfg.lr * bs / cfg.batch_size, warmup_epochs=min(cfg.warmup_epochs, 0.2 * epochs),
                   eval_every=max(1, epochs // EVALS))


def _split(data_dir: str, sc: Scale):
    return load_split(source(data_dir), sc.val_size, sc.train_limit)


def _check_data(data_dir: str, sc: Scale) -> None:
    data, _ = _split(data_dir, sc)
    if data.num_classes != 100:
        raise DKError(f"{data_dir} does not hold CIFAR-100 ({data.num_classes} classes)")


# ---- stages ---------------------------------------------------------------------------------------------

def build_stages(sc: Scale, seeds: int, ctx: dict[str, Any]) -> list[Stage]:
    n = (sc.train_limit or 50_000) - sc.val_size
    spec_cost = sc.specialist_epochs * 2 * (n * sc.max_classes * 0.8 / 100) / 1e5
    stages = []
    for s in range(seeds):
        p = {**ctx, "seed": s}
        g, c = f"generalist/s{s}", f"cluster/s{s}"
        stages += [Stage(g, "generalist", p, (), sc.generalist_epochs * n / 1e5),
                   Stage(c, "cluster", p, (g,), 0.02)]
        for variant in ("hard", "soft") if s < sc.soft_seeds else ("hard",):
            tag = "" if variant == "hard" else "-soft"
            names = tuple(f"specialist{tag}/s{s}/m{j}" for j in range(sc.specialists))
            stages += [Stage(name, "specialist", {**p, "m": j, "variant": variant}, (c,), spec_cost)
                       for j, name in enumerate(names)]
            stages.append(Stage(f"combine{tag}/s{s}", "combine", {**p, "variant": variant}, (g,) + names, 0.05))
        if sc.distill_epochs:
            stages.append(Stage(f"distilled-back/s{s}", "distilled_back", p, (f"combine/s{s}",),
                                sc.distill_epochs * n / 1e5 + sc.views * n / 3e5))
    return stages


def _generalist_dir(out: Path, seed: int) -> Path:
    return out / "generalists" / f"generalist{seed}"


def _specialist_dir(out: Path, seed: int, m: int, variant: str) -> Path:
    return out / "specialists" / f"s{seed}{'' if variant == 'hard' else '-soft'}" / f"m{m}"


def _probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(predict_logits(model, x), -1)


def _specialist_results(inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """The specialist stages' results among ``inputs``, in specialist order (m0, m1, ...)."""
    names = [k for k in inputs if k.startswith("specialist")]
    return [inputs[k] for k in sorted(names, key=lambda k: int(k.rsplit("/m", 1)[1]))]


def run_stage(stage: Stage, inputs: dict[str, Any]) -> dict[str, Any]:
    """Execute one stage (in this process or a worker); ``inputs`` are the results of its dependencies."""
    p = stage.params
    sc, device, progress, out, seed = p["scale"], p["device"], p["progress"], Path(p["out"]), p["seed"]
    dev = resolve_device(device)
    data, (x_val, y_val) = _split(p["data_dir"], sc)
    if stage.kind == "generalist":
        task = MemberTask(data=source(p["data_dir"]), config=_scaled(GENERALIST, sc, sc.generalist_epochs, seed, device),
                          out=str(_generalist_dir(out, seed)), name=f"generalist{seed}", val_size=sc.val_size,
                          limit=sc.train_limit, progress=progress)
        result = member_task(task)
        model, _, _ = load_checkpoint(task.out, device=dev)
        val = _probs(model, x_val.to(dev))
        result["val_accuracy"] = float((val.argmax(1).cpu() == y_val).float().mean())
        return {**result, "out": relative_to(out, task.out)}
    if stage.kind == "cluster":
        generalist = inputs[f"generalist/s{seed}"]["out"]
        model, _, _ = load_checkpoint(out / generalist, device=dev)
        clusters = sp.cluster_from_generalist(model, x_val.to(dev), ClusterConfig(sc.specialists, sc.max_classes,
                                                                                  cluster_seed=seed))
        result: dict[str, Any] = {"subsets": clusters.subsets, "coverage": clusters.coverage_counts(),
                                  "generalist": generalist}
        if data.coarse_of_class:  # the check that clusters group confusable classes: CIFAR-100's 20 superclasses
            result.update(sp.superclass_agreement(clusters, data.coarse_of_class, seed=seed))
        sp.save_clusters(out / "clusters" / f"s{seed}.json", clusters.subsets, data.num_classes, data.class_names,
                         {k: v for k, v in result.items() if k not in ("subsets", "generalist")})
        np.save(out / "clusters" / f"s{seed}-covariance.npy", clusters.covariance)
        if seed == 0:
            sp.plot_clusters(clusters, out / "clusters.png")
        return result
    if stage.kind == "specialist":
        cluster = inputs[f"cluster/s{seed}"]
        soft = p["variant"] == "soft"
        task = sp.SpecialistTask(
            data=source(p["data_dir"]), generalist=str(out / cluster["generalist"]),
            subset=tuple(cluster["subsets"][p["m"]]), name=stage.name,
            out=str(_specialist_dir(out, seed, p["m"], p["variant"])),
            config=_scaled(SPECIALIST, sc, sc.specialist_epochs, seed * 1000 + p["m"], device,
                           SPECIALIST.batch_size),
            specialist=SpecialistConfig(soft_weight=sc.soft_weight if soft else 0.0,
                                        temperature=sc.soft_temperature, views=sc.views),
            val_size=sc.val_size, limit=sc.train_limit, cache_dir=str(out / "cache"), progress=progress)
        return {**sp.specialist_task(task), "out": relative_to(out, task.out)}
    if stage.kind == "combine":
        return _combine(out, inputs[f"generalist/s{seed}"]["out"], [r["out"] for r in _specialist_results(inputs)],
                        sc, data, x_val, y_val, p["variant"], dev)
    if stage.kind == "distilled_back":  # an ordinary distillation, from the combination as the teacher
        combined = inputs[f"combine/s{seed}"]
        teacher = sp.CombinedTeacher.from_checkpoints(out / combined["generalist"],
                                                      [out / c for c in combined["specialist_checkpoints"]],
                                                      combined["top_n"], device=dev, cache_dir=out / "cache")
        cfg = _scaled(DISTILLED, sc, sc.distill_epochs, seed, device)
        r = distill(stage.name, data, teacher, cfg, DISTILL, TransferConfig(view_bank=sc.views),
                    out=out / "models" / f"distilled-back-s{seed}", resume=True, progress=progress)
        _, bank = student_bank(data.x_train, cfg, TransferConfig(view_bank=sc.views))
        q = teacher.bank_probs(data.x_train.to(dev), bank)  # cached: what the student learnt from
        return {"test_errors": r.test["errors"], "test_size": r.test["test_size"], "accuracy": r.test["accuracy"],
                "epochs": len(r.history), "seconds": round(r.seconds, 2), "temperature": DISTILL.temperature,
                "views": sc.views, "targets_seconds": round(teacher.cache.compute_seconds, 2),  # 0 when read from the cache
                "targets_from_cache": teacher.cache.misses == 0,
                "train_combined_accuracy": float((q.argmax(1).cpu() == data.y_train.repeat(sc.views)).float().mean())}
    raise DKError(f"unknown stage kind {stage.kind!r}")


def _combine(out: Path, generalist: str, specialists: list[str], sc: Scale, data, x_val, y_val, variant: str,
             dev) -> dict[str, Any]:
    """The combination on the test set, top_n chosen on validation; ``generalist`` and ``specialists`` are
    checkpoint paths relative to ``out`` (and recorded so for the distilled-back stage)."""
    gen, _, _ = load_checkpoint(out / generalist, device=dev)
    specs = [sp.load_specialist(out / d, device=dev) for d in specialists]
    subsets = [s for _, s, _ in specs]
    # top_n (how many of the generalist's classes wake specialists) chosen on the validation split.
    x_val, y_val = x_val.to(dev), y_val.to(dev)
    pv = _probs(gen, x_val)
    val_probs = [sp.specialist_probs(model, x_val, off) for model, _, off in specs]
    val_acc = {n: float((sp.combine(pv, val_probs, subsets, n).argmax(1) == y_val).float().mean())
               for n in sc.top_n}
    top_n = max(sc.top_n, key=lambda n: (val_acc[n], -n))
    x_test, y_test = data.x_test.to(dev), data.y_test.to(dev)
    pg = _probs(gen, x_test)
    t0 = time.perf_counter()
    active = sp.active_specialists(pg, subsets, top_n)
    probs = sp.active_probs(specs, x_test, active)
    t1 = time.perf_counter()
    q, iterations = sp.combine(pg, probs, subsets, top_n, return_iterations=True)  # timed alone
    combine_seconds = time.perf_counter() - t1
    infer = time.perf_counter() - t0
    result = sp.evaluate(pg, q, y_test, subsets)
    result.update(variant=variant, active_per_example=float(active.sum(1).float().mean()),
                  combine_examples_per_second=round(len(x_test) / combine_seconds, 1),
                  combine_iterations=iterations, inference_seconds=round(infer, 2),
                  specialists=len(specs), top_n=top_n, val_accuracy_by_top_n={str(k): v for k, v in val_acc.items()},
                  val_generalist_accuracy=float((pv.argmax(1) == y_val).float().mean()),
                  generalist=generalist, specialist_checkpoints=specialists)
    return result


# ---- results --------------------------------------------------------------------------------------------

def _row(experiment: str, metric: str, paper: float | None, values: list[float], expected: int,
         seconds: float | None = None, note: str = "", failed: dict[str, str] | None = None) -> dict[str, Any]:
    return values_row(experiment, metric, paper, values, expected, seconds=seconds, note=note, failed=failed,
                      digits=4)


def summarise(stages: list[Stage], records: dict[str, dict[str, Any]], sc: Scale, seeds: int) -> dict[str, Any]:
    """The CIFAR-100 part of ``results.json`` (see ``experiments.report``) from the stage records so far."""
    done = {s.name: records[s.name]["result"] for s in stages if records[s.name]["status"] == DONE}
    errors = {s.name: records[s.name]["error"] for s in stages if records[s.name]["status"] == FAILED}
    secs = {s.name: records[s.name].get("seconds", 0.0) for s in stages}

    def per_seed(prefix: str, value: Callable[[dict], float], n: int = seeds) -> tuple[list[float], float | None, dict]:
        names = [f"{prefix}/s{s}" for s in range(n)]
        vals = [value(done[k]) for k in names if k in done]
        spent = [secs[k] for k in names if k in done]
        return vals, (float(np.mean(spent)) if spent else None), {k: errors[k] for k in names if k in errors}

    rows = []
    g, gs, ge = per_seed("generalist", lambda r: 100 * r["accuracy"])
    rows.append(_row("generalist", "test_accuracy_percent", PAPER_OVERALL[0], g, seeds, gs, failed=ge))
    c, cs, ce = per_seed("combine", lambda r: 100 * r["combined_accuracy"])
    rows.append(_row("combined", "test_accuracy_percent", PAPER_OVERALL[1], c, seeds, cs, failed=ce,
                     note=f"generalist + {sc.specialists} specialists, top_n chosen on validation among {list(sc.top_n)}"))
    gain, _, _ = per_seed("combine", lambda r: 100 * (r["combined_accuracy"] - r["generalist_accuracy"]))
    rows.append(_row("combined_gain_points", "accuracy_points", round(PAPER_OVERALL[1] - PAPER_OVERALL[0], 2),
                     gain, seeds, note="combined - generalist, per seed"))
    rel, _, _ = per_seed("combine", lambda r: 100 * (r["combined_accuracy"] - r["generalist_accuracy"])
                         / r["generalist_accuracy"])
    rows.append(_row("combined_relative_gain_percent", "relative_gain_percent", 4.4, rel, seeds))
    if sc.distill_epochs:
        d, ds, de = per_seed("distilled-back", lambda r: 100 * r["accuracy"])
        rows.append(_row("distilled_back", "test_accuracy_percent", None, d, seeds, ds, failed=de,
                         note="one net of the generalist's size, trained from scratch on the combination's soft targets"))
        pairs = [(done[f"distilled-back/s{s}"]["accuracy"], done[f"generalist/s{s}"]["accuracy"]) for s in range(seeds)
                 if f"distilled-back/s{s}" in done and f"generalist/s{s}" in done]
        rows.append(_row("distilled_back_gain_points", "accuracy_points", None, [100 * (a - b) for a, b in pairs],
                         seeds, note="distilled back - generalist, per seed"))
    # Table 4: by how many specialists cover the true class, pooled over seeds (each has its own clusters).
    table4 = sp.pool_coverage([done[f"combine/s{s}"]["covered_by"] for s in range(seeds) if f"combine/s{s}" in done])
    for t in table4:
        gains = t.pop("seed_gains")
        if not gains:  # no seed's generalist gets one of these right: no relative gain (table 4 still shows them)
            continue
        rows.append(_row(f"covered_by_{t['k']}", "relative_gain_percent", PAPER_TABLE4.get(min(t["k"], 6)),
                         gains, t["seeds"],
                         note=f"test examples whose true class {t['k']} specialists cover (seeds that have such "
                              "classes)"))
    soft = {}
    for s in range(min(sc.soft_seeds, seeds)):
        hard, sft = done.get(f"combine/s{s}"), done.get(f"combine-soft/s{s}")
        if hard and sft:
            soft[f"s{s}"] = {"hard_combined": 100 * hard["combined_accuracy"], "soft_combined": 100 * sft["combined_accuracy"],
                             "hard_specialists": [done[f"specialist/s{s}/m{m}"]["special_test_accuracy"]
                                                  for m in range(sc.specialists) if f"specialist/s{s}/m{m}" in done],
                             "soft_specialists": [done[f"specialist-soft/s{s}/m{m}"]["special_test_accuracy"]
                                                  for m in range(sc.specialists) if f"specialist-soft/s{s}/m{m}" in done]}
    if soft:
        diffs = [v["soft_combined"] - v["hard_combined"] for v in soft.values()]
        rows.append(_row("soft_targets_for_specialists_gain_points", "accuracy_points", None, diffs, len(soft),
                         note="section 6.1: combined accuracy with specialists trained with the generalist's soft "
                              "targets minus without"))
    clusters = {f"s{s}": {k: v for k, v in done[f"cluster/s{s}"].items() if k != "generalist"}
                for s in range(seeds) if f"cluster/s{s}" in done}
    ari = [v["ari_superclasses"] for v in clusters.values() if "ari_superclasses" in v]
    if ari:
        rows.append(_row("clusters_ari_superclasses", "adjusted_rand_index", None, ari, seeds,
                         note="MiniBatchKMeans of the generalist's prediction correlations into 20 clusters vs "
                              "CIFAR-100's 20 superclasses (0: chance, 1: identical)"))
    speed = [done[f"combine/s{s}"]["combine_examples_per_second"] for s in range(seeds) if f"combine/s{s}" in done]
    if speed:
        rows.append(_row("combine_examples_per_second", "examples_per_second", None, speed, seeds,
                         note=f"specialists.combine on the test set, {sc.specialists} specialists, 100 classes"))
    # The distilled-back student's teacher (the combination) against its hard-label baseline (the generalist),
    # on the validation split neither trained on (top_n was chosen there too, which favours the combination a little).
    combined = [done[f"combine/s{s}"] for s in range(seeds) if f"combine/s{s}" in done]
    val_errors = lambda acc: round(sc.val_size * (1 - acc))  # noqa: E731
    check = paired_check("generalist + specialists", "generalist", "validation",
                         [val_errors(c["val_accuracy_by_top_n"][str(c["top_n"])]) for c in combined],
                         [val_errors(c["val_generalist_accuracy"]) for c in combined], sc.val_size, "combined",
                         "top_n is chosen on this validation split too, which favours the combination a little")
    return {"rows": rows, "table4": table4, "soft_targets_option": soft, "clusters": clusters,
            "teacher_check": [check] if check else [],
            "combine": {s: {k: done[s][k] for k in ("combine_examples_per_second", "combine_iterations",
                                                     "active_per_example", "inference_seconds", "specialists",
                                                     "top_n") if k in done[s]}
                        for s in done if s.startswith("combine")}}


def preface(results: dict[str, Any]) -> list[str]:
    sc = results["scale_config"]
    return [f"{sc['arch']} generalist ({sc['generalist_epochs']} epochs), {sc['specialists']} specialists of at most "
            f"{sc['max_classes']} classes ({sc['specialist_epochs']} epochs each), top_n chosen on validation among "
            f"{sc['top_n']}.", "",
            "The paper's column is its speech numbers (JFT/speech frames): other data and nets.", ""]


def markdown(results: dict[str, Any]) -> list[str]:
    """The sections after the rows: table 4, the clusters, the section-6.1 option, timings, the combination."""
    lines: list[str] = []
    if results["table4"]:
        lines += ["", "Table 4 (as the paper's): test examples by how many specialists cover their true class, "
                  "pooled over seeds (each seed has its own clusters).", "",
                  "| specialists covering | test examples (all seeds) | generalist accuracy % | combined accuracy % | "
                  "relative gain % | paper relative gain % |", "|---|---|---|---|---|---|"]
        for t in results["table4"]:
            paper = PAPER_TABLE4.get(min(t["k"], 6))
            gain = "" if t["relative_gain_percent"] is None else f"{t['relative_gain_percent']:+.1f}"
            lines.append(f"| {t['k']} | {t['examples']} | {t['generalist_accuracy']:.2f} | "
                         f"{t['combined_accuracy']:.2f} | {gain} | {paper} |")
    for seed, c in results["clusters"].items():
        lines += ["", f"Clusters ({seed}): coverage of the 100 classes by 0, 1, 2, ... specialists: {c['coverage']}"
                  + (f"; pairs within a subset of one superclass {100 * c['same_superclass_pairs']:.0f}% "
                     f"(chance {100 * c['same_superclass_chance']:.0f}%), ARI of a 20-cluster partition vs the "
                     f"superclasses {c['ari_superclasses']:.2f}" if "ari_superclasses" in c else "")]
        break
    if results["soft_targets_option"]:
        for seed, v in results["soft_targets_option"].items():
            lines += ["", f"Section 6.1 option ({seed}): specialists trained with the generalist's soft targets give "
                      f"a combined accuracy of {v['soft_combined']:.2f}% vs {v['hard_combined']:.2f}% without."]
    spent: dict[str, list[float]] = {}
    for st in results["stages"]:
        if st["status"] == DONE:
            spent.setdefault(st["stage"].split("/")[0], []).append(st["seconds"])
    if spent:
        lines += ["", "Timings (stage seconds, summed over seeds; stages ran "
                  f"{results.get('workers', 1)} at a time): " + ", ".join(
                      f"{k} {sum(v):.0f} s ({len(v)} stages)" for k, v in spent.items()) + "."]
    for key, c in results["combine"].items():
        lines += ["", f"`combine` ({key}): {c['combine_examples_per_second']:,.0f} test examples/s, "
                  f"{c['combine_iterations']} iterations, {c['active_per_example']:.2f} active specialists per "
                  f"example at top_n {c['top_n']}."]
        break
    lines += ["", "Plot: `clusters.png`, the generalist's prediction correlations reordered by specialist subset (seed 0)."]
    return lines


EXPERIMENT = Experiment(
    name="cifar100", title="CIFAR-100 reproduction of paper section 5: specialists", scales=SCALES,
    check_data=_check_data, stages=build_stages, run_stage=run_stage, summarise=summarise, markdown=markdown,
    plots=lambda results, out: [], precision=GENERALIST.precision, preface=preface,
    configs=lambda sc: {"generalist": GENERALIST, "specialist": SPECIALIST, "distilled": DISTILLED,
                        "distill": DISTILL})
