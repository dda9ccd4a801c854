"""Is bf16 as accurate as fp32? The packaged MNIST recipes in both precisions, seed by seed.

    python benchmarks/precision.py --data-dir DIR [--device cpu] [--seeds 3] [--teacher-epochs 10] \\
        [--student-epochs 10]

Per seed, from the same initialisation: the teacher recipe (2x1200, dropout, max-norm, jitter 2) and,
from that precision's teacher, the distilled-student recipe (2x800, T = 20), each once with
``precision=fp32`` and once with ``precision=bf16`` (bf16 matmuls, fp32 master weights and optimiser),
both on the fused path, shortened to the given epochs. Trained on the training set minus a 5,000-image
validation split; validation and test errors and seconds per epoch are reported with the per-seed
differences (bf16 - fp32) and their mean ± std, next to the seed-to-seed spread of fp32 itself.
Writes benchmarks/results/precision-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save  # noqa: E402

from darkknowledge.data import load_mnist, split_validation  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.experiments.mnist import DISTILL, DISTILLED, TEACHER  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model  # noqa: E402


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=10)
    ap.add_argument("--student-epochs", type=int, default=10)
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60,000)")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    args = ap.parse_args()
    data = load_mnist(args.data_dir)
    if args.train_limit:
        data = replace(data, x_train=data.x_train[:args.train_limit], y_train=data.y_train[:args.train_limit])
    x, y, xv, yv = split_validation(data.x_train, data.y_train, args.val_size, seed=0)

    def train(cfg, objective, desc):
        model = new_model(cfg, data.in_features, data.num_classes)
        hist = fit(model, x, objective, cfg, x_test=xv, y_test=yv, desc=desc)
        return model, {"val_errors": hist[-1]["test_errors"],
                       "test_errors": evaluate(model, data.x_test, data.y_test, data.num_classes)["errors"],
                       "seconds_per_epoch": statistics.median(h["seconds"] for h in hist)}

    rows = []
    for seed in range(args.seeds):
        for precision in ("fp32", "bf16"):
            common = dict(seed=seed, device=args.device, precision=precision)
            t_cfg = replace(TEACHER, epochs=args.teacher_epochs, eval_every=args.teacher_epochs, **common)
            teacher, t = train(t_cfg, HardLabels(y), f"teacher {precision} s{seed}")
            soft = SoftTargets(Teacher([teacher]).soft_targets(x, DISTILL.temperature), y, DISTILL)
            d_cfg = replace(DISTILLED, epochs=args.student_epochs, eval_every=args.student_epochs, **common)
            _, d = train(d_cfg, soft, f"distilled {precision} s{seed}")
            rows += [{"role": "teacher", "seed": seed, "precision": precision, **t},
                     {"role": "distilled", "seed": seed, "precision": precision, **d}]
    summary = {}
    for role in ("teacher", "distilled"):
        by = {p: [r for r in rows if r["role"] == role and r["precision"] == p] for p in ("fp32", "bf16")}
        summary[role] = {
            **{f"{p}_test_errors": mean_std([r["test_errors"] for r in by[p]]) for p in by},
            **{f"{p}_val_errors": mean_std([r["val_errors"] for r in by[p]]) for p in by},
            "test_difference_bf16_minus_fp32": mean_std([b["test_errors"] - f["test_errors"]
                                                        for f, b in zip(by["fp32"], by["bf16"])]),
            "epoch_speedup_bf16": statistics.median(f["seconds_per_epoch"] / b["seconds_per_epoch"]
                                                    for f, b in zip(by["fp32"], by["bf16"]))}
    result = {"benchmark": "precision", "seeds": list(range(args.seeds)), "teacher_epochs": args.teacher_epochs,
              "student_epochs": args.student_epochs, "train_images": len(x), "rows": rows, "summary": summary,
              **environment(torch.device(args.device))}
    print(f"{'role':<10} {'fp32 test':>14} {'bf16 test':>14} {'bf16 - fp32':>14} {'bf16 speed-up':>13}")
    for role, s in summary.items():
        f, b, d = s["fp32_test_errors"], s["bf16_test_errors"], s["test_difference_bf16_minus_fp32"]
        print(f"{role:<10} {f['mean']:>8.1f} ± {f['std']:<4.1f} {b['mean']:>8.1f} ± {b['std']:<4.1f} "
              f"{d['mean']:>+8.1f} ± {d['std']:<4.1f} {s['epoch_speedup_bf16']:>12.2f}x")
    print(f"wrote {save(f'precision-{torch.device(args.device).type}.json', result, args.out_dir)}")


if __name__ == "__main__":
    main()
