"""darkknowledge vs torchdistill on CIFAR-10 ensemble distillation, side by side in one run: wall time to the
same test accuracy.

    # its own environment: torchdistill needs torchvision, which needs its matching torch
    python -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill
    benchmarks/.venv-peer/bin/pip install --no-deps -e .
    # the cumbersome teacher: an ensemble of the wide net (airnet-64-256-256, ~4x the student's FLOPs each)
    dk train --data cifar10:DIR --config src/darkknowledge/recipes/cifar10/member.yaml --arch airnet-64-256-256 \\
        --members 4 --out runs/wide
    benchmarks/.venv-peer/bin/python benchmarks/peer_torchdistill_cifar.py --data-dir DIR \\
        --member runs/wide/member0 --member ... [--recipe cifar10/distilled] [--arch NET] [--epochs N] [--views 8]
    # or, cheaper (benchmarks/cpu_long.sh's peer step): three airnet-32-128-128 nets as the teacher
    # (time_to_accuracy.py --save DIR), --arch airnet-16-64-64 as the student

The paper's setting: the members' arithmetic-mean distribution at T as the teacher, a small student (the
`cifar10/distilled` recipe: airnet-32-128-128, Nesterov SGD at batch 1024, BN shifts at 64x the rate, a
warm-up then a linear fall, 2-pixel translations and mirrors, T and the hard-label weight of the recipe),
all 50,000 training images, the same student initialisation, optimiser, per-step schedule and batch size
for both. The loss is torchdistill's KDLoss (alpha x CE + beta x T^2 x KL), the recipe's weights.
torchdistill runs its DistillationBox loop as its examples do (a DataLoader with torchvision transforms, the
ensemble re-run on every batch), its optimiser and scheduler replaced by the same SGD and per-step schedule
darkknowledge uses, so only the loop differs; ``--peer-precision`` bf16 (default where the CPU or GPU has it)
runs its forward passes under autocast like darkknowledge's, fp32 as it runs out of the box. darkknowledge
runs `workflows.distill` with a bank of ``--views`` augmented views whose ensemble targets are computed
once (inside its timed region). Both measure test accuracy on a seeded 2,000-image test sample after every
epoch (inside the timed region for both); time to accuracy is each one's seconds until its curve first
reaches the lower of the two final curve accuracies. Writes
benchmarks/results/peer-torchdistill-cifar10-<device>-<student>-e<epochs>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, sync  # noqa: E402

from darkknowledge.checkpoint import load_checkpoint  # noqa: E402
from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig, packaged_recipe  # noqa: E402
from darkknowledge.data import channel_stats, load_cifar  # noqa: E402
from darkknowledge.device import resolve_precision  # noqa: E402
from darkknowledge.errors import DKError  # noqa: E402
from darkknowledge.evaluation import errors_from_logits, evaluate, predict_logits  # noqa: E402
from darkknowledge.losses import ensemble_probs  # noqa: E402
from darkknowledge.models import build_model  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import lr_at, make_sgd, new_model, param_groups  # noqa: E402
from darkknowledge.workflows import distill  # noqa: E402

CURVE = 2000


class Augmented(Dataset):
    """CIFAR uint8 tensors through torchvision's random crop (``pad``-pixel padding) and mirror, per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, pad: int) -> None:
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.tf = v2.Compose([v2.RandomCrop(32, padding=pad), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.tf(self.x[i]), self.y[i]


class EnsembleLogits(nn.Module):
    """The members' arithmetic-mean distribution at T, as logits KDLoss turns back into it:
    softmax(T * log(mean_m softmax(z_m / T)) / T) = mean_m softmax(z_m / T)."""

    def __init__(self, members: list[nn.Module], temperature: float) -> None:
        super().__init__()
        self.members, self.t = nn.ModuleList(members), temperature

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack([m(x).float() for m in self.members])
        return self.t * ensemble_probs(logits, self.t, "arithmetic").clamp_min(1e-30).log()


def curve_accuracy(model: nn.Module, curve: tuple[torch.Tensor, torch.Tensor]) -> float:
    return errors_from_logits(predict_logits(model, curve[0]), curve[1], 10)["accuracy"]


def time_to(curve: list[dict], target: float, offset: float = 0.0) -> float | None:
    """Seconds (``offset`` plus the epochs' seconds) until the curve first reaches ``target`` accuracy."""
    elapsed = offset
    for point in curve:
        elapsed += point["seconds"]
        if point["accuracy"] >= target - 1e-9:
            return round(elapsed, 2)
    return None


def torchdistill_distill(teacher: nn.Module, student: nn.Module, x, y, cfg: TrainConfig, dcfg: DistillConfig,
                         device: torch.device, bf16: bool, curve) -> tuple[list[dict], str]:
    import torchdistill
    from torchdistill.core.distillation import get_distillation_box

    steps_per_epoch = math.ceil(len(y) / cfg.batch_size)
    config = {
        "num_epochs": cfg.epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": cfg.batch_size, "num_workers": 0}, "requires_supp": True},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "forward_hook": {"input": [], "output": []},
                    "wrapper": None, "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [], "frozen_modules": [],
                    "forward_hook": {"input": [], "output": []}, "wrapper": None, "requires_grad": True},
        # Replaced below by darkknowledge's SGD and schedule; torchdistill needs one to build the box.
        "optimizer": {"key": "SGD", "kwargs": {"lr": cfg.lr, "momentum": cfg.momentum}},
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": lambda step: 1.0}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": dcfg.temperature, "alpha": dcfg.hard_weight,
                                        "beta": dcfg.soft_weight, "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    frozen = {name for name, p in student.named_parameters() if not p.requires_grad}
    box = get_distillation_box(teacher, student, {"train": Augmented(x, y, cfg.jitter)}, config, device, None,
                               False, 1)
    for name, p in student.named_parameters():  # the box unfreezes the student: airnet's frozen parts stay frozen
        p.requires_grad_(name not in frozen)
    if not (hasattr(box, "optimizer") and hasattr(box, "lr_scheduler")):
        raise SystemExit("error: this torchdistill's DistillationBox has no optimizer / lr_scheduler to replace")
    box.optimizer = make_sgd(param_groups(student, cfg), cfg, device)
    box.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
        box.optimizer, lambda step: lr_at(cfg, step, steps_per_epoch) / cfg.lr)
    points = []
    for epoch in range(cfg.epochs):
        sync(device)
        t0 = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        student.train()
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss)
        box.post_epoch_process()
        accuracy = curve_accuracy(student, curve)
        sync(device)
        points.append({"epoch": epoch + 1, "seconds": round(time.perf_counter() - t0, 2), "accuracy": accuracy,
                       "loss": float(loss)})
        print(f"torchdistill epoch {epoch + 1}: {points[-1]}", flush=True)
    return points, torchdistill.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory with the CIFAR-10 pickles")
    ap.add_argument("--member", action="append", required=True, help="a member checkpoint; repeat for each")
    ap.add_argument("--recipe", default="cifar10/distilled", help="the student's packaged recipe (FAMILY/NAME)")
    ap.add_argument("--arch", default=None, help="the student's net (default: the recipe's)")
    ap.add_argument("--epochs", type=int, default=0, help="0: the recipe's")
    ap.add_argument("--views", type=int, default=8, help="darkknowledge's bank of augmented views")
    ap.add_argument("--peer-precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="torchdistill's forward passes: bf16 autocast (auto: where the device has it) or fp32")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    args = ap.parse_args()
    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    family, _, name = args.recipe.partition("/")
    try:
        recipe = packaged_recipe(family, name, (TrainConfig, DistillConfig))
        data = load_cifar(args.data_dir, "cifar10")
        loaded = [load_checkpoint(p, device=device) for p in args.member]
        if args.arch:
            build_model(args.arch, data.in_shape, 10)  # an unknown net fails here, before any work
    except DKError as e:
        raise SystemExit(f"error: {e}") from None
    cfg = replace(recipe[TrainConfig], seed=args.seed, device=dev, epochs=args.epochs or recipe[TrainConfig].epochs,
                  arch=args.arch or recipe[TrainConfig].arch)
    dcfg = recipe[DistillConfig]
    members = [m.eval() for m, _, _ in loaded]
    archs = [meta["arch"] for _, meta, _ in loaded]
    xt, yt = data.x_test.to(device), data.y_test.to(device)
    idx = torch.randperm(len(yt), generator=torch.Generator().manual_seed(0))[:CURVE].sort().values.to(device)
    curve = (xt[idx], yt[idx])
    ensemble_accuracy = evaluate(EnsembleLogits(members, 1.0), xt, yt, 10)["accuracy"]
    ours_precision = resolve_precision(cfg.precision, device)
    peer_bf16 = (ours_precision == "bf16") if args.peer_precision == "auto" else args.peer_precision == "bf16"
    print(f"teacher: {len(members)} x {archs[0]}, test accuracy {100 * ensemble_accuracy:.2f}%; student {cfg.arch}, "
          f"{cfg.epochs} epochs at batch {cfg.batch_size}; darkknowledge {ours_precision}, torchdistill "
          f"{'bf16' if peer_bf16 else 'fp32'}", flush=True)

    student = new_model(cfg, data.in_shape, 10).to(device)
    x_train = data.x_train.to(device)
    student.calibrate_norm(*channel_stats(x_train))  # as fit does for darkknowledge's student, same seed
    if hasattr(student, "calibrate_whitening"):
        student.calibrate_whitening(x_train)
    peer_curve, version = torchdistill_distill(EnsembleLogits(members, dcfg.temperature), student, data.x_train,
                                               data.y_train, cfg, dcfg, device, peer_bf16, curve)
    peer = {"impl": f"torchdistill {version}", "precision": "bf16" if peer_bf16 else "fp32",
            "seconds": round(sum(p["seconds"] for p in peer_curve), 2),
            "test_accuracy": evaluate(student, xt, yt, 10)["accuracy"], "curve": peer_curve}

    teacher = Teacher(members, archs=archs)
    sync(device)
    t0 = time.perf_counter()
    r = distill("peer", data, teacher, cfg, dcfg, TransferConfig(view_bank=args.views), curve=curve)
    sync(device)
    ours_seconds = time.perf_counter() - t0
    bank_seconds = teacher.cache.compute_seconds
    ours_curve = [{"epoch": h["epoch"], "seconds": round(h["seconds"], 2),
                   "accuracy": 1 - h["test_errors"] / CURVE} for h in r.history]
    ours = {"impl": "darkknowledge", "precision": ours_precision, "seconds": round(ours_seconds, 2),
            "teacher_seconds": round(bank_seconds, 2), "views": args.views,
            "test_accuracy": r.test["accuracy"], "curve": ours_curve}

    target = min(peer_curve[-1]["accuracy"], ours_curve[-1]["accuracy"])
    peer["seconds_to_target"] = time_to(peer_curve, target)
    ours["seconds_to_target"] = time_to(ours_curve, target, offset=bank_seconds)
    summary = {"target_curve_accuracy": target,
               "speedup_to_target": round(peer["seconds_to_target"] / ours["seconds_to_target"], 2),
               "speedup_whole_run": round(peer["seconds"] / ours["seconds"], 2),
               "test_accuracy_difference_points": round(100 * (ours["test_accuracy"] - peer["test_accuracy"]), 2)}
    print(f"\n| impl | precision | seconds | to {100 * target:.2f}% (curve) | test % |\n|---|---|---|---|---|")
    for row in (peer, ours):
        print(f"| {row['impl']} | {row['precision']} | {row['seconds']:.0f} | {row['seconds_to_target']} "
              f"| {100 * row['test_accuracy']:.2f} |")
    print(summary)
    path = save(f"peer-torchdistill-cifar10-{dev}-{cfg.arch}-e{cfg.epochs}.json", {
        "benchmark": "peer_torchdistill_cifar", **environment(device), "seed": args.seed,
        "members": [str(p) for p in args.member], "member_archs": archs, "ensemble_test_accuracy": ensemble_accuracy,
        "curve_size": CURVE, "student": dataclasses.asdict(cfg), "distill": dataclasses.asdict(dcfg),
        "rows": [peer, ours], "summary": summary}, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
