"""Fast path vs a straightforward PyTorch loop on MNIST, measured side by side in one run.

    python benchmarks/mnist_speed.py --data-dir DIR [--device cuda] [--epochs 2] [--train-limit 0]

For the teacher (2x1200, dropout, max-norm, jitter 2 px), the hard-label student (2x800) and the
distilled student (2x800, T = 20), both implementations train the same architecture for the same
epochs from the same data:

  naive  a DataLoader over CPU tensors (batch 128, shuffled), each batch copied to the device,
         jitter on the batch, fp32, and for distillation the teacher re-run on every batch;
  fast   darkknowledge's fit: data resident on the device, jitter on the device, teacher soft
         targets computed once (cached), no per-step host sync; at batch 128 as is, through
         torch.compile (fast-compile) and with bf16 autocast (fast-bf16), and at a tuned batch in
         fp32 and bf16. Compile time is included in fast-compile's seconds.

Also reported: distillation overhead (distilled epoch time / hard-label epoch time, fast path) and
test errors, so a speed-up never hides an accuracy loss. Writes benchmarks/results/mnist-speed-<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, timed  # noqa: E402

from darkknowledge.config import DistillConfig, TrainConfig  # noqa: E402
from darkknowledge.data import jitter, load_mnist  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.losses import distillation_loss  # noqa: E402
from darkknowledge.models import apply_constraints  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model  # noqa: E402


def naive_fit(model, x_cpu, y_cpu, cfg: TrainConfig, device, teacher=None, temperature=20.0):
    """What a straightforward PyTorch user writes: DataLoader, per-batch copies, teacher per batch."""
    torch.manual_seed(cfg.seed)
    model.to(device).train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loader = DataLoader(TensorDataset(x_cpu, y_cpu), batch_size=128, shuffle=True)
    total = cfg.epochs * len(loader)
    step = 0
    for _ in range(cfg.epochs):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            if cfg.jitter:
                xb = jitter(xb, cfg.jitter)
            for g in opt.param_groups:  # same cosine schedule as the fast path
                g["lr"] = cfg.lr * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / total)).item())
            logits = model(xb)
            if teacher is None:
                loss = F.cross_entropy(logits, yb)
            else:
                with torch.no_grad():
                    p = torch.softmax(teacher(xb) / temperature, -1)
                loss = distillation_loss(logits, p, temperature)
            opt.zero_grad()
            loss.backward()
            opt.step()
            apply_constraints(model)
            step += 1
            loss.item()  # the usual per-step logging sync
    return model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--tuned-batch", type=int, default=512)
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-compile", action="store_true",
                    help="leave out the torch.compile variants (each compiles for seconds before it trains)")
    args = ap.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    data = load_mnist(args.data_dir)
    if args.train_limit:
        data = dataclasses.replace(data, x_train=data.x_train[:args.train_limit], y_train=data.y_train[:args.train_limit])
    x_dev, y_dev = data.x_train.to(device), data.y_train.to(device)
    xt, yt = data.x_test.to(device), data.y_test.to(device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    teacher_cfg = TrainConfig(arch="mlp-1200x2", lr=0.1, jitter=2, epochs=args.epochs, batch_size=128, seed=args.seed, device=dev)
    student_cfg = TrainConfig(arch="mlp-800x2", lr=0.05, epochs=args.epochs, batch_size=128, seed=args.seed, device=dev)
    dcfg = DistillConfig(temperature=20.0)
    rows = []

    def record(stage, impl, batch, seconds, model):
        errors = evaluate(model, xt, yt, 10)["errors"]
        rows.append({"stage": stage, "impl": impl, "batch_size": batch, "seconds": round(seconds, 3),
                     "seconds_per_epoch": round(seconds / args.epochs, 3), "test_errors": errors})
        print(f"{stage:10s} {impl:6s} batch {batch:5d}: {seconds:8.2f} s  ({errors} test errors)", flush=True)
        return model

    # Teacher (both implementations), then students from the fast teacher so both distil the same one.
    m, s = timed(lambda: naive_fit(new_model(teacher_cfg, 784, 10), data.x_train, data.y_train, teacher_cfg, device), device)
    record("teacher", "naive", 128, s, m)
    # (name, batch, precision, torch.compile): the fast path as is, then what might speed it further.
    variants = [("fast", 128, "fp32", False), ("fast-compile", 128, "fp32", True), ("fast-bf16", 128, "bf16", False),
                ("fast", args.tuned_batch, "fp32", False), ("fast-bf16", args.tuned_batch, "bf16", False)]
    variants = [v for v in variants if not (args.no_compile and v[3])]
    for impl, bs, prec, comp in variants:
        cfg = dataclasses.replace(teacher_cfg, batch_size=bs, precision=prec, compile=comp)
        model = new_model(cfg, 784, 10)
        _, s = timed(lambda: fit(model, x_dev, HardLabels(y_dev), cfg, progress=False), device)
        record("teacher", impl, bs, s, model)
        if (impl, bs) == ("fast", args.tuned_batch):
            teacher_model = model
    teacher_model.eval()

    m, s = timed(lambda: naive_fit(new_model(student_cfg, 784, 10), data.x_train, data.y_train, student_cfg, device), device)
    record("student", "naive", 128, s, m)
    m, s = timed(lambda: naive_fit(new_model(student_cfg, 784, 10), data.x_train, data.y_train, student_cfg, device,
                                   teacher=teacher_model), device)
    record("distilled", "naive", 128, s, m)
    fast_epoch = {}  # median per-epoch training seconds (fit's own history), for the overhead ratio
    for impl, bs, prec, comp in variants:
        cfg = dataclasses.replace(student_cfg, batch_size=bs, precision=prec, compile=comp)
        model = new_model(cfg, 784, 10)
        hist, s = timed(lambda: fit(model, x_dev, HardLabels(y_dev), cfg, progress=False), device)
        record("student", impl, bs, s, model)
        fast_epoch[("student", impl, bs)] = statistics.median(h["seconds"] for h in hist)
        model = new_model(cfg, 784, 10)
        teacher = Teacher([teacher_model], archs=["mlp-1200x2"])  # fresh cache: soft-target time is included
        targets, t_targets = timed(lambda: teacher.soft_targets(x_dev, 20.0), device)
        hist, s = timed(lambda: fit(model, x_dev, SoftTargets(targets, y_dev, dcfg), cfg, progress=False), device)
        record("distilled", impl, bs, s + t_targets, model)
        rows[-1]["soft_target_seconds"] = round(t_targets, 3)
        fast_epoch[("distilled", impl, bs)] = statistics.median(h["seconds"] for h in hist)

    def total(impl, bs):
        return sum(r["seconds"] for r in rows if r["impl"] == impl and r["batch_size"] == bs)

    naive = total("naive", 128)
    summary = {f"speedup_whole_table_{impl}_batch{bs}": round(naive / total(impl, bs), 2) for impl, bs, *_ in variants}
    summary.update({f"distillation_overhead_{impl}_batch{bs}":
                    round(fast_epoch[("distilled", impl, bs)] / fast_epoch[("student", impl, bs)], 3)
                    for impl, bs, *_ in variants})
    summary["median_epoch_seconds_fast"] = {"@".join(map(str, k)): round(v, 3) for k, v in fast_epoch.items()}
    payload = {"benchmark": "mnist_speed", **environment(device), "epochs": args.epochs, "seed": args.seed,
               "train_images": len(data.y_train), "rows": rows, "summary": summary}
    path = save(f"mnist-speed-{dev}.json", payload, out_dir=args.out_dir)
    print("\n".join(f"{k}: {v}" for k, v in summary.items()))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
