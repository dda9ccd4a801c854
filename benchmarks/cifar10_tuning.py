"""One CIFAR-10 tuning run on a reproduction's validation split: choose settings there, never on test.

    python benchmarks/cifar10_tuning.py --data-dir DIR --scale quick --role distilled \\
        --members runs/c10-quick/members --set temperature=5 hard_weight=0 epochs=16 [--views 8] [--threads 1]

Roles: ``member`` (hard labels on the whole train split, the single-net baseline), ``distilled`` (the
members' ensemble as teacher, over a bank of ``--views`` augmented views), ``hard_small`` and
``soft_small`` (section 6: the scale's class-balanced fraction of the train split; the soft run's teacher
is the first of ``--members``). ``--set`` overrides the packaged recipe (member.yaml, or distilled.yaml for
the distilled and soft roles). The split is the one ``dk reproduce cifar10 --scale S`` uses (its train
limit and validation carve-out); test accuracy is recorded beside, never used to choose. Each run appends
one JSON line to benchmarks/results/cifar10-tuning.jsonl; ``recipes/README.md`` tabulates them.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, append_jsonl, environment, parse_overrides  # noqa: E402

from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig, build_configs  # noqa: E402
from darkknowledge.data import balanced_fraction  # noqa: E402
from darkknowledge.evaluation import errors_from_logits  # noqa: E402
from darkknowledge.experiments import cifar10  # noqa: E402
from darkknowledge.evaluation import predict_logits  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.workflows import distill, train  # noqa: E402

ROLES = ("member", "distilled", "hard_small", "soft_small")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--scale", default="quick", choices=sorted(cifar10.SCALES))
    ap.add_argument("--role", choices=ROLES, required=True)
    ap.add_argument("--members", help="directory of member checkpoints member0, member1, ... (the teacher)")
    ap.add_argument("--count", type=int, default=0, help="members in the teacher (default: all found)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides (YAML values)")
    ap.add_argument("--views", type=int, default=0, help="view bank size (0: the scale's; -1: no bank)")
    ap.add_argument("--mixup", type=float, default=0.0, help="mixup alpha of the view bank (0: unmixed views)")
    ap.add_argument("--cache", help="soft-target cache directory shared by runs with the same teacher")
    ap.add_argument("--train-limit", type=int, default=0, help="images of the split before validation (0: the scale's)")
    ap.add_argument("--save", help="write the trained model's checkpoint to this directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tag", default="")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", default=str(RESULTS / "cifar10-tuning.jsonl"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sc = cifar10.SCALES[args.scale]
    if args.train_limit:
        sc = replace(sc, train_limit=args.train_limit)
    soft = args.role in ("distilled", "soft_small")
    classes = (TrainConfig, DistillConfig)
    epochs = sc.small_epochs if "small" in args.role else sc.student_epochs if soft else sc.member_epochs
    # The recipe exactly as the reproduction scales it (cifar10.scaled: net, batch and the peak lr scaled linearly
    # with it, warm-up); section 6 at its batch (the soft run's bank: --views). Before 2026-12-06 this script kept
    # the recipe's lr at the scale's batch (section 6: lr 1.5 at batch 64, 16x the reproduction's).
    recipe = cifar10.scaled(cifar10.DISTILLED if soft else cifar10.MEMBER, sc, epochs, args.seed, "cpu",
                            cifar10.SMALL_BATCH if "small" in args.role else 0)
    base = {**dataclasses.asdict(recipe), **dataclasses.asdict(cifar10.DISTILL)}
    overrides = parse_overrides(args.set)
    if "batch_size" in overrides and "lr" not in overrides:  # another batch: the lr scaled with it, as the scales do
        overrides["lr"] = recipe.lr * overrides["batch_size"] / recipe.batch_size
    cfgs = build_configs(classes, {**base, **overrides}, "--set")
    cfg, dcfg = cfgs[TrainConfig], cfgs[DistillConfig]
    cfg = replace(cfg, eval_every=cfg.epochs)
    data, (x_val, y_val) = cifar10.load_data_for(args.data_dir, sc, torch.device("cpu"))
    x, y = data.x_train, data.y_train
    if "small" in args.role:
        x, y = balanced_fraction(x, y, sc.fraction, seed=args.seed)
    default_views = sc.small_views if "small" in args.role else sc.views
    views = default_views if args.views == 0 else max(args.views, 0)
    t0 = time.perf_counter()
    if soft:
        if not args.members:
            ap.error(f"--role {args.role} needs --members")
        paths = sorted(Path(args.members).glob("member*"))
        count = 1 if args.role == "soft_small" else (args.count or len(paths))
        teacher = Teacher.from_checkpoints(paths[:count], device="cpu", cache_dir=args.cache)
        tcfg = TransferConfig(view_bank=views if (cfg.jitter or cfg.flip) else 0, mixup=args.mixup)
        r = distill(args.role, data, teacher, cfg, dcfg, tcfg, transfer=(x, y), out=args.save, progress=False)
    else:
        r = train(args.role, data, cfg, transfer=(x, y), out=args.save, progress=False)
    seconds = time.perf_counter() - t0
    val = errors_from_logits(predict_logits(r.model, x_val), y_val, data.num_classes)
    fit = errors_from_logits(predict_logits(r.model, x), y, data.num_classes)
    row = {"role": args.role, "tag": args.tag, "scale": args.scale, "seed": args.seed, "overrides": overrides,
           "views": tcfg.view_bank if soft else None, "mixup": tcfg.mixup if soft else None, "teacher_members": count if soft else None,
           "config": {**dataclasses.asdict(cfg), **(dataclasses.asdict(dcfg) if soft else {})},
           "train_limit": sc.train_limit, "train_size": len(x), "val_size": len(y_val), "val_errors": val["errors"],
           "val_accuracy": round(val["accuracy"], 4), "train_accuracy": round(fit["accuracy"], 4),
           "test_accuracy": round(r.test["accuracy"], 4), "seconds": round(seconds, 1),
           **environment(torch.device("cpu"))}
    append_jsonl(args.out, row)
    print(f"{args.role} {args.tag} {overrides}: val errors {val['errors']}/{len(y_val)}, "
          f"train acc {fit['accuracy']:.4f}, test acc {r.test['accuracy']:.4f}, {seconds:.0f} s")


if __name__ == "__main__":
    main()
