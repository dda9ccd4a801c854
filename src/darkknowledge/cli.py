"""The ``dk`` command line: demo, train, distill, evaluate, specialists, reproduce, export, archs.

Every command takes an optional YAML recipe (``--config``) and flags; flags override the recipe,
which overrides the dataclass defaults in ``darkknowledge.config``. Bad input ends in one line on
stderr and exit status 2; an interrupted training run keeps its last completed epoch (exit 130).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import typing
from pathlib import Path
from typing import Any, Sequence

from darkknowledge.config import (
    ClusterConfig,
    DistillConfig,
    RunConfig,
    SpecialistConfig,
    TeacherConfig,
    TrainConfig,
    TransferConfig,
    build_configs,
    config_fields,
    load_yaml,
    recipe_path,
)
from darkknowledge.device import DEFAULT_DEVICE
from darkknowledge.errors import INTERRUPTED, DKError

COMMAND_CONFIGS: dict[str, tuple[type, ...]] = {
    "train": (TrainConfig, RunConfig),
    "distill": (TrainConfig, DistillConfig, TeacherConfig, TransferConfig, RunConfig),
}


def add_config_flags(parser: argparse.ArgumentParser, classes: Sequence[type]) -> None:
    """One flag per dataclass field (``snake_case`` -> ``--kebab-case``); absent flags stay absent."""
    for cls in classes:
        group = parser.add_argument_group(cls.__name__)
        for name, (f, ann) in config_fields(cls).items():
            flag = f.metadata.get("flag", "--" + name.replace("_", "-"))
            kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS,
                                      help=f"{f.metadata.get('help', '')} (default: {f.default!r})")
            if ann is bool:
                kw["action"] = argparse.BooleanOptionalAction
            elif typing.get_origin(ann) is tuple:
                item = typing.get_args(ann)[0]
                kw.update(type=item, **({"action": "append"} if "flag" in f.metadata else {"nargs": "+"}))
            else:
                kw["type"] = ann
            group.add_argument(flag, **kw)


def resolve(args: argparse.Namespace, classes: tuple[type, ...]) -> dict[type, Any]:
    """Defaults <- recipe (``--config``) <- flags, validated by the dataclasses."""
    overrides: dict[str, Any] = load_yaml(args.config) if args.config else {}
    source = f"recipe {args.config}" if args.config else "flags"
    names = {n for cls in classes for n in config_fields(cls)}
    overrides.update({k: v for k, v in vars(args).items() if k in names})
    return build_configs(classes, overrides, source)


def print_table(rows: list[dict[str, Any]], columns: Sequence[str], file=None) -> None:
    """A plain fixed-width table: the short summary every long command ends with (on ``file``, default stdout)."""
    file = file if file is not None else sys.stdout  # looked up now: a redirected stdout is honoured
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)), file=file)
    print("  ".join("-" * w for w in widths), file=file)
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)), file=file)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if (out / "model.json").exists() and not (resume or overwrite):
        raise DKError(f"{out} already holds a checkpoint; pass --resume to continue it, "
                      "--overwrite to replace it, or choose another --out")


def _result_row(r) -> dict[str, Any]:
    return {"model": r.name, "test_errors": r.test["errors"], "test_size": r.test["test_size"],
            "accuracy_%": round(100 * r.test["accuracy"], 2), "transfer_size": r.transfer_size,
            "seconds": round(r.seconds, 1)}


def _write_summary(out: Path, results: list, extra: dict[str, Any] | None = None) -> Path:
    from darkknowledge.checkpoint import atomic_write_json

    path = out / "summary.json"
    atomic_write_json(path, {**(extra or {}), "results": [{**_result_row(r), "per_class_errors":
                                                          r.test["per_class_errors"]} for r in results]})
    return path


COLUMNS = ("model", "test_errors", "test_size", "accuracy_%", "transfer_size", "seconds")


def cmd_train(args: argparse.Namespace) -> int:
    from darkknowledge.data import load_split
    from darkknowledge.workflows import train

    cfgs = resolve(args, COMMAND_CONFIGS["train"])
    cfg, run = cfgs[TrainConfig], cfgs[RunConfig]
    out = Path(run.out)
    if args.members > 1 or args.executor != "local":
        return _train_members(args, cfg, run)
    _check_out(out, args.resume, args.overwrite)
    data, _ = load_split(run.data, run.val_size)
    result = train(cfg.arch, data, cfg, out=out, resume=args.resume, progress=not args.no_progress,
                   meta={"val_size": run.val_size}, tensorboard=run.tensorboard or None)
    print_table([_result_row(result)], COLUMNS)
    print(f"checkpoint: {out}  summary: {_write_summary(out, [result], {'command': 'train'})}")
    return 0


def _train_members(args: argparse.Namespace, cfg: TrainConfig, run: RunConfig) -> int:
    """``dk train --members N``: an ensemble of N seeds (cfg.seed onwards) in OUT/member0..N-1."""
    from darkknowledge.data import load_split
    from darkknowledge.ensembles import evaluate_ensemble, train_members
    from darkknowledge.teachers import Teacher
    from darkknowledge.device import resolve_device

    out = Path(run.out)
    if args.members < 1:
        raise DKError(f"--members must be >= 1, got {args.members}")
    for i in range(args.members):
        _check_out(out / f"member{i}", args.resume, args.overwrite)
    data, _ = load_split(run.data, run.val_size)  # fail fast on bad data, before any member starts
    if run.tensorboard:
        from darkknowledge.logs import check_available

        check_available()
    outcomes = train_members(run.data, cfg, args.members, out, executor=args.executor, workers=args.workers,
                             address=args.address, val_size=run.val_size, progress=not args.no_progress,
                             tensorboard=run.tensorboard,
                             log=lambda m: print(m, file=sys.stderr))
    rows = [{"model": f"member{i}", "seed": cfg.seed + i,
             **({"test_errors": o.value["test_errors"], "test_size": o.value["test_size"],
                 "accuracy_%": round(100 * o.value["accuracy"], 2)} if o.ok else {"test_errors": "failed"}),
             "seconds": round(o.seconds, 1)} for i, o in enumerate(outcomes)]
    ok = [i for i, o in enumerate(outcomes) if o.ok]
    if len(ok) > 1:
        device = resolve_device(cfg.device)
        teacher = Teacher.from_checkpoints([out / f"member{i}" for i in ok], device=device)
        ens = evaluate_ensemble(teacher, data.x_test.to(device), data.y_test.to(device), data.num_classes)
        for method in ("arithmetic", "geometric"):
            rows.append({"model": f"ensemble ({method} mean)", "seed": "", "test_errors": ens[method],
                         "test_size": ens["test_size"], "accuracy_%": round(100 * (1 - ens[method] / ens["test_size"]), 2),
                         "seconds": ""})
    print_table(rows, ("model", "seed", "test_errors", "test_size", "accuracy_%", "seconds"))
    print(f"members: {out}/member0..{args.members - 1}  status: {out}/ensemble.json")
    failed = [f"member{i}: {o.error}" for i, o in enumerate(outcomes) if not o.ok]
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    return 0


def cmd_distill(args: argparse.Namespace) -> int:
    from darkknowledge.data import load_split
    from darkknowledge.teachers import Teacher
    from darkknowledge.device import resolve_device
    from darkknowledge.workflows import check_teacher, distill, unmatched_views

    cfgs = resolve(args, COMMAND_CONFIGS["distill"])
    cfg, dcfg, tch, tcfg, run = (cfgs[c] for c in COMMAND_CONFIGS["distill"])
    if not tch.teachers:
        raise DKError("distill needs at least one --teacher checkpoint")
    out = Path(run.out)
    _check_out(out, args.resume, args.overwrite)
    if run.val_size:
        _check_held_out(list(tch.teachers) + ([tch.baseline] if tch.baseline else []), run.val_size)
    data, val = load_split(run.data, run.val_size)
    device = resolve_device(cfg.device)
    teacher = Teacher.from_checkpoints(tch.teachers, tch.combine, device=device, cache_dir=run.cache_dir or None)
    teacher.check_fits(data)
    extra: dict[str, Any] = {"command": "distill"}
    if tch.baseline:
        from darkknowledge.checkpoint import load_checkpoint

        from darkknowledge.teachers import check_model_fits

        baseline, meta, _ = load_checkpoint(tch.baseline, device=device)
        check_model_fits(baseline, meta["num_classes"], data, "the baseline")
        x, y, split = (*val, "validation") if val is not None else (data.x_test, data.y_test, "test")
        check = check_teacher(teacher, baseline, x.to(device), y.to(device), split)
        extra["teacher_check"] = check
        print(f"teacher check ({split} split, {check['size']} images): teacher {check['teacher_errors'][0]} errors, "
              f"hard-label baseline {check['baseline_errors'][0]}", file=sys.stderr)
        if check["warning"]:
            print(f"warning: {check['warning']}", file=sys.stderr)
    if (unmatched := unmatched_views(cfg, tcfg)) is not None:
        print(f"warning: {unmatched}", file=sys.stderr)
    result = distill(f"distilled-{cfg.arch}", data, teacher, cfg, dcfg, tcfg, out=out, resume=args.resume,
                     progress=not args.no_progress, meta={"teachers": list(tch.teachers), "val_size": run.val_size},
                     tensorboard=run.tensorboard or None)
    print_table([_result_row(result)], COLUMNS)
    print(f"checkpoint: {out}  summary: {_write_summary(out, [result], extra)}")
    return 0


def _check_held_out(checkpoints: Sequence[str], val_size: int) -> None:
    """The validation split of ``val_size`` must be one every checkpoint was trained without."""
    from darkknowledge.checkpoint import read_meta

    for path in checkpoints:
        theirs = read_meta(path).get("val_size")
        if theirs != val_size:
            held = (f"was trained with --val-size {theirs}" if theirs else "was trained on every training image"
                    if theirs == 0 else "records no --val-size (dk train writes it; other trainers may not)")
            raise DKError(f"{path} {held}, so a validation split of {val_size} may hold images it learnt from: give "
                          f"the --val-size it was trained with")


def parse_bias_fix(items: Sequence[str]) -> dict[int, float]:
    """``["3=3.5", "7=-7.6"]`` -> ``{3: 3.5, 7: -7.6}``."""
    offsets = {}
    for item in items:
        cls, sep, val = item.partition("=")
        try:
            offsets[int(cls)] = float(val)
        except ValueError:
            raise DKError(f"--bias-fix takes CLASS=OFFSET (e.g. 3=3.5), got {item!r}") from None
        if not sep:
            raise DKError(f"--bias-fix takes CLASS=OFFSET (e.g. 3=3.5), got {item!r}")
    return offsets


def cmd_evaluate(args: argparse.Namespace) -> int:
    from darkknowledge.checkpoint import load_checkpoint
    from darkknowledge.data import load_data
    from darkknowledge.evaluation import bias_vector, evaluate

    offsets = parse_bias_fix(args.bias_fix or [])
    model, meta, _ = load_checkpoint(args.checkpoint)
    data = load_data(args.data)
    if meta["in_features"] != data.in_features or meta["num_classes"] != data.num_classes:
        raise DKError(f"checkpoint expects {meta['in_features']} inputs and {meta['num_classes']} classes; "
                      f"data {args.data!r} has {data.in_features} and {data.num_classes}")
    rows = [{"model": meta["arch"], "bias_fix": "none", **evaluate(model, data.x_test, data.y_test, data.num_classes)}]
    if offsets:
        bias = bias_vector(offsets, data.num_classes)
        rows.append({"model": meta["arch"], "bias_fix": " ".join(args.bias_fix),
                     **evaluate(model, data.x_test, data.y_test, data.num_classes, bias)})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print_table([{**r, "accuracy_%": round(100 * r["accuracy"], 2)} for r in rows],
                ("model", "bias_fix", "errors", "test_size", "accuracy_%"))
    print("per-class errors:")
    print_table([{"bias_fix": r["bias_fix"], **{str(c): e for c, e in enumerate(r["per_class_errors"])}} for r in rows],
                ("bias_fix", *map(str, range(data.num_classes))))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from darkknowledge.demo import run_demo

    summary = run_demo(Path(args.out), seed=args.seed, device=args.device, progress=not args.no_progress)
    print_table(summary["table"], ("model", "arch", "train_images", "test_errors", "test_size", "accuracy_%", "seconds"))
    print(f"distilled student {'beats' if summary['distilled_errors'] < summary['student_errors'] else 'does NOT beat'}"
          f" the hard-label student: {summary['distilled_errors']} vs {summary['student_errors']} errors "
          f"of {summary['test_size']}; total {summary['total_seconds']:.1f} s")
    if summary["teacher_check"]["warning"]:
        print(f"warning: {summary['teacher_check']['warning']}", file=sys.stderr)
    print(f"wrote {args.out}/summary.json and {args.out}/demo.png")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    scale = "quick" if args.quick else args.scale
    if not args.data_dir:
        what = {"mnist": "the canonical MNIST IDX files", "cifar10": "the CIFAR-10 pickles",
                "cifar100": "the CIFAR-100 pickles", "lm": "text files"}[args.experiment]
        hint = ("e.g. the Python standard library: python -c 'import sysconfig; print(sysconfig.get_paths()[\"stdlib\"])'"
                if args.experiment == "lm" else
                f"e.g. from `python ../shared/tools/datasets.py install DIR --only {args.experiment}`")
        raise DKError(f"reproduce {args.experiment} needs --data-dir: a directory with {what} ({hint})")
    if args.resume and args.overwrite:
        raise DKError("give --resume or --overwrite, not both")
    out = Path(args.out or f"runs/{args.experiment}-{scale}")
    from importlib import import_module

    from darkknowledge.experiments.report import reproduce

    experiment = import_module(f"darkknowledge.experiments.{args.experiment}").EXPERIMENT
    results = reproduce(experiment, args.data_dir, out, scale=scale, seeds=args.seeds, device=args.device,
                        progress=not args.no_progress, workers=args.workers, resume=args.resume,
                        overwrite=args.overwrite, executor=args.executor, address=args.address,
                        log=lambda m: print(m, file=sys.stderr))
    from darkknowledge.experiments.report import fmt_measured

    print_table([{**r, "measured": fmt_measured(r), "paper": "" if r["paper"] is None else r["paper"]}
                 for r in results["rows"]], ("experiment", "metric", "paper", "measured", "status", "seconds"))
    for check in results.get("teacher_check", []):
        if check["warning"]:
            print(f"warning: {check['warning']}", file=sys.stderr)
    for k, v in results.get("bias_offsets", {}).items():
        print(f"{k}: bias offset fitted on validation {v['validation_fitted']}, test-optimal {v['test_optimal']}, "
              f"paper {v['paper']}")
    failed = [s for s in results["stages"] if s["status"] == "failed"]
    print(f"{results['hardware']}; {results['stages_done']}/{results['stages_total']} stages done in "
          f"{results['wall_seconds']:.0f} s; wrote {out}/results.json, results.md and plots")
    if failed:
        print(f"{len(failed)} stages failed (errors in {out}/results.md); rerun with --resume to retry them",
              file=sys.stderr)
        return 1
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from darkknowledge.export import export_onnx

    report = export_onnx(args.checkpoint, Path(args.out), check=not args.no_check)
    print_table([report], tuple(report))
    return 0


def cmd_archs(args: argparse.Namespace) -> int:
    from darkknowledge.models import ARCHITECTURES

    print_table([{"name": k, "description": v.description} for k, v in ARCHITECTURES.items()], ("name", "description"))
    return 0


def _specialist_data(args: argparse.Namespace):
    from darkknowledge.data import load_split

    if args.val_size < 1:
        raise DKError(f"--val-size must be >= 1 (the clusters are chosen on a validation split), got {args.val_size}")
    return load_split(args.data, args.val_size, 0, args.split_seed)


def _generalist(path: str, data, device):
    from darkknowledge.checkpoint import load_checkpoint

    model, meta, _ = load_checkpoint(path, device=device)
    if meta["num_classes"] != data.num_classes:
        raise DKError(f"generalist {path} predicts {meta['num_classes']} classes but the data ({data.name}) has "
                      f"{data.num_classes}")
    return model, meta


def cmd_specialists_cluster(args: argparse.Namespace) -> int:
    """Covariance of the generalist's predictions on the validation split -> overlapping class subsets."""
    from darkknowledge import specialists as sp
    from darkknowledge.device import resolve_device

    ccfg = resolve(args, (ClusterConfig,))[ClusterConfig]
    device = resolve_device(args.device)
    data, (xv, _) = _specialist_data(args)
    model, _ = _generalist(args.generalist, data, device)
    clusters = sp.cluster_from_generalist(model, xv.to(device), ccfg)
    extra: dict[str, Any] = {"generalist": args.generalist, "data": args.data, "val_size": args.val_size,
                             "split_seed": args.split_seed}
    if data.coarse_of_class:
        extra.update(sp.superclass_agreement(clusters, data.coarse_of_class, seed=ccfg.cluster_seed))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sp.save_clusters(out / "clusters.json", clusters.subsets, data.num_classes, data.class_names, extra)
    sp.plot_clusters(clusters, out / "clusters.png")
    names = data.class_names or tuple(str(i) for i in range(data.num_classes))
    print_table([{"specialist": f"m{m}", "classes": len(s), "names": ", ".join(names[k] for k in s)}
                 for m, s in enumerate(clusters.subsets)], ("specialist", "classes", "names"))
    agreement = (f"; ARI vs the data's superclasses {extra['ari_superclasses']:.2f}"
                 if "ari_superclasses" in extra else "")
    print(f"classes covered by 0, 1, 2, ... specialists: {clusters.coverage_counts()}{agreement}; wrote "
          f"{out}/clusters.json and {out}/clusters.png")
    return 0


def cmd_specialists_train(args: argparse.Namespace) -> int:
    """One specialist per subset of a clusters file, through the executor interface."""
    import dataclasses

    from darkknowledge import specialists as sp
    from darkknowledge.executors import run_tasks

    if not args.config:  # the specialist recipe (fine-tuning from the generalist), then flags
        args.config = str(recipe_path("cifar100", "specialist"))
    cfgs = resolve(args, (TrainConfig, SpecialistConfig))
    cfg, spec = cfgs[TrainConfig], cfgs[SpecialistConfig]
    subsets, doc = sp.load_clusters(args.clusters)
    data, _ = _specialist_data(args)
    _, gmeta = _generalist(args.generalist, data, "cpu")
    if doc.get("num_classes") != data.num_classes:
        raise DKError(f"clusters file {args.clusters} is for {doc.get('num_classes')} classes, the data has "
                      f"{data.num_classes}")
    cfg = dataclasses.replace(cfg, arch=gmeta["arch"])
    out = Path(args.out)
    for m in range(len(subsets)):
        _check_out(out / f"m{m}", args.resume, args.overwrite)
    tasks = [sp.SpecialistTask(args.data, args.generalist, tuple(s), f"m{m}", str(out / f"m{m}"),
                               dataclasses.replace(cfg, seed=cfg.seed + m), spec, args.val_size, 0,
                               str(out / "cache"), not args.no_progress and args.workers == 1)
             for m, s in enumerate(subsets)]
    outcomes = run_tasks(sp.specialist_task, tasks, executor=args.executor, workers=args.workers,
                         address=args.address, progress=not args.no_progress, desc="specialists")
    rows = [{"specialist": f"m{m}", "classes": len(subsets[m]),
             **({"special_test_accuracy_%": round(100 * o.value["special_test_accuracy"], 2),
                 "dustbin_offset": round(o.value["dustbin_offset"], 3)} if o.ok else {"special_test_accuracy_%": "failed"}),
             "seconds": round(o.seconds, 1)} for m, o in enumerate(outcomes)]
    print_table(rows, ("specialist", "classes", "special_test_accuracy_%", "dustbin_offset", "seconds"))
    failed = [f"m{m}: {o.error}" for m, o in enumerate(outcomes) if not o.ok]
    if failed:
        print("failed: " + "; ".join(failed), file=sys.stderr)
        return 1
    print(f"specialists: {out}/m0..m{len(subsets) - 1}")
    return 0


def cmd_specialists_evaluate(args: argparse.Namespace) -> int:
    """Generalist vs generalist + specialists on the test split, by coverage of the true class (table 4)."""
    from darkknowledge import specialists as sp
    from darkknowledge.data import load_data
    from darkknowledge.device import resolve_device

    device = resolve_device(args.device)
    data = load_data(args.data)
    teacher = sp.CombinedTeacher.from_checkpoints(args.generalist, sp.specialist_checkpoints(args.specialists),
                                                  args.top_n, device=device)
    teacher.check_fits(data)  # the generalist's classes and inputs against the data's
    result = sp.evaluate_teacher(teacher, data.x_test.to(device), data.y_test.to(device))
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print_table([{"covered_by": r["k"], "test_examples": r["examples"],
                  "generalist_%": round(100 * r["generalist_accuracy"], 2),
                  "combined_%": round(100 * r["combined_accuracy"], 2),
                  "relative_gain_%": "n/a" if r["relative_gain_percent"] is None  # the generalist got none right
                   else round(r["relative_gain_percent"], 2)} for r in result["covered_by"]],
                ("covered_by", "test_examples", "generalist_%", "combined_%", "relative_gain_%"))
    print(f"all {result['test_size']} test examples: generalist {100 * result['generalist_accuracy']:.2f}%, "
          f"generalist + {result['specialists']} specialists {100 * result['combined_accuracy']:.2f}% "
          f"({result['active_per_example']:.2f} active per example, top_n {args.top_n})")
    return 0


def add_specialists_parser(sub) -> None:
    p = sub.add_parser("specialists", help="paper section 5: cluster confusable classes, train specialists, evaluate")
    ssub = p.add_subparsers(dest="action", required=True)

    def common(q, val: bool = True, device: bool = True) -> None:
        q.add_argument("--no-progress", action="store_true", help="hide progress bars")
        q.add_argument("--generalist", required=True, help="the generalist's checkpoint directory")
        q.add_argument("--data", required=True, help="data source, e.g. cifar100:DIR")
        if val:
            q.add_argument("--val-size", type=int, default=5000,
                           help="validation images carved off the training split, as the generalist was trained "
                                "(default: 5000)")
            q.add_argument("--split-seed", type=int, default=0, help="seed of that split (default: 0)")
        if device:
            q.add_argument("--device", default=DEFAULT_DEVICE, help=f"cpu, cuda or auto (default: {DEFAULT_DEVICE})")

    q = ssub.add_parser("cluster", help="cluster the classes the generalist confuses (MiniBatchKMeans)")
    common(q)
    q.add_argument("--out", required=True, help="directory for clusters.json and clusters.png")
    q.set_defaults(config=None)
    add_config_flags(q, (ClusterConfig,))
    q.set_defaults(func=cmd_specialists_cluster)

    q = ssub.add_parser("train", help="one specialist per subset, initialised from the generalist")
    common(q, device=False)  # --device is one of the training flags
    q.add_argument("--clusters", required=True, help="clusters.json from `dk specialists cluster`")
    q.add_argument("--out", required=True, help="specialists go to OUT/m0, OUT/m1, ...")
    q.add_argument("--config", help="YAML recipe (flat mapping; flags override it; default: the specialist recipe, "
                                    "recipes/cifar100/specialist.yaml)")
    q.add_argument("--resume", action="store_true", help="continue unfinished specialists in --out")
    q.add_argument("--overwrite", action="store_true", help="replace specialists already in --out")
    add_config_flags(q, (TrainConfig, SpecialistConfig))
    add_executor_flags(q)
    q.set_defaults(func=cmd_specialists_train)

    q = ssub.add_parser("evaluate", help="generalist vs generalist + specialists on the test split (table 4)")
    common(q, val=False)
    q.add_argument("--specialists", required=True, help="directory of specialist checkpoints (OUT of train)")
    q.add_argument("--top-n", type=int, default=1,
                   help="a specialist is active where its classes meet the generalist's top N (default: 1)")
    q.add_argument("--json", action="store_true", help="print JSON instead of tables")
    q.set_defaults(func=cmd_specialists_evaluate)


def add_executor_flags(p, stages: bool = False) -> None:
    what = "stages whose inputs are ready" if stages else "members"
    p.add_argument("--workers", type=int, default=1,
                   help=f"{what} run in this many processes (or Ray tasks) at once (default: 1)")
    p.add_argument("--executor", choices=["local", "ray"], default="local",
                   help="local: this machine's processes; ray: Ray tasks, each retried from its epoch checkpoint "
                        "if its worker dies (needs the ray extra) (default: local)")
    p.add_argument("--address", help="with --executor ray: an existing Ray cluster (default: start a local one)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dk", description="Knowledge distillation (Hinton, Vinyals & Dean 2015).")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="teacher, hard-label student and distilled student on the embedded digits")
    p.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for all three models (default: 0)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"cpu, cuda or auto (default: {DEFAULT_DEVICE})")
    p.set_defaults(func=cmd_demo)

    for name, func, text in (("train", cmd_train, "train a model on hard labels"),
                             ("distill", cmd_distill, "train a student on teacher soft targets")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--config", help="YAML recipe (flat mapping; flags override it)")
        p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out")
        p.add_argument("--overwrite", action="store_true", help="replace a checkpoint already in --out")
        add_config_flags(p, COMMAND_CONFIGS[name])
        p.set_defaults(func=func)
        if name == "train":
            g = p.add_argument_group("ensembles")
            g.add_argument("--members", type=int, default=1,
                           help="train this many members (seeds --seed onwards) into OUT/member0.. (default: 1)")
            add_executor_flags(g)

    p = sub.add_parser("evaluate", help="test errors of a checkpoint, optionally with output-bias offsets")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--data", default="digits", help="'digits', an MNIST directory or a .npz (default: digits)")
    p.add_argument("--bias-fix", nargs="+", metavar="CLASS=OFFSET", help="add OFFSET to CLASS's logit (paper section 3)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("reproduce", help="reproduce a paper experiment end to end (paper vs measured table)")
    p.add_argument("experiment", choices=["mnist", "cifar10", "cifar100", "lm"],
                   help="which experiment family (paper section 3: mnist; sections 4 and 6: cifar10; "
                        "section 5, specialists: cifar100; token-level distillation of a language model: lm)")
    p.add_argument("--data-dir", "--data", dest="data_dir",
                   help="directory with the canonical MNIST IDX files or CIFAR pickles; for lm a text file or a "
                        "directory of text files (e.g. the Python standard library's)")
    p.add_argument("--out", help="output directory (default: runs/EXPERIMENT-SCALE)")
    p.add_argument("--seeds", type=int, help="seeds per experiment (default: 3; 1 at smoke scale)")
    p.add_argument("--device", default=DEFAULT_DEVICE, help=f"cpu, cuda or auto (default: {DEFAULT_DEVICE})")
    p.add_argument("--scale", choices=["full", "quick", "smoke"], default="full",
                   help="full: paper scale; quick: minutes on 2 CPU cores; smoke: seconds, for tests")
    p.add_argument("--quick", action="store_true", help="same as --scale quick")
    add_executor_flags(p, stages=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the reproduction in --out: finished stages are kept, the cut-off one resumes "
                        "from its epoch checkpoint, failed ones are retried")
    p.add_argument("--overwrite", action="store_true", help="discard a previous reproduction in --out")
    p.set_defaults(func=cmd_reproduce)

    add_specialists_parser(sub)

    p = sub.add_parser("export", help="write a checkpoint as ONNX and check it in onnxruntime")
    p.add_argument("--checkpoint", required=True, help="checkpoint directory")
    p.add_argument("--out", required=True, help="ONNX file to write")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("archs", help="list the registered architectures")
    p.set_defaults(func=cmd_archs)

    for name, p in sub.choices.items():
        if name != "specialists":  # its actions have their own
            p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser


def _on_interrupt(signum: int, frame: Any) -> None:
    INTERRUPTED.set()
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, _on_interrupt) if main_thread else None
    try:
        return args.func(args)
    except DKError as e:
        print(f"dk: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        out = getattr(args, "out", None)
        print(f"dk: interrupted; completed epochs are checkpointed{f' in {out}' if out else ''}: "
              "rerun with --resume to continue", file=sys.stderr)
        return 130
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
            INTERRUPTED.clear()


if __name__ == "__main__":
    sys.exit(main())
