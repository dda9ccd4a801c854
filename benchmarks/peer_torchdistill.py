"""darkknowledge vs torchdistill (the closest peer), same distillation side by side in one run.

    # its own environment: torchdistill needs torchvision, which needs its matching torch
    python -m venv benchmarks/.venv-peer
    benchmarks/.venv-peer/bin/pip install torch==2.14.1 torchvision==0.29.1 torchdistill
    benchmarks/.venv-peer/bin/pip install -e .
    benchmarks/.venv-peer/bin/python benchmarks/peer_torchdistill.py --data-dir DIR --teacher CKPT [--device cuda]

The paper's MNIST distillation: a trained 2x1200 teacher (a darkknowledge checkpoint, e.g. one of
`dk reproduce mnist`'s `teachers/seed0`) into a 2x800 student at T = 20, loss
1.0 * T^2 * KL + 0.1 * CE (torchdistill's KDLoss with alpha = 0.1, beta = 1.0), SGD momentum 0.9,
lr 0.05 with a per-step cosine schedule, batch 128, the same epochs and the same student
initialisation for both. torchdistill runs its DistillationBox loop as its examples do (a
DataLoader over the dataset, the teacher re-run on every batch); darkknowledge runs `fit` with
the teacher's soft targets cached. Reports wall time and test errors of each.
Writes benchmarks/results/peer-torchdistill-<device>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from pathlib import Path

import torch
from torch.utils.data import RandomSampler, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, timed  # noqa: E402

from darkknowledge.checkpoint import load_checkpoint  # noqa: E402
from darkknowledge.config import DistillConfig, TrainConfig  # noqa: E402
from darkknowledge.data import load_mnist  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import SoftTargets, fit, new_model  # noqa: E402

T, HARD, LR, BATCH = 20.0, 0.1, 0.05, 128


def torchdistill_distill(teacher, student, x, y, epochs, device):
    """torchdistill's own loop around its DistillationBox, configured in Python (no YAML files)."""
    import torchdistill
    from torchdistill.core.distillation import get_distillation_box

    steps = epochs * -(-len(y) // BATCH)
    config = {
        "num_epochs": epochs,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": BATCH, "num_workers": 0}, "requires_supp": True},
        "teacher": {"forward_proc": "forward_batch_only", "sequential": [], "forward_hook": {"input": [], "output": []}, "wrapper": None,
                    "requires_grad": False},
        "student": {"forward_proc": "forward_batch_only", "adaptations": None, "sequential": [], "frozen_modules": [],
                    "forward_hook": {"input": [], "output": []}, "wrapper": None, "requires_grad": True},
        "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": 0.9}},
        "scheduler": {"key": "CosineAnnealingLR", "kwargs": {"T_max": steps}, "scheduling_step": 1},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {"criterion": {
            "key": "KDLoss", "kwargs": {"student_module_path": ".", "student_module_io": "output",
                                        "teacher_module_path": ".", "teacher_module_io": "output",
                                        "temperature": T, "alpha": HARD, "beta": 1.0, "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": TensorDataset(x, y)}, config, device, None, False, 1)
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
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--teacher", required=True, help="darkknowledge checkpoint of the 2x1200 teacher")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out-dir", help="where the JSON goes (default: benchmarks/results/)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    logging.getLogger("torchdistill").setLevel(logging.WARNING)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    dev = "cuda" if device.type == "cuda" else "cpu"
    data = load_mnist(args.data_dir)
    teacher, meta, _ = load_checkpoint(args.teacher, device=device)
    teacher.eval()
    xt, yt = data.x_test.to(device), data.y_test.to(device)
    cfg = TrainConfig(arch="mlp-800x2", epochs=args.epochs, batch_size=BATCH, lr=LR, seed=args.seed, device=dev)
    rows = []

    student = new_model(cfg, 784, 10).to(device)
    (student, version), s = timed(lambda: torchdistill_distill(teacher, student, data.x_train, data.y_train,
                                                               args.epochs, device), device)
    rows.append({"impl": f"torchdistill {version}", "seconds": round(s, 3),
                 "test_errors": evaluate(student, xt, yt, 10)["errors"]})
    print(rows[-1], flush=True)

    x, y = data.x_train.to(device), data.y_train.to(device)
    student = new_model(cfg, 784, 10)

    def ours():
        targets = Teacher([teacher], archs=[meta["arch"]]).soft_targets(x, T)
        return fit(student, x, SoftTargets(targets, y, DistillConfig(T, 1.0, HARD)), cfg, progress=False)
    _, s = timed(ours, device)
    rows.append({"impl": "darkknowledge", "seconds": round(s, 3), "test_errors": evaluate(student, xt, yt, 10)["errors"]})
    print(rows[-1], flush=True)
    summary = {"speedup_vs_torchdistill": round(rows[0]["seconds"] / rows[1]["seconds"], 2)}
    print(summary)
    path = save(f"peer-torchdistill-{dev}.json", {
        "benchmark": "peer_torchdistill", **environment(device), "epochs": args.epochs, "seed": args.seed,
        "teacher": str(args.teacher), "teacher_test_errors": evaluate(teacher, xt, yt, 10)["errors"],
        "config": {"temperature": T, "hard_weight": HARD, "soft_weight": 1.0, "lr": LR, "batch_size": BATCH,
                   "student": dataclasses.asdict(cfg)},
        "rows": rows, "summary": summary}, out_dir=args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
