"""Per-source hard weights for ``dk reproduce lm``: the same reproduction's distilled students trained at two hard
weights (two run directories sharing teachers, caches and hard-label students), and for each source (full logits,
top-k, draws) the hard weight its students do best at on the *validation* split (mean over seeds), then that
choice's test bits per byte and its distance from full logits at full logits' own validation choice.

    python benchmarks/lm_hard_weights.py runs/lm-full-h05 runs/lm-full --out benchmarks/results/lm-hard-weights-cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import numpy as np


def students(run: Path) -> dict[str, dict[int, dict]]:
    """``{source: {seed: result}}`` of the run's finished distilled students."""
    out: dict[str, dict[int, dict]] = {}
    for f in sorted((run / "stages").glob("distilled_*__s*.json")):
        rec = json.loads(f.read_text())
        if rec.get("status") != "done":
            continue
        source, seed = f.stem.split("__s")
        out.setdefault(source.removeprefix("distilled_"), {})[int(seed)] = rec["result"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="run directories of one reproduction at different hard weights")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    table: dict[str, dict[float, dict]] = {}  # source -> hard weight -> per-seed val / test
    for run in a.runs:
        for source, by_seed in students(run).items():
            seeds = sorted(by_seed)
            hw = {by_seed[s]["hard_weight"] for s in seeds}
            if len(hw) != 1:
                raise SystemExit(f"{run}: {source}'s students differ in hard weight: {hw}")
            table.setdefault(source, {})[hw.pop()] = {
                "run": str(run), "seeds": seeds, "tail": by_seed[seeds[0]]["tail"],
                "val_bpb": [by_seed[s]["val_bpb"] for s in seeds], "test_bpb": [by_seed[s]["test_bpb"] for s in seeds]}
    chosen = {}
    for source, by_hw in table.items():
        hw = min(by_hw, key=lambda h: np.mean(by_hw[h]["val_bpb"]))  # on validation, never test
        chosen[source] = {"hard_weight": hw, **by_hw[hw]}
    full = np.array(chosen["full"]["test_bpb"])
    rows = []
    print(f"{'source':<10} {'hard weight':>11} {'val bpb':>8} {'test bpb (mean ± std)':>22} {'vs full %':>14}")
    for source, by_hw in sorted(table.items()):
        for hw, r in sorted(by_hw.items()):
            test = np.array(r["test_bpb"])
            rel = 100 * (test / full - 1) if len(test) == len(full) else None
            row = {"source": source, "hard_weight": hw, "chosen_on_validation": chosen[source]["hard_weight"] == hw,
                   "val_bpb_mean": float(np.mean(r["val_bpb"])), "test_bpb_mean": float(test.mean()),
                   "test_bpb_std": float(test.std(ddof=1)) if len(test) > 1 else 0.0, "test_bpb": r["test_bpb"],
                   "vs_full_chosen_percent": None if rel is None else [float(x) for x in rel], "run": r["run"]}
            rows.append(row)
            mark = "*" if row["chosen_on_validation"] else " "
            vs = "" if rel is None else f"{rel.mean():+.2f} ± {rel.std(ddof=1):.2f}"
            print(f"{source:<10} {hw:>10g}{mark} {row['val_bpb_mean']:>8.4f} "
                  f"{row['test_bpb_mean']:>14.4f} ± {row['test_bpb_std']:.4f} {vs:>14}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    machines = {str(r): {k: json.loads((r / "results.json").read_text()).get(k) for k in ("hardware", "precision", "commit")}
                for r in a.runs if (r / "results.json").is_file()}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    a.out.write_text(json.dumps({"runs": machines, "commit": commit, "rows": rows,
                                 "note": "* = the hard weight with the lowest mean validation bpb for that source; "
                                         "vs_full_chosen_percent: test bpb per seed relative to full logits at "
                                         "their validation-chosen hard weight"}, indent=2))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
