"""Ray vs local executor on this machine's cores, side by side in one run: one ensemble's members.

    python benchmarks/executors.py --data-dir DIR [--members 4] [--epochs 2] [--limit 10000]

The same N members (resnet-s-w8 on a CIFAR-10 subset, seeds 0..N-1, the CIFAR-10 member recipe) trained
three ways: ``local`` with one worker (in this process, all threads, one member after another), ``local``
with a process pool of one worker per core (one thread each), and ``ray`` with one task per core (each
asking for 1 CPU; a local Ray instance, its start-up timed apart). Reports wall time per way, its ratio to
the sequential run, and each member's test accuracy (the same seeds: the ways must agree up to the
summation order of 1 vs 2 threads). Writes benchmarks/results/executors-<device>.json.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save  # noqa: E402

from darkknowledge.ensembles import train_members  # noqa: E402
from darkknowledge.experiments.cifar10 import MEMBER  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="directory with the CIFAR-10 pickles")
    ap.add_argument("--members", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--limit", type=int, default=10_000, help="training images (a seeded subset)")
    ap.add_argument("--arch", default="resnet-s-w8")
    ap.add_argument("--ways", nargs="+", default=["local-1", "local-pool", "ray"])
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    cfg = replace(MEMBER, arch=args.arch, epochs=args.epochs, device="cpu", eval_every=args.epochs)
    source = f"cifar10:{args.data_dir}"
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="dk-executors-"))
    try:
        for way in args.ways:
            kwargs = {"local-1": dict(executor="local", workers=1),
                      "local-pool": dict(executor="local", workers=cores),
                      "ray": dict(executor="ray", cpus_per_task=1)}[way]
            startup = 0.0
            if way == "ray":
                from darkknowledge.executors import ray_init

                t0 = time.perf_counter()
                ray_init()
                startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            outcomes = train_members(source, cfg, args.members, tmp / way, limit=args.limit, progress=False,
                                     log=lambda m: None, **kwargs)
            wall = time.perf_counter() - t0
            if way == "ray":
                import ray

                ray.shutdown()
            bad = [o.error for o in outcomes if not o.ok]
            if bad:
                raise SystemExit(f"{way}: {bad}")
            rows.append({"way": way, **kwargs, "wall_seconds": round(wall, 2), "startup_seconds": round(startup, 2),
                         "member_accuracy": [round(o.value["accuracy"], 4) for o in outcomes],
                         "member_seconds": [round(o.value["seconds"], 2) for o in outcomes]})
            print(f"{way:10s} {wall:7.1f} s wall (+{startup:.1f} s start-up); accuracies "
                  f"{[round(100 * o.value['accuracy'], 2) for o in outcomes]}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = next((r["wall_seconds"] for r in rows if r["way"] == "local-1"), None)
    for r in rows:
        r["speedup_vs_local_1"] = round(base / r["wall_seconds"], 3) if base else None
    result = {"benchmark": "executors", **environment(torch.device("cpu")), "cores": cores, "members": args.members,
              "epochs": args.epochs, "train_images": args.limit, "arch": args.arch, "seeds": list(range(args.members)),
              "rows": rows}
    path = save("executors-cpu.json", result, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
