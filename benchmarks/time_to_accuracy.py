"""CIFAR-10 test accuracy against wall seconds and epochs, for the airnet family and resnet-s-w8, side by side.

    python benchmarks/time_to_accuracy.py --data-dir DIR [--epochs 5 10 20] [--seeds 1] [--resume]

Each (net, epoch budget, seed) is its own run from scratch on the validation split's training part (45,000
images; 5,000 carved off as in `dk reproduce cifar10`), with its own recipe (airnet: the packaged
`cifar10/member` recipe; resnet-s-w8: `cifar10/resnet-member`), the schedule fitted to the budget (warm-up
20% of it, at most the recipe's). Reported per run: training wall seconds, validation and test accuracy
(plain and with test-time augmentation), and a per-epoch test curve on 2,000 test images (its seconds
include that evaluation). Beside them, in
the same process: the machine's CPU flags and its own 3x3 convolution rate in fp32 and (where the CPU has
it) bf16, so seconds on another machine read as a ratio. Every finished run is written to the JSON at once
(``--resume`` skips those already there); the end prints a table and the epochs at which doubling the
budget gains < 0.5 validation points. Writes benchmarks/results/time-to-accuracy-<device>.json and a
plot of the curves beside it (.png; ``--plot-only`` redraws it from the JSON).
"""

from __future__ import annotations

import argparse
import itertools
import dataclasses
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cifar_speed import conv_throughput, flops_per_image, recipe_for  # noqa: E402
from common import environment, save  # noqa: E402

from darkknowledge.config import TrainConfig, build_configs  # noqa: E402
from darkknowledge.data import load_split  # noqa: E402
from darkknowledge.errors import DKError  # noqa: E402
from darkknowledge.device import cpu_supports_bf16, resolve_precision  # noqa: E402
from darkknowledge.evaluation import errors_from_logits, predict_logits  # noqa: E402
from darkknowledge.training import new_model  # noqa: E402
from darkknowledge.workflows import train  # noqa: E402

CURVE = 2000  # per-epoch test errors on a seeded sample of the test split


def variant_overrides(variant: str) -> dict:
    """``base``, or ``key=value[,key=value...]`` over the recipe's TrainConfig (YAML values: ``lookahead=true``,
    ``precision=fp32``): how a setting is kept only if it helps on validation, measured beside the recipe."""
    if variant == "base":
        return {}
    pairs = [p.split("=", 1) for p in variant.split(",")]
    if any(len(p) != 2 for p in pairs):
        raise DKError(f"variant {variant!r}: give base or key=value[,key=value...]")
    return {k: yaml.safe_load(v) for k, v in pairs}


def with_variant(cfg: TrainConfig, variant: str) -> TrainConfig:
    overrides = {**dataclasses.asdict(cfg), **variant_overrides(variant)}
    return build_configs((TrainConfig,), overrides, f"variant {variant!r}")[TrainConfig]


def run_name(arch: str, epochs: int, seed: int, variant: str) -> str:
    """A run's checkpoint directory name: ``airnet-32-128-128-e10-s0-lookahead-true``."""
    return f"{arch}-e{epochs}-s{seed}-{variant.replace('=', '-').replace(',', '_')}"


def compare_variants(runs: list[dict]) -> list[dict]:
    """Each variant's mean validation and test accuracy against ``base`` at the same net, epochs and seeds."""
    groups: dict[tuple, dict[int, dict]] = {}
    for r in runs:
        groups.setdefault((r["arch"], r["epochs"], r.get("variant", "base")), {})[r["seed"]] = r
    rows = []
    for (arch, epochs, variant), by_seed in sorted(groups.items()):
        base = groups.get((arch, epochs, "base"), {})
        seeds = sorted(set(by_seed) & set(base))
        if variant == "base" or not seeds:
            continue
        gain = [100 * (by_seed[s]["val_accuracy"] - base[s]["val_accuracy"]) for s in seeds]
        rows.append({"arch": arch, "epochs": epochs, "variant": variant, "seeds": seeds,
                     "val_gain_mean": round(statistics.fmean(gain), 3),
                     "val_gain_std": round(statistics.stdev(gain), 3) if len(gain) > 1 else None,
                     "test_gain_mean": round(statistics.fmean(100 * (by_seed[s]["test_accuracy"]
                                                                      - base[s]["test_accuracy"]) for s in seeds), 3),
                     "train_seconds_ratio": round(statistics.fmean(by_seed[s]["train_seconds"] / base[s]["train_seconds"]
                                                                   for s in seeds), 3)})
    return rows


def budget(cfg: TrainConfig, epochs: int, seed: int, device: str) -> TrainConfig:
    return replace(cfg, epochs=epochs, seed=seed, device=device, warmup_epochs=min(cfg.warmup_epochs, 0.2 * epochs),
                   eval_every=1)


def doubling(runs: list[dict], arch: str) -> dict | None:
    """The smallest budget whose doubling gains < 0.5 points of mean validation accuracy, with the gains."""
    by_epochs: dict[int, list[float]] = {}
    for r in runs:
        if r["arch"] == arch and r.get("variant", "base") == "base":
            by_epochs.setdefault(r["epochs"], []).append(r["val_accuracy"])
    means = {e: 100 * sum(v) / len(v) for e, v in by_epochs.items()}
    gains = {f"{e}->{2 * e}": round(means[2 * e] - means[e], 2) for e in sorted(means) if 2 * e in means}
    chosen = next((e for e in sorted(means) if 2 * e in means and means[2 * e] - means[e] < 0.5), None)
    return {"gains": gains, "converged_at_epochs": chosen}


def plot(payload: dict, path: Path) -> Path:
    """Test accuracy on the curve's sample after each epoch against cumulative wall seconds and against epochs,
    one line per run of the recipe (variants left out): the curve the convergence protocol rests on."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from darkknowledge.experiments.report import save_figure

    fig, (by_time, by_epoch) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = {a: f"C{i}" for i, a in enumerate(sorted({r["arch"] for r in payload["runs"]}))}
    for r in payload["runs"]:
        if r.get("variant", "base") != "base" or not r["curve"]:
            continue
        size = payload["curve_size"]
        acc = [100 * (1 - h["test_errors"] / size) for h in r["curve"]]
        seconds = list(itertools.accumulate(h["seconds"] for h in r["curve"]))
        style = dict(color=colours[r["arch"]], alpha=0.4 + 0.6 * r["epochs"] / max(x["epochs"] for x in payload["runs"]),
                     label=f"{r['arch']} {r['epochs']} ep s{r['seed']}")
        by_time.plot(seconds, acc, marker=".", **style)
        by_epoch.plot([h["epoch"] for h in r["curve"]], acc, marker=".", **style)
    by_time.set_xscale("log")
    by_time.set_xlabel("wall seconds (training and the per-epoch curve evaluation)")
    by_epoch.set_xlabel("epoch")
    for ax in (by_time, by_epoch):
        ax.set_ylabel(f"test accuracy, % ({payload['curve_size']:,} test images)")
        ax.set_ylim(bottom=50)
        ax.grid(alpha=0.3)
    by_epoch.legend(fontsize=7)
    rates = ", ".join(f"{k} {v} GFLOP/s" for k, v in payload["conv_gflops"].items())
    fig.suptitle(f"CIFAR-10 time to accuracy, {payload['cpu_threads']} threads, {payload['precision']} "
                 f"(3x3 convolution rate: {rates})", fontsize=9)
    return save_figure(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", help="CIFAR-10 pickles (required unless --plot-only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", nargs="+", default=["airnet-32-128-128", "resnet-s-w8"])
    ap.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--train-limit", type=int, default=0, help="0: all 50,000 training images")
    ap.add_argument("--val-size", type=int, default=5000)
    ap.add_argument("--tta", type=int, default=2)
    ap.add_argument("--test-limit", type=int, default=0,
                    help="score on a seeded sample of this many test images (smoke runs; 0: all 10,000)")
    ap.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/time-to-accuracy-DEV.json)")
    ap.add_argument("--variants", nargs="+", default=["base"],
                    help="base (the recipe) and/or key=value[,key=value] settings over it, each run beside the "
                         "others: e.g. base lookahead=true alternate_flips=true precision=fp32")
    ap.add_argument("--resume", action="store_true", help="keep the runs already in --out, run the rest")
    ap.add_argument("--save", default=None,
                    help="keep each run's checkpoint under DIR/ARCH-eEPOCHS-sSEED-VARIANT (an interrupted run "
                         "resumes from its last epoch; the nets serve as ensemble members, e.g. for "
                         "peer_torchdistill_cifar.py)")
    ap.add_argument("--plot-only", action="store_true", help="redraw the PNG beside --out from its JSON, run nothing")
    args = ap.parse_args()
    device = torch.device(args.device)
    out = Path(args.out or Path(__file__).resolve().parent / "results" / f"time-to-accuracy-{device.type}.json")
    if args.plot_only:
        if not out.exists():
            raise SystemExit(f"error: no results at {out} to plot")
        print(f"wrote {plot(json.loads(out.read_text()), out.with_suffix('.png'))}")
        return
    if not args.data_dir:
        ap.error("--data-dir is required")
    configs = {a: recipe_for(a) for a in args.archs}  # bad names and settings fail before any work
    try:
        for a, v in itertools.product(args.archs, args.variants):
            with_variant(configs[a], v)
    except DKError as e:
        raise SystemExit(f"error: {e}") from None
    data, (x_val, y_val) = load_split(f"cifar10:{args.data_dir}", args.val_size, args.train_limit)
    if args.test_limit:
        keep = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(1))[:args.test_limit].sort().values
        data = replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep])
    idx = torch.randperm(len(data.y_test), generator=torch.Generator().manual_seed(0))[:CURVE].sort().values
    curve = (data.x_test[idx], data.y_test[idx])

    precision = resolve_precision("auto", device)
    rates = {"fp32": round(conv_throughput(device, "fp32"), 2)}
    if device.type != "cpu" or cpu_supports_bf16():
        rates["bf16"] = round(conv_throughput(device, "bf16"), 2)
    print(f"3x3 convolution 64 -> 64 at 32x32, GFLOP/s: {rates}; training precision {precision}", flush=True)
    payload = {"benchmark": "time_to_accuracy", "precision": precision, "conv_gflops": rates,
               "train_size": len(data.y_train), "val_size": len(y_val), "test_size": len(data.y_test),
               "curve_size": CURVE, "tta": args.tta, **environment(device), "runs": []}
    if args.resume and out.exists():
        payload["runs"] = json.loads(out.read_text())["runs"]
    done = {(r["arch"], r["epochs"], r["seed"], r.get("variant", "base")) for r in payload["runs"]}

    def record() -> None:  # after every run, atomically: a cut-off run never leaves half a file
        payload["convergence"] = {a: doubling(payload["runs"], a) for a in args.archs}
        payload["variants"] = compare_variants(payload["runs"])
        save(out.name, payload, out.parent)

    for arch, base in configs.items():
        for epochs, seed, variant in itertools.product(args.epochs, range(args.seeds), args.variants):
            if (arch, epochs, seed, variant) in done:
                continue
            cfg = budget(with_variant(base, variant), epochs, seed, args.device)
            t0 = time.perf_counter()
            ckpt = Path(args.save) / run_name(arch, epochs, seed, variant) if args.save else None
            r = train(f"{arch} {epochs}ep s{seed} {variant}", data, cfg, out=ckpt, resume=True, progress=True,
                      curve=curve)
            wall = time.perf_counter() - t0
            val = errors_from_logits(predict_logits(r.model, x_val), y_val, 10)["accuracy"]
            tta = errors_from_logits(predict_logits(r.model, data.x_test, tta=args.tta), data.y_test,
                                     10)["accuracy"]
            row = {"arch": arch, "epochs": epochs, "seed": seed, "variant": variant,
                   "precision": resolve_precision(cfg.precision, device), "batch_size": cfg.batch_size, "lr": cfg.lr,
                   "parameters": sum(p.numel() for p in r.model.parameters()),
                   "forward_mflops_per_image": round(flops_per_image(new_model(cfg, (3, 32, 32), 10)) / 1e6, 2),
                   "train_seconds": round(sum(h["seconds"] for h in r.history), 1), "wall_seconds": round(wall, 1),
                   "val_accuracy": val, "test_accuracy": r.test["accuracy"], "test_accuracy_tta": tta,
                   "curve": [{"epoch": h["epoch"], "seconds": round(h["seconds"], 2),
                              "test_errors": h.get("test_errors")} for h in r.history]}
            payload["runs"].append(row)
            record()
            print(f"{arch} {epochs} epochs seed {seed} {variant}: {100 * row['test_accuracy']:.2f}% test "
                  f"({100 * tta:.2f}% with TTA), {100 * val:.2f}% val, {row['train_seconds']:.0f} s", flush=True)
    record()
    print(f"\n| net | epochs | seed | variant | train s | val % | test % | test % TTA |\n|---|---|---|---|---|---|---|---|")
    for r in payload["runs"]:
        print(f"| {r['arch']} | {r['epochs']} | {r['seed']} | {r.get('variant', 'base')} | {r['train_seconds']:.0f} "
              f"| {100 * r['val_accuracy']:.2f} | {100 * r['test_accuracy']:.2f} | {100 * r['test_accuracy_tta']:.2f} |")
    for v in payload["variants"]:
        print(f"{v['arch']} {v['epochs']} epochs, {v['variant']} vs base (seeds {v['seeds']}): validation "
              f"{v['val_gain_mean']:+.2f} points (std {v['val_gain_std']}), test {v['test_gain_mean']:+.2f}, "
              f"{v['train_seconds_ratio']:.2f}x the training seconds")
    for a, c in payload["convergence"].items():
        print(f"{a}: validation gain from doubling the epochs {c['gains']}; converged at {c['converged_at_epochs']}")
    print(f"wrote {out} and {plot(payload, out.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
