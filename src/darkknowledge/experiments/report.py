"""What every reproduction's results file shares: hardware, commit, paper-vs-measured rows, plots.

``reproduce(experiment, ...)`` owns a reproduction's output directory (its manifest, ``results.json``,
``results.md``, plots), the per-seed rows and the shared header; an ``Experiment`` brings its scales,
stages and paper numbers.

The results contract (``results.json``): ``hardware``, ``commit``, ``scale``, ``seeds``, ``rows`` of
``{experiment, metric, paper, mean, std, seeds, values, seconds, status}`` where ``status`` is
``done`` (every seed measured), ``partial`` (some seeds so far), ``failed`` (a seed's stage failed:
``errors`` says why) or ``pending``; a row whose teacher failed its check also carries ``warning``;
``teacher_check``: is each teacher better than its hard-label baseline (``evaluation.teacher_check``,
with the results ``row`` it concerns), ``stages``: every stage's status, seconds and error, and
``invocations``: every run and resume of the directory (start, commit, hardware).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from darkknowledge.checkpoint import atomic_write_bytes, atomic_write_json
from darkknowledge.device import DEFAULT_DEVICE, resolve_device, resolve_precision
from darkknowledge.errors import DKError
from darkknowledge.evaluation import teacher_check
from darkknowledge.executors import open_executor
from darkknowledge.experiments.runner import DONE, FAILED, PENDING, Stage, model_dir, run_stages, stage_path


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return f"{cpu_model()} ({platform.machine()}), {torch.get_num_threads()} threads, torch {torch.__version__}"


def mean_std(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def values_row(experiment: str, metric: str, paper: float | None, values: list[float], expected: int, *,
               seconds: float | None = None, note: str = "", failed: dict[str, str] | None = None,
               digits: int | None = None) -> dict[str, Any]:
    """One results row from the ``values`` measured so far (one per seed; ``expected`` of them when done);
    ``failed`` maps the stages that failed to their errors; ``digits`` rounds the values."""
    mean, std = mean_std(values)
    status = FAILED if failed else DONE if len(values) == expected else "partial" if values else PENDING
    row = {"experiment": experiment, "metric": metric, "paper": paper, "mean": round(mean, 3) if values else None,
           "std": round(std, 3) if values else None, "seeds": len(values),
           "values": values if digits is None else [round(v, digits) for v in values], "status": status,
           "seconds": round(seconds, 2) if seconds is not None else None}
    if note:
        row["note"] = note
    if failed:
        row["errors"] = failed
    return row


def seed_row(experiment: str, metric: str, paper: float | None, stages: list[Stage],
             records: dict[str, dict[str, Any]], value: Callable[[dict[str, Any]], float], note: str = "",
             digits: int | None = None) -> dict[str, Any]:
    """One results row over seeds: ``value(result)`` of each of ``stages`` (one per seed) that is done."""
    done = [records[s.name] for s in stages if records[s.name]["status"] == DONE]
    failed = {s.name: records[s.name]["error"] for s in stages if records[s.name]["status"] == FAILED}
    seconds = statistics.fmean(r["seconds"] for r in done) if done else None
    return values_row(experiment, metric, paper, [value(r["result"]) for r in done], len(stages), seconds=seconds,
                      note=note, failed=failed, digits=digits)


def paired_check(teacher: str, baseline: str, split: str, teacher_errors: list[float], baseline_errors: list[float],
                 size: int, row: str, note: str = "") -> dict[str, Any] | None:
    """``evaluation.teacher_check`` of the pairs measured so far (None: none yet); ``row`` is the results row it
    concerns, ``note`` why this split."""
    if not teacher_errors:
        return None
    check = teacher_check(teacher_errors, baseline_errors, size, split, teacher=teacher, baseline=baseline)
    return {**check, "row": row, **({"note": note} if note else {})}


def note_checks(rows: list[dict[str, Any]], checks: list[dict[str, Any]]) -> None:
    """Put each failed teacher check's verdict on its row (``warning``; ``results.md`` shows it beside the number)."""
    by_name = {r["experiment"]: r for r in rows}
    for c in checks:
        if c["warning"] and c["row"] in by_name:
            by_name[c["row"]]["warning"] = f"not better than the {c['baseline']} on the {c['split']} split"


def checks_markdown(checks: list[dict[str, Any]]) -> list[str]:
    """The teacher checks as a table, with every warning spelt out below it."""
    if not checks:
        return []
    lines = ["", "Teacher check: is the teacher better than a net trained on hard labels?", "",
             "| teacher | baseline | split | teacher errors | baseline errors | better |", "|---|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['teacher']} | {c['baseline']} | {c['split']} ({c['size']} images) | "
                     f"{', '.join(f'{v:g}' for v in c['teacher_errors'])} | "
                     f"{', '.join(f'{v:g}' for v in c['baseline_errors'])} | {'yes' if c['teacher_better'] else 'NO'} |")
    lines += [f"- {c['note']}" for c in checks if c.get("note")]
    lines += [f"- **Warning**: {c['warning']}." for c in checks if c["warning"]]
    return lines


def stage_table(stages: list[Stage], records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for s in stages:
        r = records[s.name]
        out.append({"stage": s.name, "status": r["status"], "seconds": round(r.get("seconds", 0.0), 1),
                    **({"error": r["error"]} if r["status"] == FAILED else {})})
    return out


def fmt_measured(row: dict[str, Any]) -> str:
    if not row["seeds"]:
        return row["status"]
    text = f"{row['mean']:.4g} ± {row['std']:.2g}"
    return text if row["status"] == DONE else f"{text} ({row['status']}, {row['seeds']} seeds)"


def save_figure(fig, path: Path) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def relative_to(out: str | Path, path: str | Path) -> str:
    """``path`` as a stage result records it for the stages that need it: relative to the reproduction's output
    directory (they join it to theirs), so a run resumes from another working directory or after a move."""
    return os.path.relpath(Path(path).resolve(), Path(out).resolve())


def check_run(scales: dict[str, Any], scale: str, seeds: int | None, workers: int) -> tuple[Any, int]:
    """``(scales[scale], seeds or the scale's default)``; an unknown scale or a count < 1 is a DKError."""
    if scale not in scales:
        raise DKError(f"unknown scale {scale!r}; allowed: {', '.join(scales)}")
    sc = scales[scale]
    seeds = sc.default_seeds if seeds is None else seeds
    if seeds < 1:
        raise DKError(f"seeds must be >= 1, got {seeds}")
    if workers < 1:
        raise DKError(f"workers must be >= 1, got {workers}")
    return sc, seeds


@dataclass(frozen=True)
class Experiment:
    """A reproduction: its scales, its stages and how its results read. ``reproduce`` does the rest.

    Attributes:
        name, title: ``mnist``; the results document's heading.
        scales: scale name -> a frozen dataclass with at least ``default_seeds``.
        check_data: ``check_data(data_dir, scale)`` loads the data (cached per process) or raises a DKError.
        stages: ``stages(scale, seeds, ctx) -> [Stage]``; ``ctx`` goes into every stage's params (data_dir,
            the scale itself, device, out, seeds, progress).
        run_stage: ``run_stage(stage, inputs) -> result`` (top-level: it is pickled to workers).
        summarise: ``summarise(stages, records, scale, seeds) -> {"rows": [...], ...}`` from the records so far.
        markdown: ``markdown(results) -> [lines]`` after the rows table (the experiment's own sections).
        plots: ``plots(results, out) -> [paths]``.
        precision: the recipe precision whose resolution the results report.
        configs: ``configs(scale)``: the recipes (dataclasses) as the scale runs them, recorded in ``results.json``.
        preface: lines between the header and the rows table.
        owners: a setting's dotted key (or a prefix of keys, ``recipes.distill_3pct``) -> the stage kinds that
            alone read it. Resuming a run after only owned settings changed re-runs those stages and everything
            that depends on them; a change to any other setting refuses to resume.
    """

    name: str
    title: str
    scales: dict[str, Any]
    check_data: Callable[[str, Any], Any]
    stages: Callable[[Any, int, dict[str, Any]], list[Stage]]
    run_stage: Callable[[Stage, dict[str, Any]], dict[str, Any]]
    summarise: Callable[[list[Stage], dict[str, dict[str, Any]], Any, int], dict[str, Any]]
    markdown: Callable[[dict[str, Any]], list[str]]
    plots: Callable[[dict[str, Any], Path], list[Path]]
    precision: str
    configs: Callable[[Any], dict[str, Any]]
    preface: Callable[[dict[str, Any]], list[str]] = lambda results: []
    owners: dict[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)


MANIFEST = "reproduction.json"
OUT_PARTS = ("stages", "models", "teachers", "members", "generalists", "specialists", "clusters", "cache")


def run_settings(exp: "Experiment", sc: Any) -> dict[str, Any]:
    """What a reproduction's finished stages depend on: the scale and every recipe it trains with (as JSON)."""
    configs = exp.configs(sc)
    return json.loads(json.dumps({"scale": dataclasses.asdict(sc),
                                  "recipes": {k: dataclasses.asdict(v) for k, v in configs.items()}}))


def settings_defaults(exp: "Experiment", sc: Any) -> dict[str, Any]:
    """Every recipe field's default, shaped like ``run_settings``: a field added to a config after a run was
    started is absent from its manifest and counts as this default there."""
    return json.loads(json.dumps({"recipes": {k: dataclasses.asdict(type(v)()) for k, v in exp.configs(sc).items()}}))


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def changed_settings(old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None) -> list[str]:
    """The dotted keys (``recipes.member.lr``) whose values differ between two ``run_settings``; a key one
    side lacks takes its value from ``defaults``."""
    old, new, dflt = _flat(old), _flat(new), _flat(defaults or {})
    missing = object()
    return sorted(k for k in set(old) | set(new)
                  if old.get(k, dflt.get(k, missing)) != new.get(k, dflt.get(k, missing)))


def _owner_kinds(changed: list[str], owners: dict[str, tuple[str, ...]]) -> set[str] | None:
    """The stage kinds that read the ``changed`` settings, or None when one of them has no owner."""
    kinds: set[str] = set()
    for key in changed:
        owned = [kinds_ for prefix, kinds_ in owners.items() if key == prefix or key.startswith(prefix + ".")]
        if not owned:
            return None
        kinds.update(*owned)
    return kinds


def prepare_out(out: Path, experiment: str, scale: str, resume: bool, overwrite: bool,
                settings: dict[str, Any] | None = None, defaults: dict[str, Any] | None = None,
                owners: dict[str, tuple[str, ...]] | None = None) -> tuple[list[str], set[str]]:
    """A fresh run needs an empty ``out`` (or ``overwrite``); a resumed one, the same experiment, scale and
    ``settings`` (``run_settings``: a run whose manifest predates them is resumed on experiment and scale; a
    setting added since the run started is the same when it holds its ``defaults`` value), except settings in
    ``owners`` (``Experiment.owners``). Returns the changed settings and the stage kinds to run again for them."""
    manifest = out / MANIFEST
    if manifest.is_file():
        previous = json.loads(manifest.read_text())
        if resume:
            if "experiment" not in previous:  # its stages' results lack what stages now pass to each other
                raise DKError(f"cannot resume {out}: it was started by an older darkknowledge, whose stages did not "
                              "pass their results on; start it again with --overwrite")
            if previous["experiment"] != experiment:
                raise DKError(f"cannot resume {out}: it is a {previous['experiment']} reproduction, not {experiment}")
            if previous.get("scale") != scale:
                raise DKError(f"cannot resume {out}: it is a {previous.get('scale')!r}-scale reproduction, "
                              f"not {scale!r}")
            old = previous.get("settings")
            changed = changed_settings(old, settings, defaults) if settings is not None and old is not None else []
            kinds = _owner_kinds(changed, owners or {})
            if kinds is None:
                raise DKError(f"cannot resume {out}: it was started with other settings ({', '.join(changed)} "
                              "differ); its finished stages would not match the new ones. Use --overwrite or "
                              "another --out")
            return changed, kinds
        if not overwrite:
            raise DKError(f"{out} holds a previous reproduction; pass --resume to continue it, --overwrite to "
                          "start over, or choose another --out")
    elif resume and out.exists() and any(out.iterdir()):
        raise DKError(f"cannot resume {out}: it holds no reproduction ({MANIFEST} not found)")
    for sub in OUT_PARTS:
        shutil.rmtree(out / sub, ignore_errors=True)
    return [], set()


def stale_stages(stages: list[Stage], kinds: set[str]) -> list[Stage]:
    """The stages of ``kinds`` and every stage that depends on one of them, directly or not (in order)."""
    stale: set[str] = set()
    for s in stages:  # dependencies come before dependants
        if s.kind in kinds or stale.intersection(s.deps):
            stale.add(s.name)
    return [s for s in stages if s.name in stale]


def forget_stages(out: Path, stages: list[Stage]) -> None:
    """Delete what ``stages`` recorded and saved (its record, its resumable checkpoints) so that they run again."""
    for s in stages:
        stage_path(out, s.name).unlink(missing_ok=True)
        for path in (model_dir(Path(), s.name), *s.paths):
            shutil.rmtree(out / path, ignore_errors=True)


def rows_table(rows: list[dict[str, Any]]) -> list[str]:
    """Paper vs measured, one Markdown row per results row."""
    lines = ["| experiment | metric | paper | measured (mean ± std) | per seed | seconds |", "|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{v:.4g}" for v in r["values"])
        paper = "" if r["paper"] is None else r["paper"]
        measured = fmt_measured(r) + (f" (**{r['warning']}**)" if r.get("warning") else "")
        lines.append(f"| {r['experiment']} | {r['metric']} | {paper} | {measured} | {per_seed} | "
                     f"{r['seconds'] if r['seconds'] is not None else ''} |")
    return lines


def _over(invocations: list[dict[str, Any]]) -> str:
    """`` over N invocations (a + b s)`` for a resumed run (its pieces' wall seconds where recorded), else ``""``."""
    if len(invocations) < 2:
        return ""
    parts = [f"{i['wall_seconds']:.0f}" if "wall_seconds" in i else "?" for i in invocations]
    return f" over {len(invocations)} invocations ({' + '.join(parts)} s)"


def markdown(exp: Experiment, results: dict[str, Any]) -> str:
    """The results document: header, preface, rows table, the experiment's sections, failed stages."""
    lines = [f"# {exp.title} ({results['scale']} scale)", "",
             f"Hardware: {results['hardware']}; precision {results['precision']}; seeds {results['seeds']}; "
             f"commit {results['commit'][:12]}; {results['stages_done']}/{results['stages_total']} stages done, "
             f"{results['total_seconds']:.0f} s of stages, {results['wall_seconds']:.0f} s wall"
             f"{_over(results.get('invocations', []))}.", ""]
    lines += exp.preface(results)
    lines += rows_table(results["rows"]) + checks_markdown(results.get("teacher_check", [])) + exp.markdown(results)
    failed = [s for s in results["stages"] if s["status"] == FAILED]
    if failed:
        lines += ["", "Failed stages:", ""] + [f"- `{s['stage']}`: {s['error']}" for s in failed]
    return "\n".join(lines) + "\n"


def reproduce(exp: Experiment, data_dir: str | Path, out: str | Path, scale: str = "full", seeds: int | None = None,
              device: str = DEFAULT_DEVICE, progress: bool = True, workers: int = 1, resume: bool = False,
              overwrite: bool = False, executor: str = "local", address: str | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) every stage of ``exp``; ``results.json``, ``results.md`` and the plots in ``out`` are
    rewritten after each stage, so an interrupted run keeps everything that finished.

    Bad input (scale, counts, data, an unreachable Ray cluster, an ``out`` holding another run) is a DKError
    raised before anything is written. With ``workers > 1`` stages whose inputs are ready run that many at
    once, in processes (``local``) or as Ray tasks (``ray``).
    """
    sc, seeds = check_run(exp.scales, scale, seeds, workers)
    dev = resolve_device(device)
    exp.check_data(str(data_dir), sc)
    out = Path(out)
    with open_executor(executor, workers, address=address, cpus_per_task=None) as ex:
        settings = run_settings(exp, sc)
        changed, kinds = prepare_out(out, exp.name, scale, resume, overwrite, settings, settings_defaults(exp, sc),
                                     exp.owners)
        # The scale itself travels with every stage (a frozen dataclass): a worker process needs no registry.
        ctx = {"data_dir": str(data_dir), "scale": sc, "device": str(dev), "out": str(out), "seeds": seeds,
               "progress": progress and workers == 1 and executor == "local"}
        stages = exp.stages(sc, seeds, ctx)
        stale: list[Stage] = []
        if changed:  # forgotten before the manifest takes the new settings: an interruption forgets nothing twice
            stale = stale_stages(stages, kinds)
            forget_stages(out, stale)
            log(f"settings changed since {out} started ({', '.join(changed)}): running again "
                f"{', '.join(s.name for s in stale)}")
        # Every invocation that worked on this directory, with its machine: a resumed run's header describes
        # the machine that resumed it, so the stages an earlier one ran are traced here.
        earlier = (json.loads((out / MANIFEST).read_text()).get("invocations", [])
                   if resume and (out / MANIFEST).is_file() else [])
        # The wall time of the invocations before this one (what results.json summed so far): a resumed run's
        # wall time is its whole, not its last piece.
        previous = out / "results.json"
        prev = json.loads(previous.read_text()) if resume and earlier and previous.is_file() else {}
        earlier_wall = float(prev.get("wall_seconds") or 0.0)
        walls = {i.get("started"): i["wall_seconds"] for i in prev.get("invocations", []) if "wall_seconds" in i}
        earlier = [{**i, "wall_seconds": walls[i.get("started")]} if i.get("started") in walls else i for i in earlier]
        invocations = earlier + [{"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": git_commit(),
                                  "hardware": hardware(dev), "workers": workers, "executor": executor,
                                  **({"changed": changed, "ran_again": [s.name for s in stale]} if changed else {})}]
        atomic_write_json(out / MANIFEST, {"experiment": exp.name, "scale": scale, "seeds": seeds,
                                           "data_dir": str(data_dir), "device": str(dev), "commit": git_commit(),
                                           "executor": executor, "settings": settings, "invocations": invocations})
        t0 = time.perf_counter()

        def summary(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
            part = exp.summarise(stages, records, sc, seeds)
            note_checks(part["rows"], part.get("teacher_check", []))
            return part

        def results(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
            stage_rows = stage_table(stages, records)
            this = round(time.perf_counter() - t0, 1)
            return {"experiment": exp.name, "hardware": hardware(dev), "commit": git_commit(), "scale": scale,
                    "scale_config": dataclasses.asdict(sc), "device": str(dev), "torch": torch.__version__,
                    "precision": resolve_precision(exp.precision, dev), "seeds": list(range(seeds)),
                    "wall_seconds": round(earlier_wall + this, 1),
                    "total_seconds": round(sum(r["seconds"] for r in stage_rows), 1),
                    "stages_done": sum(r["status"] == DONE for r in stage_rows), "stages_total": len(stage_rows),
                    **summary(records), "stages": stage_rows,
                    "configs": {k: dataclasses.asdict(v) for k, v in exp.configs(sc).items()},
                    "workers": workers, "executor": executor,
                    "invocations": invocations[:-1] + [{**invocations[-1], "wall_seconds": this}]}

        def write(records: dict[str, dict[str, Any]]) -> None:
            res = results(records)
            atomic_write_json(out / "results.json", res)
            atomic_write_bytes(out / "results.md", markdown(exp, res).encode())
            exp.plots(res, out)

        records = run_stages(stages, exp.run_stage, out, report=write, resume=resume, workers=workers,
                             progress=progress, log=log, executor=ex)
        return results(records)

