"""One MNIST tuning run: train on the training set minus a validation split, choose on validation.

    python benchmarks/mnist_tuning.py --data-dir DIR --role teacher --set lr=0.2 batch_size=256 epochs=100 \\
        [--teacher CKPT] [--save CKPT] [--tag NAME] [--threads 1]

``--role`` picks the packaged recipe (teacher, student or distilled) that ``--set`` overrides. The
validation split is carved from the 60,000 training images (``--val-size``, seeded by ``--val-seed``,
the split ``dk reproduce mnist`` also uses for bias offsets); test errors are recorded beside the
validation errors, never used to choose. Each run appends one JSON line (config, per-epoch validation
errors, final validation and test errors, seconds, hardware, commit) to
benchmarks/results/mnist-tuning.jsonl; ``recipes/README.md`` tabulates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_jsonl, environment, parse_overrides  # noqa: E402

from darkknowledge.config import DistillConfig, TrainConfig, build_configs  # noqa: E402
from darkknowledge.data import load_mnist, split_validation  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.config import packaged_recipe  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--role", choices=["teacher", "student", "distilled"], required=True)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides (YAML values)")
    ap.add_argument("--teacher", help="teacher checkpoint (role distilled)")
    ap.add_argument("--save", help="write the trained model's checkpoint here")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--val-seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "mnist-tuning.jsonl"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)
    classes = (TrainConfig, DistillConfig)
    base = packaged_recipe("mnist", args.role, classes)
    merged = {**{k: v for c in classes for k, v in dataclasses.asdict(base[c]).items()}, **overrides}
    cfgs = build_configs(classes, merged, "--set")
    cfg, dcfg = cfgs[TrainConfig], cfgs[DistillConfig]
    data = load_mnist(args.data_dir)
    x, y, x_val, y_val = split_validation(data.x_train, data.y_train, args.val_size, seed=args.val_seed)
    if args.role == "distilled":
        teacher = Teacher.from_checkpoints([args.teacher])
        objective = SoftTargets(teacher.soft_targets(x, dcfg.temperature), y, dcfg)
    else:
        objective = HardLabels(y)
    t0 = time.perf_counter()
    model = new_model(cfg, data.in_features, data.num_classes)
    hist = fit(model, x, objective, cfg, x_test=x_val, y_test=y_val, checkpoint=args.save,
               desc=f"{args.role} {args.tag}", meta={"role": args.role, "val_size": args.val_size})
    seconds = time.perf_counter() - t0
    test = evaluate(model, data.x_test, data.y_test, data.num_classes)["errors"]
    record = {"tag": args.tag, "role": args.role, "overrides": overrides, "train_config": dataclasses.asdict(cfg),
              "distill_config": dataclasses.asdict(dcfg) if args.role == "distilled" else None,
              "teacher": args.teacher, "val_size": args.val_size, "val_seed": args.val_seed,
              "val_errors": hist[-1]["test_errors"], "test_errors": test,
              "val_curve": [(h["epoch"], h["test_errors"]) for h in hist if "test_errors" in h],
              "loss_max": max(h["loss_max"] for h in hist), "seconds": round(seconds, 1),
              **{k: v for k, v in environment(torch.device("cpu")).items() if k in ("cpu", "torch", "commit")}}
    append_jsonl(args.out, record)
    print(f"{args.role} {args.tag}: validation errors {record['val_errors']} of {args.val_size}, "
          f"test errors {test}, {seconds:.0f} s")


if __name__ == "__main__":
    main()
