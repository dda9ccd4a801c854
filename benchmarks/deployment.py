"""Why distil: inference latency and throughput of the teacher vs the distilled student.

    python benchmarks/deployment.py [--device cpu|cuda] [--repeats 50]

Both nets are timed side by side in one run, at T = 1 in eval mode, on MNIST-shaped inputs
(timing does not depend on the weights, so freshly initialised nets of the registry are used):
latency at batch 1 and throughput at batch 10,000, median and spread over repeats, plus the
parameter counts. Writes benchmarks/results/deployment-<device>.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, spread, sync  # noqa: E402

from darkknowledge.models import build_model  # noqa: E402

PAIRS = {"teacher": "mlp-1200x2", "student": "mlp-800x2", "tiny student": "mlp-30x2"}


@torch.no_grad()
def time_it(model, x, repeats, device) -> list[float]:
    for _ in range(5):  # warm-up
        model(x)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        model(x)
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--throughput-batch", type=int, default=10_000)
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    torch.manual_seed(0)
    rows = []
    for role, arch in PAIRS.items():
        model = build_model(arch, 784, 10).to(device).eval()
        lat = time_it(model, torch.rand(1, 28, 28, device=device), args.repeats, device)
        thr = time_it(model, torch.rand(args.throughput_batch, 28, 28, device=device), max(5, args.repeats // 5), device)
        row = {"role": role, "arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
               "latency_batch1_ms": {k: (v * 1e3 if k != "n" else v) for k, v in spread(lat).items()},
               "throughput_images_per_s": args.throughput_batch / spread(thr)["median"]}
        rows.append(row)
        print(f"{role:12s} {arch:10s} {row['parameters']:>9,d} params  latency {row['latency_batch1_ms']['median']:.3f} ms"
              f"  throughput {row['throughput_images_per_s']:,.0f} img/s", flush=True)
    t, s = rows[0], rows[1]
    summary = {"student_latency_speedup": round(t["latency_batch1_ms"]["median"] / s["latency_batch1_ms"]["median"], 2),
               "student_throughput_speedup": round(s["throughput_images_per_s"] / t["throughput_images_per_s"], 2),
               "student_parameter_ratio": round(s["parameters"] / t["parameters"], 3)}
    print(summary)
    path = save(f"deployment-{'cuda' if device.type == 'cuda' else 'cpu'}.json",
                {"benchmark": "deployment", **environment(device), "repeats": args.repeats, "seed": 0,
                 "rows": rows, "summary": summary}, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
