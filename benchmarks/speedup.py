"""Today's MNIST training path against the one before the fast CPU path, at equal errors.

    python benchmarks/speedup.py --data-dir DIR [--device cpu] [--epochs 10] [--seeds 1]

"before": what `fit` did before the fused step: fp32, autograd, batch 128 (the recipes' old batch),
lr 0.1 with a 1-epoch warm-up. "now": the packaged recipes as they are (precision auto: bf16 where the
CPU has it, the fused MLP step, batch 256, their lr). For the teacher (2x1200, dropout, max-norm,
2-pixel jitter) and the distilled 2x800 student (T = 20, from the "now" teacher), both paths train
``--epochs`` epochs from the same initialisation on the training set minus a 5,000-image validation
split, alternating, and report seconds per epoch (median over epochs), validation and test errors,
and the speed-up. Writes benchmarks/results/speedup-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, matmul_throughput, save  # noqa: E402

from darkknowledge.data import load_mnist, split_validation  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.experiments.mnist import DISTILL, DISTILLED, TEACHER  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model  # noqa: E402
from darkknowledge.device import resolve_precision  # noqa: E402

BEFORE = dict(precision="fp32", fused=False, batch_size=128, lr=0.1, warmup_epochs=1.0, grad_clip=0.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60,000)")
    ap.add_argument("--val-size", type=int, default=5000, help="validation images carved from the training set")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    args = ap.parse_args()
    device = torch.device(args.device)
    data = load_mnist(args.data_dir)
    if args.train_limit:
        data = replace(data, x_train=data.x_train[:args.train_limit], y_train=data.y_train[:args.train_limit])
    x, y, xv, yv = split_validation(data.x_train, data.y_train, args.val_size, seed=0)
    rows = []

    def train(role, cfg, objective, seed):
        model = new_model(cfg, data.in_features, data.num_classes)
        hist = fit(model, x, objective, cfg, x_test=xv, y_test=yv, desc=f"{role} s{seed}")
        test = evaluate(model, data.x_test, data.y_test, data.num_classes)["errors"]
        return model, {"seconds_per_epoch": statistics.median(h["seconds"] for h in hist),
                       "seconds": sum(h["seconds"] for h in hist), "val_errors": hist[-1]["test_errors"],
                       "test_errors": test}

    for seed in range(args.seeds):
        common = dict(epochs=args.epochs, seed=seed, device=args.device, eval_every=args.epochs)
        now_t = replace(TEACHER, **common)
        teacher, t_now = train("teacher now", now_t, HardLabels(y), seed)
        _, t_before = train("teacher before", replace(now_t, **BEFORE), HardLabels(y), seed)
        soft = SoftTargets(Teacher([teacher]).soft_targets(x, DISTILL.temperature), y, DISTILL)
        now_d = replace(DISTILLED, **common)
        _, d_now = train("distilled now", now_d, soft, seed)
        _, d_before = train("distilled before", replace(now_d, **BEFORE), soft, seed)
        for role, before, now, cfg in (("teacher", t_before, t_now, now_t), ("distilled", d_before, d_now, now_d)):
            rows.append({"role": role, "seed": seed, "before": before, "now": now,
                         "now_config": {"precision": resolve_precision(cfg.precision, device), "fused": cfg.fused,
                                        "batch_size": cfg.batch_size, "lr": cfg.lr},
                         "speedup": before["seconds_per_epoch"] / now["seconds_per_epoch"]})
    result = {"benchmark": "speedup", "epochs": args.epochs, "train_images": len(x), "val_images": len(xv), "before_config": BEFORE, "rows": rows,
              # bf16 only where the device computes it natively: emulated, a 2048^3 product takes minutes.
              "matmul_gflops": {p: matmul_throughput(torch.bfloat16 if p == "bf16" else torch.float32, device)
                                for p in ["fp32"] + (["bf16"] if resolve_precision("auto", device) == "bf16" else [])},
              **environment(device)}
    print(f"{'role':<10} {'seed':>4} {'before s/ep':>11} {'now s/ep':>8} {'speed-up':>8}  val before/now  test before/now")
    for r in rows:
        b, n = r["before"], r["now"]
        print(f"{r['role']:<10} {r['seed']:>4} {b['seconds_per_epoch']:>11.2f} {n['seconds_per_epoch']:>8.2f} "
              f"{r['speedup']:>7.2f}x  {b['val_errors']:>6}/{n['val_errors']:<6}  {b['test_errors']:>6}/{n['test_errors']}")
    print(f"wrote {save(f'speedup-{device.type}.json', result, args.out_dir)}")


if __name__ == "__main__":
    main()
