"""What every benchmark records beside its numbers: hardware, versions, commit, seeds."""

from __future__ import annotations

import json
import os
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
    return {"hardware": hw, "cpu": cpu_info(), "cpu_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "torch": torch.__version__, "commit": commit, "dirty_worktree": dirty, "device": str(device)}


def cpu_info() -> dict[str, Any]:
    """CPU model and the ISA flags that decide bf16 speed (Linux /proc/cpuinfo; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return {"model": platform.processor() or platform.machine(), "flags": {}}
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags = set(next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []))
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")
    return {"model": model, "cores": os.cpu_count(), "flags": {f: f in flags for f in wanted}}


def matmul_throughput(dtype: torch.dtype, device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """The machine's own dense matmul rate in GFLOP/s: median of ``repeats`` square n x n products."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    a @ b
    times = [timed(lambda: a @ b, device)[1] for _ in range(repeats)]
    return 2 * n**3 / statistics.median(times) / 1e9


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
    """Write ``payload`` as JSON to ``out_dir/name`` (default: benchmarks/results/), atomically: a cut-off run never
    leaves half a file."""
    out = Path(out_dir) if out_dir else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` command-line overrides of a recipe, each value read as YAML (``lr=0.1``, ``flip=true``)."""
    import yaml

    return {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in items)}


def append_jsonl(path: str | Path, row: dict[str, Any]) -> None:
    """One tuning run as one JSON line, appended (a log of every setting tried)."""
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
