"""Does `dk reproduce cifar10` keep the paper's orderings on 10-class 32x32 data it was never tuned on?

    python benchmarks/cifar_generality.py NAME=RUN_DIR [NAME=RUN_DIR ...] [--out JSON]

Reads finished (or partial) reproductions, e.g. those `benchmarks/cpu_long.sh`'s `generality` step runs on
`benchmarks/cifar_variants.py`'s data sets (and the one on CIFAR-10 itself, for reference), and reports per data
set and seed: the member (single net), the ensemble, the distilled net, the 3% hard and soft runs (test accuracy
%), and whether each ordering held: ensemble above the members' mean; the distilled net above the members' mean
(gain kept > 0) and above its own seed's member; the soft 3% run above the hard one. Writes
benchmarks/results/cifar-generality-<device>-<scale>.json and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, save  # noqa: E402


def values(results: dict, name: str) -> list[float]:
    row = next((r for r in results["rows"] if r["experiment"] == name), None)
    return list(row["values"]) if row else []


def summarise(name: str, run_dir: Path) -> dict:
    """One data set's row: per-seed numbers and orderings from its results.json."""
    res = json.loads((run_dir / "results.json").read_text())
    single, ensemble = values(res, "single"), values(res, "ensemble")
    distilled, hard, soft = values(res, "distilled_from_ensemble"), values(res, "hard_3pct"), values(res, "soft_3pct")
    mean_single = sum(single) / len(single) if single else None
    seeds = []
    for s, d in enumerate(distilled):
        seeds.append({"seed": s, "single": single[s] if s < len(single) else None, "distilled": d,
                      "hard_3pct": hard[s] if s < len(hard) else None, "soft_3pct": soft[s] if s < len(soft) else None,
                      "distilled_above_single_mean": d > mean_single,
                      "distilled_above_own_member": s < len(single) and d > single[s],
                      "soft_above_hard": s < len(hard) and s < len(soft) and soft[s] > hard[s]})
    return {"set": name, "run_dir": str(run_dir), "hardware": res["hardware"], "precision": res["precision"],
            "commit": res["commit"], "wall_seconds": res["wall_seconds"], "stages_done": res["stages_done"],
            "stages_total": res["stages_total"], "single_mean": mean_single, "ensemble": ensemble[0] if ensemble else None,
            "gain_kept_percent": values(res, "gain_kept_percent"), "gap_recovered_percent": values(res, "gap_recovered_percent"),
            "seeds": seeds, "ensemble_above_single": bool(ensemble) and ensemble[0] > mean_single,
            "distilled_above_single_every_seed": bool(seeds) and all(r["distilled_above_single_mean"] for r in seeds),
            "soft_above_hard_every_seed": bool(seeds) and all(r["soft_above_hard"] for r in seeds)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="NAME=RUN_DIR")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    pairs = [r.split("=", 1) for r in args.runs]
    missing = [d for p in pairs if len(p) == 2 for d in [p[1]] if not (Path(d) / "results.json").is_file()]
    if any(len(p) != 2 for p in pairs) or missing:
        raise SystemExit(f"error: give NAME=RUN_DIR of finished reproductions (no results.json: {', '.join(missing)})")
    rows = [summarise(n, Path(d)) for n, d in pairs]
    scale = {json.loads((Path(d) / "results.json").read_text())["scale"] for _, d in pairs}
    out = Path(args.out or RESULTS / f"cifar-generality-cpu-{'-'.join(sorted(scale))}.json")
    payload = {"benchmark": "cifar_generality", "command": "dk reproduce cifar10", "scale": sorted(scale),
               "orderings": "ensemble > members' mean; distilled > members' mean (and > its own member); "
                            "soft 3% > hard 3%; test accuracy per seed", "sets": rows}
    save(out.name, payload, out.parent)
    print("| data set | single (mean) | ensemble | distilled per seed | gain kept % | soft / hard 3% per seed | "
          "ensemble > single | distilled > single, every seed | soft > hard, every seed | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        yes = lambda b: "yes" if b else "NO"  # noqa: E731
        distilled = ", ".join(f"{s['distilled']:.2f}" for s in r["seeds"])
        gains = ", ".join(f"{g:.0f}" for g in r["gain_kept_percent"])
        small = ", ".join(f"{s['soft_3pct']:.1f} / {s['hard_3pct']:.1f}" for s in r["seeds"])
        print(f"| {r['set']} | {r['single_mean']:.2f} | {r['ensemble']:.2f} | {distilled} | {gains} | {small} | "
              f"{yes(r['ensemble_above_single'])} | {yes(r['distilled_above_single_every_seed'])} | "
              f"{yes(r['soft_above_hard_every_seed'])} | {r['wall_seconds']:.0f} |")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
