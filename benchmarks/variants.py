"""28x28, 10-class data sets built from MNIST, for checking that the defaults are not tuned to MNIST alone.

    python benchmarks/variants.py --mnist DIR --variant inverted --out DIR2   # writes canonical IDX files

Variants (train and test transformed alike, labels kept unless the variant says otherwise):

- ``inverted``: 255 - pixel; white background, so the mean input is ~0.87 instead of ~0.13. Fed as it
  is, the first layer's activations (and the curvature a soft-target regression sees) are several times
  larger and input dropout drops background pixels; the MLP's input shift (its background level, set by
  ``fit``) and jitter padded with the background remove that difference.
- ``rotated``: every image rotated by a seeded random angle in [-45, 45] degrees and shifted by up to 3
  pixels: harder, so the teacher is less confident and its soft targets carry more mass off the top class.
- ``remapped``: ``rotated`` images with the labels permuted by a fixed derangement, so nothing keyed to
  MNIST's class indices (e.g. the 3s of the omit-3 experiment) still lines up with the digit it was.

The IDX writer produces exactly what ``darkknowledge.data.load_mnist`` reads, so every ``dk`` command runs
on a variant as on MNIST.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from darkknowledge.data import load_mnist

VARIANTS = ("inverted", "rotated", "remapped")
PERMUTATION = (3, 7, 0, 9, 5, 1, 8, 2, 4, 6)  # a derangement: no class keeps its index


def rotate_shift(images: np.ndarray, seed: int, max_degrees: float = 45.0, max_shift: int = 3) -> np.ndarray:
    """Rotate each uint8 image by a random angle and shift it by a random whole-pixel offset (seeded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(images, dtype=torch.float32).unsqueeze(1)
    n, _, h, w = x.shape
    angle = (torch.rand(n, generator=g) * 2 - 1) * math.radians(max_degrees)
    shift = torch.randint(-max_shift, max_shift + 1, (n, 2), generator=g).float()
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.squeeze(1).round().clamp(0, 255).to(torch.uint8).numpy()


def build(name: str, mnist_dir: str | Path) -> dict[str, np.ndarray]:
    """The variant's uint8 images and labels: ``x_train, y_train, x_test, y_test``."""
    d = load_mnist(mnist_dir)
    arrays = {"x_train": (d.x_train * 255).round().to(torch.uint8).numpy(), "y_train": d.y_train.numpy(),
              "x_test": (d.x_test * 255).round().to(torch.uint8).numpy(), "y_test": d.y_test.numpy()}
    if name == "inverted":
        arrays["x_train"], arrays["x_test"] = 255 - arrays["x_train"], 255 - arrays["x_test"]
    elif name in ("rotated", "remapped"):
        arrays["x_train"] = rotate_shift(arrays["x_train"], seed=1)
        arrays["x_test"] = rotate_shift(arrays["x_test"], seed=2)
        if name == "remapped":
            perm = np.asarray(PERMUTATION)
            arrays["y_train"], arrays["y_test"] = perm[arrays["y_train"]], perm[arrays["y_test"]]
    else:
        raise ValueError(f"unknown variant {name!r}; allowed: {', '.join(VARIANTS)}")
    return arrays


def write_idx(out: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Canonical uncompressed IDX files under ``OUT/MNIST/raw/`` (the torchvision layout)."""
    raw = Path(out) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for stem, key in (("train-images-idx3-ubyte", "x_train"), ("train-labels-idx1-ubyte", "y_train"),
                      ("t10k-images-idx3-ubyte", "x_test"), ("t10k-labels-idx1-ubyte", "y_test")):
        a = np.ascontiguousarray(arrays[key], dtype=np.uint8)
        header = (2051 if a.ndim == 3 else 2049).to_bytes(4, "big") + b"".join(s.to_bytes(4, "big") for s in a.shape)
        tmp = raw / f".{stem}.tmp"
        tmp.write_bytes(header + a.tobytes())
        tmp.replace(raw / stem)
    return Path(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mnist", required=True, help="MNIST directory (IDX files)")
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    print(write_idx(args.out, build(args.variant, args.mnist)))


if __name__ == "__main__":
    main()
