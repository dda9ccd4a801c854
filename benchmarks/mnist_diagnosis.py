"""Why an MNIST reproduction's rows land where they do: how closely each student fits its teacher, and how the
bias fix's errors move with the offset, on validation and on test.

    python benchmarks/mnist_diagnosis.py --run runs/mnist-full --data-dir DIR [--out FILE]

Two questions a missed row raises, answered from a finished (or partly finished) `dk reproduce mnist` run with
forward passes only (about a minute per seed on 2 CPU cores):

- **Fit or transfer?** For the hard-label student, the distilled student and the one distilled on jittered
  views, per seed: test errors, top-1 agreement with the teacher and KL(teacher || student) at T 1 and at the
  distillation temperature, on the transfer set and on the test set. A student that agrees with its teacher on
  (nearly) every transfer image but much less on test fits the soft targets and does not carry them to new
  images: the transfer set, not the optimisation, is the limit.
- **Offset or student?** For the omitted-3 and 7s-and-8s-only students: errors against the offset added to the
  restricted classes' logits on the validation split the offset was fitted on and on the test set, with the
  errors at the fitted, the test-optimal and the paper's offset, and the offset that minimises validation
  cross-entropy. If even the test-optimal offset misses the paper's count, fitting the offset better cannot
  meet it.

Writes benchmarks/results/mnist-diagnosis-<scale>-cpu.json (+ a ``-bias.png`` of the curves) and prints tables.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save  # noqa: E402

from darkknowledge.checkpoint import load_checkpoint  # noqa: E402
from darkknowledge.data import split_validation  # noqa: E402
from darkknowledge.errors import DKError  # noqa: E402
from darkknowledge.evaluation import fit_bias_offset, offset_errors, offset_grid, predict_logits  # noqa: E402
from darkknowledge.experiments.mnist import PAPER_OFFSETS, SCALES, load_data_for  # noqa: E402
from darkknowledge.experiments.report import save_figure  # noqa: E402

STUDENTS = ("student", "distilled", "distilled-jittered")
RESTRICTED = {"omit3": (3,), "only78": (7, 8)}
GRID = offset_grid()  # the offsets fit_bias_offset tries


def stage(run: Path, name: str) -> dict | None:
    """A finished stage's result, else None."""
    path = run / "stages" / (name.replace("/", "__") + ".json")
    rec = json.loads(path.read_text()) if path.is_file() else {}
    return rec.get("result") if rec.get("status") == "done" else None


def fit(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, temperature: float) -> dict:
    """Errors of ``student`` logits, their top-1 agreement with ``teacher``'s, and KL(teacher || student) in nats
    per image at T 1 and at ``temperature``."""
    def kl(t: float) -> float:
        return float(F.kl_div(F.log_softmax(student / t, 1), F.log_softmax(teacher / t, 1), log_target=True,
                              reduction="batchmean"))
    return {"errors": int((student.argmax(1) != y).sum()),
            "agreement_percent": 100 * float((student.argmax(1) == teacher.argmax(1)).float().mean()),
            "kl_t1_nats": kl(1.0), f"kl_t{temperature:g}_nats": kl(temperature)}


def offset_curve(logits: torch.Tensor, y: torch.Tensor, classes: tuple[int, ...]) -> tuple[list[int], list[float]]:
    """Errors and mean cross-entropy for every offset of ``GRID`` added to ``classes``' logits."""
    mask = torch.zeros(logits.shape[1])
    mask[list(classes)] = 1.0
    nll = [float(F.cross_entropy(logits + g * mask, y)) for g in GRID]
    return offset_errors(logits, y, classes, GRID).tolist(), nll


def at(curve: list[int], offset: float) -> int:
    return curve[int(torch.argmin((GRID - offset).abs()))]


def bias_rows(run: Path, data, seed: int, val_size: int) -> list[dict]:
    rows = []
    _, _, x_val, y_val = split_validation(data.x_train, data.y_train, val_size, seed=seed)
    for kind, classes in RESTRICTED.items():
        rec = stage(run, f"{kind}/s{seed}")
        if rec is None:
            continue
        model = load_checkpoint(run / "models" / f"{kind}__s{seed}")[0]
        val, test = predict_logits(model, x_val), predict_logits(model, data.x_test)
        val_errors, val_nll = offset_curve(val, y_val, classes)
        test_errors, _ = offset_curve(test, data.y_test, classes)
        fitted, _ = fit_bias_offset(val, y_val, classes)
        best, _ = fit_bias_offset(test, data.y_test, classes)
        nll_best = float(GRID[min(range(len(GRID)), key=val_nll.__getitem__)])
        rows.append({"experiment": kind, "seed": seed, "classes": list(classes), "val_size": len(y_val),
                     "test_size": len(data.y_test), "fitted_offset": fitted, "recorded_offset": rec["offset"],
                     "test_optimal_offset": best, "val_nll_optimal_offset": round(nll_best, 4),
                     "paper_offset": PAPER_OFFSETS[kind], "test_errors_unfixed": at(test_errors, 0.0),
                     "test_errors": {"fitted": at(test_errors, fitted), "test_optimal": at(test_errors, best),
                                     "val_nll_optimal": at(test_errors, nll_best),
                                     "paper_offset": at(test_errors, PAPER_OFFSETS[kind])},
                     "curve": {"offsets": [round(float(g), 1) for g in GRID], "val_errors": val_errors,
                               "test_errors": test_errors}})
    return rows


def fit_rows(run: Path, data, seed: int, temperature: float) -> list[dict]:
    rec = stage(run, f"teacher/s{seed}")
    if rec is None:
        return []
    teacher = load_checkpoint(run / rec["checkpoint"])[0]
    splits = {"transfer": (data.x_train, data.y_train), "test": (data.x_test, data.y_test)}
    t_logits = {s: predict_logits(teacher, x) for s, (x, _) in splits.items()}
    rows = [{"net": "teacher", "seed": seed, "split": s, "errors": int((t_logits[s].argmax(1) != y).sum())}
            for s, (_, y) in splits.items()]
    for name in STUDENTS:
        if stage(run, f"{name}/s{seed}") is None:
            continue
        model = load_checkpoint(run / "models" / f"{name}__s{seed}")[0]
        for s, (x, y) in splits.items():
            rows.append({"net": name, "seed": seed, "split": s, **fit(predict_logits(model, x), t_logits[s], y,
                                                                      temperature)})
    return rows


def plot(rows: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RESTRICTED), figsize=(11, 4))
    for ax, kind in zip(axes, RESTRICTED):
        for r in (r for r in rows if r["experiment"] == kind):
            c, scale = r["curve"], r["test_size"] / r["val_size"]
            ax.plot(c["offsets"], [e * scale for e in c["val_errors"]], "--", label=f"seed {r['seed']} validation "
                    f"(x{scale:g})")
            ax.plot(c["offsets"], c["test_errors"], label=f"seed {r['seed']} test")
            ax.axvline(r["fitted_offset"], color="grey", lw=0.5)
        lo, hi = (0, 6) if kind == "omit3" else (-11, -4)
        ax.set_xlim(lo, hi)
        ax.set_ylim(0, 400 if kind == "omit3" else 3000)
        ax.set_xlabel("offset added to the logits of " + " and ".join(map(str, RESTRICTED[kind])))
        ax.set_ylabel("errors of 10,000")
        ax.set_title(kind)
        ax.legend(fontsize=7)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a dk reproduce mnist output directory")
    ap.add_argument("--data-dir", required=True, help="the MNIST directory it ran on")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--out", help="JSON path (default: benchmarks/results/mnist-diagnosis-<scale>-cpu.json)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run)
    try:
        meta = json.loads((run / "reproduction.json").read_text())
    except (OSError, ValueError):
        raise SystemExit(f"mnist_diagnosis: error: {run} holds no readable reproduction.json; it needs a "
                         "dk reproduce mnist run") from None
    if meta.get("experiment") != "mnist":
        raise SystemExit(f"mnist_diagnosis: error: {run} is a {meta.get('experiment')} run, not mnist")
    scale = meta["scale"]
    val_size = meta["settings"]["scale"]["val_size"]
    temperature = meta["settings"]["recipes"]["distill"]["temperature"]
    chosen = stage(run, "distilled/s0")
    if chosen is not None:
        temperature = chosen["temperature"]
    try:
        data = load_data_for(args.data_dir, SCALES[scale], torch.device("cpu"))
        fits, biases = [], []
        with torch.no_grad():
            for seed in range(meta["seeds"]):
                fits += fit_rows(run, data, seed, temperature)
                biases += bias_rows(run, data, seed, val_size)
    except DKError as e:
        raise SystemExit(f"mnist_diagnosis: error: {e}") from None
    if not fits and not biases:
        raise SystemExit(f"mnist_diagnosis: error: {run} has no finished teacher, omit3 or only78 stage yet")

    out = Path(args.out) if args.out else Path(__file__).resolve().parent / "results" / f"mnist-diagnosis-{scale}-cpu.json"
    payload = {"benchmark": "mnist_diagnosis", "run": str(run), "scale": scale, "temperature": temperature,
               **environment(torch.device("cpu")), "fit": fits, "bias_fix": biases}
    if biases:
        payload["plot"] = plot(biases, out.with_name(out.stem + "-bias.png")).name
    save(out.name, payload, out.parent)

    kt = f"kl_t{temperature:g}_nats"
    print(f"{'net':<20} {'seed':>4} {'split':<9} {'errors':>7} {'agree %':>8} {'KL T1':>8} {'KL T' + format(temperature, 'g'):>8}")
    for r in fits:
        extra = (f" {r['agreement_percent']:8.2f} {r['kl_t1_nats']:8.4f} {r[kt]:8.4f}" if "agreement_percent" in r
                 else "")
        print(f"{r['net']:<20} {r['seed']:>4} {r['split']:<9} {r['errors']:>7}{extra}")
    print(f"\n{'bias fix':<8} {'seed':>4} {'fitted':>7} {'test-opt':>8} {'val-NLL':>8} {'unfixed':>8} "
          f"{'@fitted':>8} {'@test-opt':>9} {'@paper':>7}")
    for r in biases:
        e = r["test_errors"]
        print(f"{r['experiment']:<8} {r['seed']:>4} {r['fitted_offset']:7.1f} {r['test_optimal_offset']:8.1f} "
              f"{r['val_nll_optimal_offset']:8.1f} {r['test_errors_unfixed']:8} {e['fitted']:8} {e['test_optimal']:9} "
              f"{e['paper_offset']:7}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
