"""The training step against its own matmul floor, per MLP of the MNIST table and per precision.

    python benchmarks/roofline.py [--device cpu] [--batch-sizes 128 256] [--rounds 5] [--steps 60]
    python benchmarks/roofline.py --profile mlp-1200x2 --batch-sizes 256    # torch.profiler's operator table

For each net (the 2x1200 teacher with its dropout, max-norm and 2-pixel jitter; the 2x800, 2x300 and
2x30 students) and each precision (fp32; bf16 where the device has it), alternating in every round:

  floor  the matrix products of one training step alone, at the step's exact shapes, layouts and
         dtype: per layer the forward addmm and the weight-gradient mm, and the input-gradient mm of
         every layer but the first (median of 20 back-to-back repetitions);
  step   ``training.fit`` itself on random MNIST-shaped data for ``--steps`` steps (one epoch: data
         resident, gather, jitter, dropout, objective, SGD, max-norm), per step; the fused path and
         the autograd path (``fused=False``, the path of every non-MLP model).

Floor and step are timed next to each other in every round, and the ratio is taken per round, so a
machine that drifts in speed (shared VMs do) moves both; medians and spreads over the rounds are
reported with seconds per 60,000-image epoch, the CPU model, its ISA flags and the machine's dense
matmul rate. Writes benchmarks/results/roofline-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, matmul_throughput, save, spread, timed  # noqa: E402

from darkknowledge.config import TrainConfig  # noqa: E402
from darkknowledge.models import build_model  # noqa: E402
from darkknowledge.training import HardLabels, fit, new_model  # noqa: E402
from darkknowledge.device import resolve_precision  # noqa: E402

NETS = {"mlp-1200x2": 2, "mlp-800x2": 0, "mlp-300x2": 0, "mlp-30x2": 0}  # arch -> jitter (the teacher's 2 px)
EPOCH = 60_000


def floor_seconds(arch: str, batch: int, dtype: torch.dtype, device: torch.device, repeats: int = 20) -> float:
    """Median seconds of one step's matmuls alone, in the order and layouts the fused step uses."""
    widths = [784] + [m.out_features for m in build_model(arch, 784, 10).linears]
    g = torch.Generator(device=device).manual_seed(0)
    layers = []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        def r(*shape):
            return torch.randn(*shape, generator=g, device=device).to(dtype)
        layers.append((i, r(batch, fan_in), r(fan_out, fan_in), r(fan_out), r(batch, fan_out)))

    def matmuls():
        for _, h, w, b, _ in layers:
            torch.addmm(b, h, w.t())
        for i, h, w, _, d in reversed(layers):
            torch.mm(d.t(), h)
            if i:
                torch.mm(d, w)

    for _ in range(3):
        matmuls()
    return statistics.median(timed(matmuls, device)[1] for _ in range(repeats))


def step_seconds(arch: str, batch: int, precision: str, fused: bool, steps: int, device: torch.device) -> float:
    """Seconds per step of ``fit`` over ``steps`` steps (one epoch), no evaluation or checkpoint."""
    n = steps * batch
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(n, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)
    cfg = TrainConfig(arch=arch, epochs=1, batch_size=batch, lr=0.01, jitter=NETS[arch], precision=precision,
                      fused=fused, device=device.type)
    model = new_model(cfg, 784, 10)
    x_dev, obj = x.to(device), HardLabels(y).to(device)
    fit(model, x_dev[: 4 * batch], HardLabels(y[: 4 * batch]).to(device), cfg, progress=False)  # warm-up
    hist, _ = timed(lambda: fit(model, x_dev, obj, cfg, progress=False), device)
    return hist[0]["seconds"] / steps


def profile(arch: str, batch: int, precision: str, steps: int, device: torch.device) -> None:
    """Where a fused training step's time goes, operator by operator (the view that shaped fused.py)."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    step_seconds(arch, batch, precision, True, steps, device)  # warm-up
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch_profile(activities=activities) as prof:
        seconds = step_seconds(arch, batch, precision, True, steps, device)
    print(f"{arch} batch {batch} {precision}: {1e3 * seconds:.3f} ms per step over {steps} steps")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--nets", nargs="+", default=list(NETS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=60, help="steps timed per round and path")
    ap.add_argument("--no-autograd", action="store_true", help="skip the autograd path")
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    ap.add_argument("--profile", metavar="ARCH", help="instead: print torch.profiler's table of this net's fused "
                                                    "training step (bf16 where available, batch --batch-sizes[0])")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.profile:
        return profile(args.profile, args.batch_sizes[0], resolve_precision("auto", device), args.steps, device)
    precisions = ["fp32"] + (["bf16"] if resolve_precision("auto", device) == "bf16" else [])
    env = environment(device)
    env["matmul_gflops"] = {p: round(matmul_throughput(torch.bfloat16 if p == "bf16" else torch.float32, device), 1)
                            for p in precisions}
    print(f"{env['cpu'].get('model', env['hardware'])}; threads {env['cpu_threads']}; dense matmul GFLOP/s "
          f"{env['matmul_gflops']}", flush=True)
    paths = [True] + ([] if args.no_autograd else [False])
    rows = []
    for arch in args.nets:
        for batch in args.batch_sizes:
            for precision in precisions:
                dtype = torch.bfloat16 if precision == "bf16" else torch.float32
                t0 = time.perf_counter()
                floors, steps = [], {p: [] for p in paths}
                for _ in range(args.rounds):
                    floors.append(floor_seconds(arch, batch, dtype, device))
                    for p in paths:
                        steps[p].append(step_seconds(arch, batch, precision, p, args.steps, device))
                for p in paths:
                    ratios = [s / f for s, f in zip(steps[p], floors)]
                    row = {"arch": arch, "batch_size": batch, "precision": precision,
                           "path": "fused" if p else "autograd", "floor_ms": spread([1e3 * f for f in floors]),
                           "step_ms": spread([1e3 * s for s in steps[p]]), "step_over_floor": spread(ratios),
                           "epoch_seconds": round(statistics.median(steps[p]) * -(-EPOCH // batch), 3),
                           "floor_epoch_seconds": round(statistics.median(floors) * -(-EPOCH // batch), 3)}
                    rows.append(row)
                    print(f"{arch:10s} batch {batch:4d} {precision} {row['path']:8s}: step "
                          f"{row['step_ms']['median']:7.3f} ms, floor {row['floor_ms']['median']:7.3f} ms, "
                          f"ratio {row['step_over_floor']['median']:.2f} ({min(ratios):.2f}-{max(ratios):.2f}), "
                          f"{row['epoch_seconds']:.2f} s/epoch  [{time.perf_counter() - t0:.0f} s]", flush=True)
    payload = {"benchmark": "roofline", **env, "rounds": args.rounds, "steps_per_round": args.steps,
               "seed": 0, "rows": rows}
    path = save(f"roofline-{device.type}.json", payload, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
