"""Images/s of the CIFAR training step against the machine's own convolution throughput, side by side.

    python benchmarks/cifar_speed.py --data-dir DIR [--device cpu] [--archs resnet-s-w8 airnet-32-128-128]
                                     [--images 5120]

For each net: the convolution/linear FLOPs of one image (forward; a training step costs about 3x), seconds
per training step of ``fit`` (hard labels, its recipe's batch size and augmentation: ``recipe_for``, the
precision ``auto`` picks) over ``--images`` real CIFAR-10 images (median of 3 epochs after a warm-up
epoch), images/s, achieved GFLOP/s, and the ratio to the machine's own rate on one large 3x3 convolution
(64 -> 64 channels at 32x32, batch 256, channels-last) measured in the same run, in the same precision.
Writes benchmarks/results/cifar-speed-<device>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import environment, save, spread, timed  # noqa: E402

from darkknowledge.config import TrainConfig, packaged_recipe  # noqa: E402
from darkknowledge.data import load_cifar  # noqa: E402
from darkknowledge.training import HardLabels, fit, new_model  # noqa: E402
from darkknowledge.device import resolve_precision  # noqa: E402


RECIPES = {"airnet": "member", "resnet": "resnet-member"}  # packaged cifar10 recipes by net family


def recipe_for(arch: str) -> TrainConfig:
    """The packaged CIFAR-10 recipe of ``arch``'s family (airnet: ``cifar10/member``; resnet-s:
    ``cifar10/resnet-member``) with ``arch`` as its net."""
    family = arch.split("-")[0]
    if family not in RECIPES:
        raise SystemExit(f"error: no recipe for {arch!r}; nets: airnet-A-B-C, resnet-s-wW")
    return replace(packaged_recipe("cifar10", RECIPES[family])[TrainConfig], arch=arch)


def conv_throughput(device: torch.device, precision: str, repeats: int = 5) -> float:
    """GFLOP/s of one 64 -> 64, 3x3 convolution over a [256, 64, 32, 32] channels-last batch (forward)."""
    conv = nn.Conv2d(64, 64, 3, padding=1, bias=False).to(device).to(memory_format=torch.channels_last)
    x = torch.randn(256, 64, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def run():
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            return conv(x)

    run()
    times = [timed(run, device)[1] for _ in range(repeats)]
    del dtype
    return 2 * 256 * 64 * 64 * 9 * 32 * 32 / statistics.median(times) / 1e9


def flops_per_image(model: nn.Module, shape=(1, 3, 32, 32)) -> float:
    """Forward FLOPs of one image through the model's convolutions and linear layers (2 per multiply-add)."""
    total = 0.0

    def hook(m, inp, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += 2 * out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += 2 * m.in_features * m.out_features * out.shape[0]

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        model.eval()(torch.zeros(shape, dtype=torch.uint8))
    for h in handles:
        h.remove()
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--archs", nargs="+", default=["resnet-s-w8", "resnet-s-w16", "airnet-32-128-128",
                                                   "airnet-64-256-256"])
    ap.add_argument("--images", type=int, default=5120)
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args()
    device = torch.device(args.device)
    precision = resolve_precision("auto", device)
    data = load_cifar(args.data_dir, "cifar10")
    x, y = data.x_train[:args.images].to(device), data.y_train[:args.images].to(device)
    conv_gflops = conv_throughput(device, precision)
    print(f"{precision} 3x3 convolution, 64 -> 64 channels, 32x32: {conv_gflops:.1f} GFLOP/s")
    rows = []
    for arch in args.archs:
        cfg = replace(recipe_for(arch), epochs=4, device=str(device), warmup_epochs=0.0)
        model = new_model(cfg, (3, 32, 32), 10)
        flops = flops_per_image(model)
        hist = fit(model, x, HardLabels(y), cfg, progress=False)
        secs = [h["seconds"] for h in hist[1:]]  # the first epoch warms up allocators and kernels
        ips = args.images / statistics.median(secs)
        achieved = 3 * flops * ips / 1e9
        row = {"arch": cfg.arch, "parameters": sum(p.numel() for p in model.parameters()),
               "forward_mflops_per_image": round(flops / 1e6, 2), "seconds_per_epoch": spread(secs),
               "batch_size": cfg.batch_size, "images_per_second": round(ips, 1), "train_gflops": round(achieved, 2),
               "ratio_to_conv_throughput": round(achieved / conv_gflops, 3),
               "seconds_per_cifar10_epoch_45k": round(45_000 / ips, 1)}
        rows.append(row)
        print(f"{cfg.arch}: {row['parameters']} params, {row['forward_mflops_per_image']} MFLOP/image, "
              f"{ips:.0f} images/s, {achieved:.1f} GFLOP/s = {row['ratio_to_conv_throughput']:.2f} x the conv rate; "
              f"45k-image epoch {row['seconds_per_cifar10_epoch_45k']} s")
    path = save(f"cifar-speed-{device.type}.json", {
        "benchmark": "cifar_speed", "precision": precision, "images": args.images,
        "conv_gflops": round(conv_gflops, 2), "rows": rows, "seeds": [0], **environment(device)},
        args.out_dir)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
