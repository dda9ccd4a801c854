"""Do the MNIST reproduction's defaults hold on 28x28 data they were never tuned on? The standing check.

    python benchmarks/robustness.py --mnist DIR --cifar DIR [--sets mnist inverted rotated remapped \\
        cifar10-grey cifar100-grey] [--scale quick] [--seeds 3] [--work runs/robustness] [--resume]

For every data set (MNIST itself, the variants of ``benchmarks/variants.py``: three built from MNIST and
two from CIFAR images in grey at 28x28), ``dk reproduce mnist --scale S`` runs end to end in its own
directory under ``--work`` (resumable: ``--resume`` continues each where it stopped), exactly as a user
would run it on their own data. Per data set and seed it reports the teacher's, the hard-label student's
and the distilled student's test errors, whether the paper's ordering held (teacher < student and
distilled < student), the reproduction's own teacher check, and the wall time. Results are rewritten
after every data set to benchmarks/results/robustness-<device>-<scale>.json, and end in a short table.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, environment, save  # noqa: E402
from variants import CIFAR_VARIANTS, MNIST_VARIANTS, build, write_idx  # noqa: E402

from darkknowledge.experiments.report import MANIFEST  # noqa: E402

SETS = ("mnist", *MNIST_VARIANTS, *CIFAR_VARIANTS)


def data_dir(name: str, args: argparse.Namespace, work: Path) -> Path:
    """Where the data set's IDX files are: MNIST's own directory, or the variant built once under ``work``."""
    if name == "mnist":
        return Path(args.mnist)
    out = work / "data" / name
    if not (out / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file():
        write_idx(out, build(name, args.mnist, args.cifar))
    return out


def seed_results(run_dir: Path, seeds: int) -> list[dict]:
    """Teacher, student and distilled test errors per seed from the reproduction's stage records."""
    rows = []
    for s in range(seeds):
        rec = {}
        for kind in ("teacher", "student", "distilled"):
            path = run_dir / "stages" / f"{kind}__s{s}.json"
            stage = json.loads(path.read_text()) if path.is_file() else {"status": "pending"}
            rec[kind] = stage["result"]["test_errors"] if stage["status"] == "done" else None
        if None not in rec.values():
            rec["teacher_beats_student"] = rec["teacher"] < rec["student"]
            rec["distilled_beats_student"] = rec["distilled"] < rec["student"]
        rows.append({"seed": s, **rec})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help="MNIST directory (IDX files)")
    ap.add_argument("--cifar", help="directory with the CIFAR-10/100 pickles (the CIFAR-derived sets)")
    ap.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    ap.add_argument("--scale", default="quick", choices=("quick", "smoke", "full"))
    ap.add_argument("--seeds", type=int, default=0, help="seeds per data set (0: the scale's default)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", default="runs/robustness", help="variants' data and the reproductions go here")
    ap.add_argument("--resume", action="store_true", help="continue every reproduction where it stopped")
    ap.add_argument("--overwrite", action="store_true", help="discard reproductions already under --work")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if any(s in CIFAR_VARIANTS for s in args.sets) and not args.cifar:
        ap.error(f"the sets {', '.join(s for s in args.sets if s in CIFAR_VARIANTS)} need --cifar")
    work = Path(args.work)
    out = Path(args.out or RESULTS / f"robustness-{args.device}-{args.scale}.json")
    payload = {"benchmark": "robustness", "scale": args.scale, "command": "dk reproduce mnist",
               "ordering": "teacher < hard-label student and distilled < hard-label student, test errors, per seed",
               **environment(torch.device(args.device)), "sets": []}
    if args.resume and out.is_file():  # keep the rows of sets this invocation does not run
        payload["sets"] = json.loads(out.read_text()).get("sets", [])

    for name in args.sets:
        run_dir = work / name
        cmd = [sys.executable, "-m", "darkknowledge", "reproduce", "mnist", "--scale", args.scale, "--device",
               args.device, "--data-dir", str(data_dir(name, args, work)), "--out", str(run_dir), "--no-progress",
               *(["--seeds", str(args.seeds)] if args.seeds else []),
               *(["--resume"] if args.resume and (run_dir / MANIFEST).exists() else []),
               *(["--overwrite"] if args.overwrite else [])]
        print(f"{name}: {' '.join(cmd[2:])}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode not in (0, 1):  # 1: some stages failed (recorded); anything else: it never ran
            raise SystemExit(f"error: reproduce on {name} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
        results = json.loads((run_dir / "results.json").read_text())
        seeds = seed_results(run_dir, len(results["seeds"]))
        measured = [r for r in seeds if "teacher_beats_student" in r]
        row = {"set": name, "data_dir": str(data_dir(name, args, work)), "run_dir": str(run_dir),
               # The reproduction's wall over all its invocations (a resumed set: not this call's seconds alone)
               "wall_seconds": results.get("wall_seconds", round(wall, 1)), "this_call_seconds": round(wall, 1),
               "stage_seconds": results["total_seconds"], "seeds": seeds,
               "ordering_held_on_every_seed": bool(measured) and len(measured) == len(seeds) and all(
                   r["teacher_beats_student"] and r["distilled_beats_student"] for r in measured),
               "teacher_check": results.get("teacher_check", []),
               "chosen": {k: v.get("chosen") for k, v in results.get("choices", {}).items()},
               "warnings": [line for line in proc.stderr.splitlines() if line.startswith("warning:")]}
        payload["sets"] = [s for s in payload["sets"] if s["set"] != name] + [row]
        save(out.name, payload, out.parent)  # after every set, atomically
        print(f"{name}: " + "; ".join(f"s{r['seed']} teacher {r['teacher']} student {r['student']} distilled "
                                      f"{r['distilled']}" for r in seeds) + f" ({row['wall_seconds']:.0f} s)", flush=True)
    print(f"\n| data set | chosen on validation | teacher | hard-label student | distilled | "
          f"ordering held on every seed | wall s |")
    print("|---|---|---|---|---|---|---|")
    for row in payload["sets"]:
        col = lambda k: ", ".join(str(r[k]) for r in row["seeds"])  # noqa: E731
        print(f"| {row['set']} | {chosen_text(row.get('chosen', {}))} | {col('teacher')} | {col('student')} | "
              f"{col('distilled')} | {'yes' if row['ordering_held_on_every_seed'] else 'NO'} | "
              f"{row['wall_seconds']:.0f} |")
    print(f"wrote {out}")


def chosen_text(chosen: dict) -> str:
    """``dropout teacher, T 4 / hard 0.5``: what the reproduction chose on the data set's validation split."""
    d = chosen.get("distill") or {}
    parts = ([f"{chosen['teacher']} teacher"] if chosen.get("teacher") else []) + (
        [f"T {d['temperature']:g} / hard {d['hard_weight']:g}"] if d else [])
    return ", ".join(parts) or "-"


if __name__ == "__main__":
    main()
