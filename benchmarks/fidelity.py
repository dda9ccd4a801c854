"""How closely the distilled students of a `dk reproduce cifar10` run match their ensemble (Stanton et al. 2021,
"Does knowledge distillation really work?"): top-1 agreement and KL(ensemble || net) on the transfer set, the
validation split and the test set, for each distilled student beside each member (a member is in the ensemble
it is compared with, so it is also compared with the ensemble of the other members).

    python benchmarks/fidelity.py --run runs/cifar10-quick --data-dir DIR [--scale quick] [--out FILE]

A student that keeps little of the ensemble's gain either cannot fit the ensemble's function on the very images
it was taught on (low agreement on the transfer set: optimisation, too few steps) or fits it there and does not
carry it to new images (high agreement on the transfer set, low on test: the transfer set is too small, the
case for mixed views). Only forward passes: a minute on 2 CPU cores at the quick scale. Writes
benchmarks/results/fidelity-<scale>-cpu.json (numbers, hardware, commit) and prints a table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save  # noqa: E402

from darkknowledge.checkpoint import load_checkpoint  # noqa: E402
from darkknowledge.errors import DKError  # noqa: E402
from darkknowledge.evaluation import predict_logits  # noqa: E402
from darkknowledge.experiments.cifar10 import SCALES, load_data_for  # noqa: E402
from darkknowledge.losses import ensemble_probs  # noqa: E402
from darkknowledge.teachers import Teacher  # noqa: E402


def compare(net: torch.Tensor, reference: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Accuracy of ``net`` (log-probabilities), its top-1 agreement with ``reference`` and KL(reference || net),
    mean nats per image."""
    return {"accuracy_percent": 100 * float((net.argmax(1) == y).float().mean()),
            "agreement_percent": 100 * float((net.argmax(1) == reference.argmax(1)).float().mean()),
            "kl_nats": float(F.kl_div(net, reference, log_target=True, reduction="batchmean"))}


def ensemble_log_probs(member_logits: torch.Tensor) -> torch.Tensor:
    """``dk reproduce``'s ensemble (the arithmetic mean of the members' distributions at T 1), as log-probabilities."""
    return ensemble_probs(member_logits, 1.0).clamp_min(1e-30).log()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a dk reproduce cifar10 output directory (members/, models/)")
    ap.add_argument("--data-dir", required=True, help="the CIFAR-10 pickles it ran on")
    ap.add_argument("--scale", default="quick", choices=sorted(SCALES))
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/fidelity-<scale>-cpu.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    members = sorted((run / "members").glob("member*"))
    students = sorted((run / "models").glob("distilled__s*"))
    if len(members) < 2 or not students:
        raise SystemExit(f"fidelity: error: {run} holds {len(members)} members and {len(students)} distilled "
                         "students; it needs a finished dk reproduce cifar10 run")
    try:
        data, (xv, yv) = load_data_for(args.data_dir, SCALES[args.scale], torch.device("cpu"))
        teacher = Teacher.from_checkpoints(members)
        student_models = [load_checkpoint(p)[0] for p in students]
    except DKError as e:
        raise SystemExit(f"fidelity: error: {e}") from None
    splits = {"transfer": (data.x_train, data.y_train), "validation": (xv, yv), "test": (data.x_test, data.y_test)}
    with torch.no_grad():
        logits = {s: teacher.member_logits(x) for s, (x, _) in splits.items()}  # [M, N, C]
    ens = {s: ensemble_log_probs(z) for s, z in logits.items()}
    rows = []
    for i in range(len(members)):
        others = [j for j in range(len(members)) if j != i]
        for s, (_, y) in splits.items():
            lp = F.log_softmax(logits[s][i], 1)
            rows.append({"net": f"member {i}", "split": s, **compare(lp, ens[s], y),
                         "agreement_with_others_percent":
                             compare(lp, ensemble_log_probs(logits[s][others]), y)["agreement_percent"]})
    for path, model in zip(students, student_models):
        for s, (x, y) in splits.items():
            with torch.no_grad():
                lp = F.log_softmax(predict_logits(model, x), 1)
            rows.append({"net": f"distilled {path.name.split('__')[1]}", "split": s, **compare(lp, ens[s], y)})
    for s, (_, y) in splits.items():
        rows.append({"net": "ensemble", "split": s, **compare(ens[s], ens[s], y)})

    summary = {}
    for kind in ("member", "distilled"):
        for s in splits:
            sel = [r for r in rows if r["net"].startswith(kind) and r["split"] == s]
            summary[f"{kind}/{s}"] = {k: statistics.mean(r[k] for r in sel)
                                      for k in ("accuracy_percent", "agreement_percent", "kl_nats")}
    payload = {"benchmark": "fidelity", "run": str(run), "scale": args.scale, "members": len(members),
               "students": len(students), "sizes": {s: len(y) for s, (_, y) in splits.items()},
               **environment(torch.device("cpu")), "rows": rows, "means": summary}
    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"fidelity-{args.scale}-cpu.json"
    save(out.name, payload, out.parent)
    print(f"{'net':<14} {'split':<11} {'acc %':>7} {'agree %':>8} {'KL nats':>8}")
    for r in rows:
        print(f"{r['net']:<14} {r['split']:<11} {r['accuracy_percent']:7.2f} {r['agreement_percent']:8.2f} "
              f"{r['kl_nats']:8.4f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
