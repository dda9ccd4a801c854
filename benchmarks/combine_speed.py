"""Throughput of ``specialists.combine`` (paper section 5.4) vs a per-example SciPy solve, side by side.

    python benchmarks/combine_speed.py [--device cpu|cuda] [--examples 10000] [--specialists 10 20]

Inputs shaped like CIFAR-100's: C = 100 classes, M specialists of 5..10 classes each (overlapping: some
classes in two or more subsets, some in none), generalist and specialist distributions drawn from softmaxes
of random logits (scale 3: peaked, like a trained net's). For every (M, top_n): examples/s of ``combine``
(median and spread over repeats), its iterations, its distance to a 1e-13-tolerance solve, and, for the
baseline, examples/s of SciPy's L-BFGS on each example alone (an independent optimiser on the same problem,
a sample of examples). Writes benchmarks/results/combine-speed-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save  # noqa: E402

from darkknowledge.specialists import active_specialists, combine  # noqa: E402


def problem(n: int, c: int, m: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    subsets = [sorted(torch.randperm(c, generator=g)[:int(torch.randint(5, 11, (1,), generator=g))].tolist())
               for _ in range(m)]
    pg = torch.softmax(3 * torch.randn(n, c, generator=g), 1)
    ps = [torch.softmax(3 * torch.randn(n, len(s) + 1, generator=g), 1) for s in subsets]
    return pg, ps, subsets


def scipy_rate(pg, ps, subsets, top_n, sample: int) -> float:
    """Examples/s of SciPy's L-BFGS-B, one example at a time (the objective and gradient in NumPy)."""
    from scipy.optimize import minimize

    c = pg.shape[1]
    active = active_specialists(pg, subsets, top_n).numpy()
    outside = [np.setdiff1d(np.arange(c), s) for s in subsets]
    t0 = time.perf_counter()
    for i in range(sample):
        p, pm = pg[i].double().numpy(), [x[i].double().numpy() for x in ps]

        def f(z):
            q = np.exp(z - z.max())
            q /= q.sum()
            value, grad = float((p * np.log(p / q)).sum()), -p / q
            for m, s in enumerate(subsets):
                if active[i, m]:
                    qs = q[s]
                    qm = np.append(qs, q[outside[m]].sum())
                    value += float((pm[m] * np.log(pm[m] / qm)).sum())
                    grad[s] -= pm[m][:-1] / qs
                    grad[outside[m]] -= pm[m][-1] / qm[-1]
            return value, q * (grad - q @ grad)

        minimize(f, np.log(p), jac=True, method="L-BFGS-B", options={"gtol": 1e-8})
    return sample / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--examples", type=int, default=10_000)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--specialists", type=int, nargs="+", default=[10, 20])
    ap.add_argument("--top-n", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scipy-sample", type=int, default=30)
    ap.add_argument("--out-dir", default=None, help="default: benchmarks/results")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = []
    for m in args.specialists:
        pg, ps, subsets = problem(args.examples, args.classes, m)
        pg, ps = pg.to(device), [p.to(device) for p in ps]
        cover = np.bincount(np.bincount([k for s in subsets for k in s], minlength=args.classes))
        for top_n in args.top_n:
            combine(pg[:256], [p[:256] for p in ps], subsets, top_n)  # warm-up
            rates, iters = [], 0
            for _ in range(args.repeats):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                q, iters = combine(pg, ps, subsets, top_n, return_iterations=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                rates.append(args.examples / (time.perf_counter() - t0))
            exact = combine(pg.double(), [p.double() for p in ps], subsets, top_n, tol=1e-13, max_iter=100_000)
            base = scipy_rate(pg.cpu(), [p.cpu() for p in ps], subsets, top_n, args.scipy_sample)
            row = {"specialists": m, "classes": args.classes, "top_n": top_n, "examples": args.examples,
                   "examples_per_second_median": round(statistics.median(rates), 1),
                   "examples_per_second_min": round(min(rates), 1), "examples_per_second_max": round(max(rates), 1),
                   "iterations": iters, "max_abs_diff_to_tight_solve": float((q.double() - exact).abs().max()),
                   "active_per_example": float(active_specialists(pg, subsets, top_n).sum(1).float().mean()),
                   "classes_by_coverage": cover.tolist(),
                   "scipy_examples_per_second": round(base, 1),
                   "speedup_vs_scipy": round(statistics.median(rates) / base, 1)}
            rows.append(row)
            print(f"M={m:3d} top_n={top_n}: {row['examples_per_second_median']:>10,.0f} ex/s "
                  f"[{row['examples_per_second_min']:,.0f}..{row['examples_per_second_max']:,.0f}], "
                  f"{iters} iterations, max |q - q*| {row['max_abs_diff_to_tight_solve']:.1e}; "
                  f"SciPy {base:,.0f} ex/s ({row['speedup_vs_scipy']}x)")
    result = {"benchmark": "combine_speed", **environment(device), "seed": 0, "repeats": args.repeats,
              "tolerance": "combine default (max-abs change 1e-7 per iteration)", "rows": rows}
    path = save(f"combine-speed-{device.type}.json", result, args.out_dir)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
