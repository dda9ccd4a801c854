"""What every reproduction's results file shares: hardware, commit, paper-vs-measured rows, plots.

The results contract (``results.json``): ``hardware``, ``commit``, ``scale``, ``seeds``, ``rows`` of
``{experiment, metric, paper, mean, std, seeds, values, seconds, status}`` where ``status`` is
``done`` (every seed measured), ``partial`` (some seeds so far), ``failed`` (a seed's stage failed:
``errors`` says why) or ``pending``, and ``stages``: every stage's status, seconds and error.
"""

from __future__ import annotations

import io
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Any, Callable

import torch

from darkknowledge.checkpoint import atomic_write_bytes
from darkknowledge.experiments.runner import DONE, FAILED, PENDING, Stage


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


def seed_row(experiment: str, metric: str, paper: float | None, stages: list[Stage],
             records: dict[str, dict[str, Any]], value: Callable[[dict[str, Any]], float]) -> dict[str, Any]:
    """One results row over seeds: ``value(result)`` of each of ``stages`` (one per seed) that is done."""
    recs = [records[s.name] for s in stages]
    done = [r for r in recs if r["status"] == DONE]
    values = [value(r["result"]) for r in done]
    mean, std = mean_std(values)
    failed = {s.name: records[s.name]["error"] for s in stages if records[s.name]["status"] == FAILED}
    status = (FAILED if failed else DONE if len(done) == len(recs) else "partial" if done else PENDING)
    row = {"experiment": experiment, "metric": metric, "paper": paper, "mean": round(mean, 3) if values else None,
           "std": round(std, 3) if values else None, "seeds": len(values), "values": values, "status": status,
           "seconds": round(statistics.fmean(r["seconds"] for r in done), 2) if done else None}
    if failed:
        row["errors"] = failed
    return row


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


def check_run(scales: dict[str, Any], scale: str, seeds: int | None, workers: int) -> tuple[Any, int]:
    """``(scales[scale], seeds or the scale's default)``; an unknown scale or a count < 1 is a DKError."""
    from darkknowledge.errors import DKError

    if scale not in scales:
        raise DKError(f"unknown scale {scale!r}; allowed: {', '.join(scales)}")
    sc = scales[scale]
    seeds = sc.default_seeds if seeds is None else seeds
    if seeds < 1:
        raise DKError(f"seeds must be >= 1, got {seeds}")
    if workers < 1:
        raise DKError(f"workers must be >= 1, got {workers}")
    return sc, seeds


def run_reproduction(stages: list[Stage], execute: Callable[[Stage], dict[str, Any]], out: Path,
                     summarise: Callable[[dict[str, dict[str, Any]], float], dict[str, Any]],
                     write: Callable[[dict[str, Any]], None], *, resume: bool, workers: int, progress: bool,
                     log: Callable[[str], None], executor: str, address: str | None) -> dict[str, Any]:
    """Run ``stages``; after each, ``summarise(records, wall_seconds)`` (+ workers, executor) goes to ``write``
    (results.json, results.md, plots); returns the final summary."""
    from darkknowledge.experiments.runner import run_stages

    t0 = time.perf_counter()

    def results(records: dict[str, dict[str, Any]]) -> dict[str, Any]:
        return {**summarise(records, time.perf_counter() - t0), "workers": workers, "executor": executor}

    records = run_stages(stages, execute, out, report=lambda r: write(results(r)), resume=resume, workers=workers,
                         progress=progress, log=log, executor=executor, address=address)
    return results(records)
