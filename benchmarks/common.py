"""What every benchmark records beside its numbers: hardware, versions, commit, seeds."""

from __future__ import annotations

import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def environment(device: torch.device) -> dict[str, Any]:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip())
    hw = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.machine()} CPU"
    return {"hardware": hw, "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "commit": commit, "dirty_worktree": dirty, "device": str(device)}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min, max and population spread of repeated timings."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "stdev": statistics.pstdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device):
    """``(fn(), seconds)``, with the device synchronised before and after."""
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0


def save(name: str, payload: dict[str, Any], out_dir: str | Path | None = None) -> Path:
    """Write ``payload`` as JSON to ``out_dir/name`` (default: benchmarks/results/)."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path
