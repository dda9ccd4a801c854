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

import dataclasses
import shutil
import time
from dataclasses import dataclass, replace
from importlib.resources import files
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save

from darkknowledge.checkpoint import atomic_write_bytes, atomic_write_json, load_checkpoint
from darkknowledge.config import DistillConfig, TrainConfig, build_configs, load_yaml
from darkknowledge.data import apply_views, background_value, bank_codes, pad_for_jitter
from darkknowledge.ensembles import load_split, member_task
from darkknowledge.errors import DKError
from darkknowledge.experiments.mnist import prepare_out
from darkknowledge.experiments.report import check_run, fmt_measured, run_reproduction, git_commit, hardware, mean_std, save_figure, stage_table
from darkknowledge.experiments.runner import DONE, FAILED, PENDING, Stage
from darkknowledge import specialists as sp
from darkknowledge.teachers import Teacher, predict_logits
from darkknowledge.training import SoftTargets, resolve_device, resolve_precision
from darkknowledge.workflows import fit_and_evaluate

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
    val_size: int = 5000
    train_limit: int = 0
    default_seeds: int = 3
    soft_seeds: int = 1  # seeds whose specialists are also trained with the generalist's soft targets
    soft_weight: float = 1.0
    soft_temperature: float = 2.0
    top_n: tuple[int, ...] = (1, 2, 3)  # chosen on the validation split


SCALES: dict[str, Scale] = {
    # About 75 minutes on a 2-core AVX2 EPYC (fp32; resnet-s-w8 trains ~1,250 CIFAR images/s there).
    "full": Scale(generalist_epochs=12, specialists=12, max_classes=10, specialist_epochs=5, distill_epochs=12,
                  views=2, arch="resnet-s-w8"),
    # Under 30 minutes there (3 seeds, --workers 2): short generalists and students, 10 specialists of 3 epochs,
    # no section-6.1 variant.
    "quick": Scale(generalist_epochs=4, specialists=10, max_classes=10, specialist_epochs=3, distill_epochs=4,
                   views=2, arch="resnet-s-w8", soft_seeds=0),
    # Seconds: every stage and the results contract on 2,400 images.
    "smoke": Scale(generalist_epochs=1, specialists=3, max_classes=8, specialist_epochs=1, distill_epochs=1,
                   views=2, arch="resnet-s-w4", val_size=600, train_limit=2400, default_seeds=1),
}
EVALS = 3  # test evaluations per generalist / student run


def _recipe(name: str, classes: tuple[type, ...] = (TrainConfig,)) -> dict[type, Any]:
    path = Path(str(files("darkknowledge.recipes.cifar100") / f"{name}.yaml"))
    return build_configs(classes, load_yaml(path), f"recipe {path.name}")


GENERALIST = _recipe("generalist")[TrainConfig]
SPECIALIST = _recipe("specialist")[TrainConfig]
_distilled = _recipe("distilled", (TrainConfig, DistillConfig))
DISTILLED, DISTILL = _distilled[TrainConfig], _distilled[DistillConfig]


def source(data_dir: str | Path) -> str:
    return f"cifar100:{data_dir}"


def _scaled(cfg: TrainConfig, sc: Scale, epochs: int, seed: int, device: str) -> TrainConfig:
    return replace(cfg, epochs=epochs, seed=seed, device=device, arch=sc.arch, eval_every=max(1, epochs // EVALS))


def _split(data_dir: str, sc: Scale):
    return load_split(source(data_dir), sc.val_size, sc.train_limit)


# ---- stages ---------------------------------------------------------------------------------------------

def build_stages(scale_name: str, seeds: int, ctx: dict[str, Any]) -> list[Stage]:
    sc = SCALES[scale_name]
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
            stages.append(Stage(f"combine{tag}/s{s}", "combine", {**p, "variant": variant}, names,
                                0.05 + (sc.views * n / 3e5 if variant == "hard" and sc.distill_epochs else 0)))
        if sc.distill_epochs:
            stages.append(Stage(f"distilled-back/s{s}", "distilled_back", p, (f"combine/s{s}",),
                                sc.distill_epochs * n / 1e5))
    return stages


def _generalist_dir(out: Path, seed: int) -> Path:
    return out / "generalists" / f"generalist{seed}"


def _clusters_path(out: Path, seed: int) -> Path:
    return out / "clusters" / f"s{seed}.json"


def _specialist_dir(out: Path, seed: int, m: int, variant: str) -> Path:
    return out / "specialists" / f"s{seed}{'' if variant == 'hard' else '-soft'}" / f"m{m}"


def _probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.softmax(predict_logits(model, x), -1)


def run_stage(stage: Stage) -> dict[str, Any]:
    p = stage.params
    if p.get("threads"):
        torch.set_num_threads(p["threads"])
    sc, device, progress, out, seed = SCALES[p["scale"]], p["device"], p["progress"], Path(p["out"]), p["seed"]
    dev = resolve_device(device)
    data, (x_val, y_val) = _split(p["data_dir"], sc)
    gen_dir = _generalist_dir(out, seed)
    if stage.kind == "generalist":
        task = {"data": source(p["data_dir"]), "name": f"generalist{seed}", "progress": progress,
                "val_size": sc.val_size, "limit": sc.train_limit, "out": str(gen_dir),
                "config": dataclasses.asdict(_scaled(GENERALIST, sc, sc.generalist_epochs, seed, device))}
        result = member_task(task)
        model, _, _ = load_checkpoint(gen_dir, device=dev)
        val = _probs(model, x_val.to(dev))
        result["val_accuracy"] = float((val.argmax(1).cpu() == y_val).float().mean())
        return result
    if stage.kind == "cluster":
        return _cluster(out, seed, sc, data, x_val, y_val, dev)
    if stage.kind == "specialist":
        subsets, _ = sp.load_clusters(_clusters_path(out, seed))
        cfg = _scaled(SPECIALIST, sc, sc.specialist_epochs, seed * 1000 + p["m"], device)
        soft = p["variant"] == "soft"
        task = {"data": source(p["data_dir"]), "val_size": sc.val_size, "limit": sc.train_limit,
                "generalist": str(gen_dir), "subset": subsets[p["m"]], "name": stage.name,
                "out": str(_specialist_dir(out, seed, p["m"], p["variant"])), "config": dataclasses.asdict(cfg),
                "soft_weight": sc.soft_weight if soft else 0.0, "temperature": sc.soft_temperature,
                "views": sc.views, "cache_dir": str(out / "cache"), "progress": progress}
        return sp.specialist_task(task)
    if stage.kind == "combine":
        return _combine(out, seed, sc, data, x_val, y_val, p["variant"], dev)
    if stage.kind == "distilled_back":
        targets = load_file(out / "targets" / f"s{seed}.safetensors")
        codes = targets["codes"].to(dev)
        dcfg = DISTILL
        q = targets["combined"].to(dev)  # [V * N, C] combined distribution at T = 1
        soft = torch.softmax(q.clamp_min(1e-30).log() / dcfg.temperature, -1)
        y = data.y_train.to(dev)
        objective = SoftTargets(soft, y.repeat(len(codes)), dcfg, bank_codes=codes)
        cfg = _scaled(DISTILLED, sc, sc.distill_epochs, seed, device)
        r = fit_and_evaluate(stage.name, data, data.x_train, objective, cfg, out / "models" / f"distilled-back-s{seed}",
                             resume=True, progress=progress, meta={"distill_config": dataclasses.asdict(dcfg),
                                                                    "targets_sha": targets_digest(targets)})
        return {"test_errors": r.test["errors"], "test_size": r.test["test_size"], "accuracy": r.test["accuracy"],
                "epochs": len(r.history), "seconds": round(r.seconds, 2), "temperature": dcfg.temperature,
                "views": len(codes)}
    raise DKError(f"unknown stage kind {stage.kind!r}")


def targets_digest(targets: dict[str, torch.Tensor]) -> str:
    from darkknowledge.teachers import tensor_digest

    return tensor_digest(targets["combined"], targets["codes"])


def _cluster(out: Path, seed: int, sc: Scale, data, x_val, y_val, dev) -> dict[str, Any]:
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_rand_score

    model, _, _ = load_checkpoint(_generalist_dir(out, seed), device=dev)
    probs = _probs(model, x_val.to(dev)).cpu()
    cov = sp.prediction_covariance(probs)
    subsets = sp.cluster_classes(cov, sc.specialists, sc.max_classes, seed=seed)
    c = data.num_classes
    result: dict[str, Any] = {"subsets": subsets, "coverage": np.bincount(sp.coverage(subsets, c)).tolist()}
    if data.coarse_of_class:  # the check that clusters group confusable classes: CIFAR-100's 20 superclasses
        coarse = np.array(data.coarse_of_class)
        k = len(set(coarse.tolist()))
        labels = MiniBatchKMeans(k, random_state=seed, n_init=10, batch_size=256).fit_predict(sp._correlation(cov))
        same = [coarse[a] == coarse[b] for s in subsets for i, a in enumerate(s) for b in s[i + 1:]]
        chance = sum((coarse == g).sum() * ((coarse == g).sum() - 1) for g in range(k)) / (c * (c - 1))
        result.update(ari_superclasses=float(adjusted_rand_score(coarse, labels)), partition_clusters=k,
                      same_superclass_pairs=float(np.mean(same)), same_superclass_chance=float(chance))
    sp.save_clusters(_clusters_path(out, seed), subsets, c, data.class_names,
                     {k: v for k, v in result.items() if k not in ("subsets",)})
    np.save(out / "clusters" / f"s{seed}-covariance.npy", cov)
    if seed == 0:
        plot_clusters(cov, subsets, out / "clusters.png", data.class_names)
    return result


def _specialists(out: Path, seed: int, sc: Scale, variant: str, dev) -> list[tuple]:
    return [sp.load_specialist(_specialist_dir(out, seed, m, variant), device=dev) for m in range(sc.specialists)]


def _combine(out: Path, seed: int, sc: Scale, data, x_val, y_val, variant: str, dev) -> dict[str, Any]:
    gen, gmeta, _ = load_checkpoint(_generalist_dir(out, seed), device=dev)
    specs = _specialists(out, seed, sc, variant, dev)
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
                  val_generalist_accuracy=float((pv.argmax(1) == y_val).float().mean()))
    if variant == "hard" and sc.distill_epochs:  # the distilled-back student's targets, on a bank of views
        t0 = time.perf_counter()
        x = data.x_train.to(dev)
        codes = bank_codes(len(x), sc.views, DISTILLED.jitter, DISTILLED.flip)
        teacher = Teacher([gen], archs=[gmeta["arch"]], cache_dir=out / "cache")
        glogits = teacher.bank_logits(x, codes, DISTILLED.jitter, DISTILLED.flip, background_value(x))[0]
        padded = pad_for_jitter(x, DISTILLED.jitter, background_value(x))
        combined = []
        for v in range(len(codes)):
            idx = torch.arange(len(x), device=dev)
            views = apply_views(padded, idx, codes[v].to(dev), DISTILLED.jitter, DISTILLED.flip)
            qv, _ = sp.combined_probs(torch.softmax(glogits[v], -1), specs, views, top_n)
            combined.append(qv.float())
        combined = torch.cat(combined)
        blob = {"combined": combined.cpu().contiguous(), "codes": codes.cpu().contiguous()}
        (out / "targets").mkdir(exist_ok=True)
        atomic_write_bytes(out / "targets" / f"s{seed}.safetensors", save(blob))
        result["targets_seconds"] = round(time.perf_counter() - t0, 2)
        result["train_combined_accuracy"] = float((combined.argmax(1).cpu() ==
                                                   data.y_train.repeat(len(codes))).float().mean())
    return result


# ---- results --------------------------------------------------------------------------------------------

def _row(experiment: str, metric: str, paper: float | None, values: list[float], expected: int,
         seconds: float | None = None, note: str = "", failed: dict[str, str] | None = None) -> dict[str, Any]:
    mean, std = mean_std(values)
    status = FAILED if failed else DONE if len(values) == expected else "partial" if values else PENDING
    row = {"experiment": experiment, "metric": metric, "paper": paper,
           "mean": round(mean, 3) if values else None, "std": round(std, 3) if values else None,
           "seeds": len(values), "values": [round(v, 4) for v in values], "status": status,
           "seconds": round(seconds, 2) if seconds is not None else None}
    if note:
        row["note"] = note
    if failed:
        row["errors"] = failed
    return row


def summarise(stages: list[Stage], records: dict[str, dict[str, Any]], scale_name: str, seeds: int,
              device: torch.device, wall_seconds: float) -> dict[str, Any]:
    sc = SCALES[scale_name]
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
    # Table 4: by how many specialists cover the true class, pooled per seed.
    kmax = max((row["k"] for s in range(seeds) if f"combine/s{s}" in done
                for row in done[f"combine/s{s}"]["covered_by"]), default=-1)
    table4 = []
    for k in range(kmax + 1):
        vals, n, g, q = [], 0, 0, 0
        for s in range(seeds):
            r = done.get(f"combine/s{s}")
            row = next((x for x in r["covered_by"] if x["k"] == k), None) if r else None
            if row:
                n, g, q = n + row["examples"], g + row["generalist_correct"], q + row["combined_correct"]
                if row["relative_gain_percent"] is not None:
                    vals.append(row["relative_gain_percent"])
        if n:
            rows.append(_row(f"covered_by_{k}", "relative_gain_percent", PAPER_TABLE4.get(min(k, 6)), vals, len(vals),
                             note=f"test examples whose true class {k} specialists cover (seeds that have such "
                                  "classes)"))
            table4.append({"k": k, "examples": n, "seeds": len(vals), "generalist_accuracy": 100 * g / n,
                           "combined_accuracy": 100 * q / n, "relative_gain_percent": 100 * (q - g) / g if g else None})
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
    clusters = {f"s{s}": {k: v for k, v in done[f"cluster/s{s}"].items()}
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
    stage_rows = stage_table(stages, records)
    return {"experiment": "cifar100", "hardware": hardware(device), "commit": git_commit(), "scale": scale_name,
            "scale_config": dataclasses.asdict(sc), "device": str(device), "torch": torch.__version__,
            "precision": resolve_precision(GENERALIST.precision, device), "seeds": list(range(seeds)),
            "wall_seconds": round(wall_seconds, 1), "total_seconds": round(sum(r["seconds"] for r in stage_rows), 1),
            "stages_done": sum(r["status"] == DONE for r in stage_rows), "stages_total": len(stage_rows),
            "rows": rows, "table4": table4, "soft_targets_option": soft, "clusters": clusters,
            "combine": {s: {k: done[s][k] for k in ("combine_examples_per_second", "combine_iterations",
                                                     "active_per_example", "inference_seconds", "specialists",
                                                     "top_n") if k in done[s]}
                        for s in done if s.startswith("combine")},
            "stages": stage_rows,
            "configs": {"generalist": dataclasses.asdict(GENERALIST), "specialist": dataclasses.asdict(SPECIALIST),
                        "distilled": dataclasses.asdict(DISTILLED), "distill": dataclasses.asdict(DISTILL)}}


def markdown(results: dict[str, Any]) -> str:
    sc = results["scale_config"]
    lines = [f"# CIFAR-100 reproduction of paper section 5: specialists ({results['scale']} scale)", "",
             f"Hardware: {results['hardware']}; precision {results['precision']}; seeds {results['seeds']}; "
             f"commit {results['commit'][:12]}; {results['stages_done']}/{results['stages_total']} stages done, "
             f"{results['total_seconds']:.0f} s of stages, {results['wall_seconds']:.0f} s wall. "
             f"{sc['arch']} generalist ({sc['generalist_epochs']} epochs), {sc['specialists']} specialists of at most "
             f"{sc['max_classes']} classes ({sc['specialist_epochs']} epochs each), top_n chosen on validation among "
             f"{sc['top_n']}.", "",
             "The paper's column is its speech numbers (JFT/speech frames): other data and nets.", "",
             "| experiment | metric | paper | measured (mean ± std) | per seed | seconds |", "|---|---|---|---|---|---|"]
    for r in results["rows"]:
        per_seed = ", ".join(f"{v:.4g}" for v in r["values"])
        paper = "" if r["paper"] is None else r["paper"]
        lines.append(f"| {r['experiment']} | {r['metric']} | {paper} | {fmt_measured(r)} | {per_seed} | "
                     f"{r['seconds'] if r['seconds'] is not None else ''} |")
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
    failed = [s for s in results["stages"] if s["status"] == FAILED]
    if failed:
        lines += ["", "Failed stages:", ""] + [f"- `{s['stage']}`: {s['error']}" for s in failed]
    return "\n".join(lines) + "\n"


def plot_clusters(cov: np.ndarray, subsets: list[list[int]], path: Path, names=()) -> Path:
    """The covariance matrix (as correlations) with classes reordered so that each subset is contiguous."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order: list[int] = []
    for s in subsets:
        order += [k for k in s if k not in order]
    order += [k for k in range(len(cov)) if k not in order]
    corr = sp._correlation(cov)[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(7.5, 7))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-0.3, vmax=0.3)
    start = 0
    seen: set[int] = set()
    for s in subsets:
        new = [k for k in s if k not in seen]
        seen.update(s)
        if new:
            ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), len(new), len(new), fill=False, lw=1, ec="k"))
            start += len(new)
    ax.set(title="Generalist's prediction correlations on the validation split,\n"
                 "classes reordered by specialist subset (boxes)", xlabel="class", ylabel="class")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


MANIFEST = "reproduction.json"


def reproduce(data_dir: str | Path, out: str | Path, scale: str = "full", seeds: int | None = None,
              device: str = "cpu", progress: bool = True, workers: int = 1, resume: bool = False,
              overwrite: bool = False, executor: str = "local", address: str | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every CIFAR-100 stage; ``results.json`` and ``results.md`` are rewritten after each."""
    sc, seeds = check_run(SCALES, scale, seeds, workers)
    dev = resolve_device(device)
    data, _ = _split(str(data_dir), sc)  # fail fast on bad data, before anything is written
    if data.num_classes != 100:
        raise DKError(f"{data_dir} does not hold CIFAR-100 ({data.num_classes} classes)")
    out = Path(out)
    prepare_out(out, scale, resume, overwrite)
    if not resume:
        for sub in ("generalists", "specialists", "clusters", "targets"):
            shutil.rmtree(out / sub, ignore_errors=True)
    (out / "clusters").mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / MANIFEST, {"scale": scale, "seeds": seeds, "data_dir": str(data_dir),
                                       "device": str(dev), "commit": git_commit(), "executor": executor})
    threads = max(1, torch.get_num_threads() // workers) if workers > 1 else 0
    ctx = {"data_dir": str(data_dir), "scale": scale, "device": str(dev), "out": str(out),
           "progress": progress and workers == 1 and executor == "local", "threads": threads}
    stages = build_stages(scale, seeds, ctx)

    def write(results: dict[str, Any]) -> None:
        atomic_write_json(out / "results.json", results)
        atomic_write_bytes(out / "results.md", markdown(results).encode())

    return run_reproduction(stages, run_stage, out,
                            lambda records, wall: summarise(stages, records, scale, seeds, dev, wall), write, resume=resume, workers=workers, progress=progress, log=log, executor=executor,
                            address=address)
