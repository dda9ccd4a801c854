"""Do the default MNIST recipes train stably on data they were not tuned on? Gradient clipping on vs off.

    python benchmarks/clipping.py --mnist DIR [--variants mnist inverted rotated remapped] [--seeds 3] \\
        [--teacher-epochs 5] [--student-epochs 8]

For every variant (see benchmarks/variants.py) and seed: a teacher from the packaged teacher recipe
(shortened to ``--teacher-epochs``: a less confident teacher than the paper's), then the packaged
distilled-student recipe as shipped (gradient-norm clipping on) and the same recipe with clipping off,
and the hard-label student for reference. Each is trained on the training set minus a 5,000-image
validation split and reports validation and test errors, whether it diverged, the largest single-batch
loss per epoch, and gradient-norm statistics before clipping (the "off" runs record norms with a
threshold no step reaches). A *spike* is an epoch after the first whose largest batch loss exceeds 5x its
mean loss and the first epoch's mean loss (late epochs of a converged net have a tiny mean, so a
batch at 5x of it is no spike). Results are rewritten after every run to benchmarks/results/clipping-<device>.json
(this was ``robustness.py`` until the ordering check took that name: its older results are
``robustness-cpu-unshifted.json`` and ``robustness-cpu-shifted-10k.json``).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, save  # noqa: E402
from variants import MNIST_VARIANTS as VARIANTS, build  # noqa: E402

from darkknowledge.data import Dataset, from_arrays, load_mnist, split_validation  # noqa: E402
from darkknowledge.errors import DKError  # noqa: E402
from darkknowledge.evaluation import evaluate  # noqa: E402
from darkknowledge.experiments.mnist import DISTILL, DISTILLED, STUDENT, TEACHER  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model  # noqa: E402

RECORD_ONLY = 1e9  # a clip threshold no step reaches: gradient norms are recorded, nothing is clipped
SPIKE = 5.0


def dataset(name: str, mnist_dir: str) -> Dataset:
    if name == "mnist":
        return load_mnist(mnist_dir)
    a = build(name, mnist_dir)
    return from_arrays(name, a["x_train"], a["y_train"], a["x_test"], a["y_test"], scale=255.0)


def run(model_cfg, objective, x, xv, yv, data, desc: str, progress: bool):
    model = new_model(model_cfg, data.in_features, data.num_classes)
    t0 = time.perf_counter()
    try:
        hist = fit(model, x, objective, model_cfg, x_test=xv, y_test=yv, desc=desc, progress=progress)
    except DKError as e:
        return None, {"diverged": True, "error": str(e), "seconds": round(time.perf_counter() - t0, 1)}
    test = evaluate(model, data.x_test, data.y_test, data.num_classes)["errors"]
    spikes = [h["epoch"] for h in hist[1:] if h["loss_max"] > max(SPIKE * h["loss"], hist[0]["loss"])]
    return model, {"diverged": False, "val_errors": hist[-1]["test_errors"], "test_errors": test,
                   "spike_epochs": spikes, "loss": [round(h["loss"], 4) for h in hist],
                   "loss_max": [round(h["loss_max"], 4) for h in hist],
                   "grad_norm_max": max(h.get("grad_norm_max", 0.0) for h in hist),
                   "grad_norm_mean_epoch1": hist[0].get("grad_norm_mean"),
                   "clipped_steps": sum(h.get("clipped_steps", 0) for h in hist),
                   "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True)
    ap.add_argument("--variants", nargs="+", default=["mnist", *VARIANTS], choices=["mnist", *VARIANTS])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--teacher-epochs", type=int, default=5)
    ap.add_argument("--student-epochs", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--train-limit", type=int, default=0, help="use the first N training images (0: all 60,000)")
    ap.add_argument("--val-size", type=int, default=5000, help="validation images carved from the training set")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    out = Path(args.out or RESULTS / f"clipping-{args.device}.json")
    progress = not args.no_progress
    result = {"benchmark": "clipping", "spike_rule": f"epoch >= 2 with max batch loss > {SPIKE}x its mean loss and > epoch 1's mean loss",
              "seeds": list(range(args.seeds)), "teacher_epochs": args.teacher_epochs,
              "student_epochs": args.student_epochs, "recipes": {"teacher": asdict(TEACHER), "student": asdict(STUDENT),
                                                                 "distilled": asdict(DISTILLED),
                                                                 "distill": asdict(DISTILL)},
              **environment(torch.device(args.device)), "runs": []}
    jobs = [(v, s) for v in args.variants for s in range(args.seeds)]
    bar = tqdm(jobs, desc="clipping", unit="variant-seed", disable=not progress)
    for variant, seed in bar:
        data = dataset(variant, args.mnist)
        if args.train_limit:
            data = replace(data, x_train=data.x_train[:args.train_limit], y_train=data.y_train[:args.train_limit])
        x, y, xv, yv = split_validation(data.x_train, data.y_train, args.val_size, seed=0)
        common = dict(seed=seed, device=args.device, batch_size=256)
        t_cfg = replace(TEACHER, epochs=args.teacher_epochs, eval_every=args.teacher_epochs,
                        grad_clip=TEACHER.grad_clip or RECORD_ONLY, **common)
        teacher_model, t_rec = run(t_cfg, HardLabels(y), x, xv, yv, data, f"{variant} s{seed} teacher", progress)
        row = {"variant": variant, "seed": seed, "teacher": t_rec}
        if teacher_model is not None:
            soft = Teacher([teacher_model]).soft_targets(x, DISTILL.temperature)
            s_cfg = dict(epochs=args.student_epochs, eval_every=args.student_epochs, **common)
            for name, cfg, obj in (
                    ("student", replace(STUDENT, **s_cfg), HardLabels(y)),
                    ("distilled_default", replace(DISTILLED, **s_cfg), SoftTargets(soft, y, DISTILL)),
                    ("distilled_no_clip", replace(DISTILLED, grad_clip=RECORD_ONLY, **s_cfg),
                     SoftTargets(soft, y, DISTILL))):
                row[name] = run(cfg, obj, x, xv, yv, data, f"{variant} s{seed} {name}", progress)[1]
        result["runs"].append(row)
        save(out.name, result, out.parent)  # after every variant, atomically
    bar.close()
    print(f"{'variant':<9} {'seed':>4} {'teacher':>7} {'student':>7} {'dist.':>7} {'no-clip':>7}  spikes(dist/no-clip)")
    for r in result["runs"]:
        def e(k):
            v = r.get(k)
            return "-" if v is None else ("div" if v["diverged"] else str(v["test_errors"]))
        sp = [len(r[k]["spike_epochs"]) if k in r and not r[k]["diverged"] else "-"
              for k in ("distilled_default", "distilled_no_clip")]
        print(f"{r['variant']:<9} {r['seed']:>4} {e('teacher'):>7} {e('student'):>7} {e('distilled_default'):>7} "
              f"{e('distilled_no_clip'):>7}  {sp[0]}/{sp[1]}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
