"""darkknowledge vs torchdistill on CIFAR-10 ensemble distillation, side by side in one run.

    # its own environment: torchdistill needs torchvision, which needs its matching torch
    python -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill
    benchmarks/.venv-peer/bin/pip install --no-deps -e .
    benchmarks/.venv-peer/bin/python benchmarks/peer_torchdistill_cifar.py --data-dir DIR \\
        --member runs/c10/members/member0 --member ... [--epochs 2] [--device cpu|cuda]

Section 4's setting: an ensemble of darkknowledge members (e.g. `dk reproduce cifar10`'s
`members/member{i}`, resnet-s-w8) distilled into a resnet-s-w8 student, the arithmetic mean of the
members' softened outputs as targets, loss 0.5 * T^2 * KL + 0.5 * CE at T = 5 (torchdistill's KDLoss with
alpha = 0.5, beta = 0.5), SGD momentum 0.9, weight decay 5e-4, lr 0.05 with a per-step cosine schedule,
batch 256, random crops of the 4-pixel-padded image and mirrors, the same epochs and the same student
initialisation for both; all 50,000 training images. torchdistill runs its DistillationBox loop as its
examples do (a DataLoader with torchvision transforms, the ensemble re-run on every batch); darkknowledge
runs `workflows.distill` with a bank of `--views` augmented views whose ensemble targets are computed once
(inside the timed region). Reports wall time and test accuracy of each; writes
benchmarks/results/peer-torchdistill-cifar10-<device>-e<epochs>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset, RandomSampler

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, timed  # noqa: E402

from darkknowledge.checkpoint import load_checkpoint  # noqa: E402
from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig  # noqa: E402
from darkknowledge.data import load_cifar  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.losses import ensemble_probs  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import new_model  # noqa: E402
from darkknowledge.workflows import distill  # noqa: E402

T, HARD, SOFT, LR, BATCH, WD = 5.0, 0.5, 0.5, 0.05, 256, 5e-4


class Augmented(Dataset):
    """CIFAR uint8 tensors through torchvision's random crop (4-pixel padding) and mirror, per item."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        from torchvision.transforms import v2

        self.x, self.y = x, y
        self.tf = v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])

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
        logits = torch.stack([m(x) for m in self.members])
        return self.t * ensemble_probs(logits, self.t, "arithmetic").clamp_min(1e-30).log()


def torchdistill_distill(teacher, student, x, y, epochs, device):
    import torchdistill
    from torchdistill.core.distillation import get_distillation_box

    steps = epochs * math.ceil(len(y) / BATCH)
    config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": BATCH, "num_workers": 0}, "requires_supp": True},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "forward_hook": {"input": [], "output": []},
                    "wrapper": None, "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [], "frozen_modules": [],
                    "forward_hook": {"input": [], "output": []}, "wrapper": None, "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": 0.9, "weight_decay": WD}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": T, "alpha": HARD, "beta": SOFT, "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": Augmented(x, y)}, config, device, None, False, 1)
    for epoch in range(epochs):
        box.pre_epoch_process(epoch=epoch)
        for sample_batch, targets, supp_dict in box.train_data_loader:
            sample_batch, targets = sample_batch.to(device), targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss)
        box.post_epoch_process()
    return student, torchdistill.__version__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory with the CIFAR-10 pickles")
    ap.add_argument("--member", action="append", required=True, help="a member checkpoint; repeat for each")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--views", type=int, default=2, help="darkknowledge's bank of augmented views")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    args = ap.parse_args()
    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    data = load_cifar(args.data_dir, "cifar10")
    loaded = [load_checkpoint(p, device=device) for p in args.member]
    members = [m.eval() for m, _, _ in loaded]
    arch = loaded[0][1]["arch"]
    xt, yt = data.x_test.to(device), data.y_test.to(device)
    teacher = Teacher(members, archs=[meta["arch"] for _, meta, _ in loaded])
    ens_acc = evaluate(EnsembleLogits(members, 1.0), xt, yt, 10)["accuracy"]
    cfg = TrainConfig(arch=arch, epochs=args.epochs, batch_size=BATCH, lr=LR, weight_decay=WD, jitter=4, flip=True,
                      seed=args.seed, device=dev, eval_every=args.epochs)
    rows = []

    student = new_model(cfg, data.in_shape, 10).to(device)
    from darkknowledge.data import channel_stats

    student.calibrate_norm(*channel_stats(data.x_train))  # as fit does for darkknowledge's student
    (student, version), s = timed(lambda: torchdistill_distill(EnsembleLogits(members, T), student, data.x_train,
                                                               data.y_train, args.epochs, device), device)
    rows.append({"impl": f"torchdistill {version}", "seconds": round(s, 2),
                 "test_accuracy": evaluate(student, xt, yt, 10)["accuracy"]})
    print(rows[-1], flush=True)

    def ours():
        return distill("peer", data, teacher, cfg, DistillConfig(T, SOFT, HARD), TransferConfig(view_bank=args.views),
                       progress=False)
    r, s = timed(ours, device)
    rows.append({"impl": "darkknowledge", "seconds": round(s, 2), "test_accuracy": r.test["accuracy"],
                 "teacher_seconds": round(teacher.cache.compute_seconds, 2), "views": args.views})
    print(rows[-1], flush=True)
    summary = {"speedup_vs_torchdistill": round(rows[0]["seconds"] / rows[1]["seconds"], 2),
               "accuracy_difference_points": round(100 * (rows[1]["test_accuracy"] - rows[0]["test_accuracy"]), 2)}
    print(summary)
    path = save(f"peer-torchdistill-cifar10-{dev}-e{args.epochs}.json", {
        "benchmark": "peer_torchdistill_cifar", **environment(device), "epochs": args.epochs, "seed": args.seed,
        "members": [str(p) for p in args.member], "ensemble_test_accuracy": ens_acc,
        "config": {"temperature": T, "hard_weight": HARD, "soft_weight": SOFT, "lr": LR, "batch_size": BATCH,
                   "weight_decay": WD, "student": dataclasses.asdict(cfg)},
        "rows": rows, "summary": summary}, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
