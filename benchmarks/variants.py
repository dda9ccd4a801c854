"""28x28, 10-class data sets built from MNIST, for checking that the defaults are not tuned to MNIST alone.

    python benchmarks/variants.py --mnist DIR --variant inverted --out DIR2   # writes canonical IDX files
    python benchmarks/variants.py --cifar DIR --variant cifar10-grey --out DIR3

Variants (train and test transformed alike, labels kept unless the variant says otherwise):

- ``inverted``: 255 - pixel; white background, so the mean input is ~0.87 instead of ~0.13. Fed as it
  is, the first layer's activations (and the curvature a soft-target regression sees) are several times
  larger and input dropout drops background pixels; the MLP's input shift (its background level, set by
  ``fit``) and jitter padded with the background remove that difference.
- ``rotated``: every image rotated by a seeded random angle in [-45, 45] degrees and shifted by up to 3
  pixels: harder, so the teacher is less confident and its soft targets carry more mass off the top class.
- ``remapped``: ``rotated`` images with the labels permuted by a fixed derangement, so nothing keyed to
  MNIST's class indices (e.g. the 3s of the omit-3 experiment) still lines up with the digit it was.

Built from CIFAR (``--cifar DIR``, the canonical pickles): natural images, not digits, at MNIST's size.

- ``cifar10-grey``: CIFAR-10's 60,000 images in grey (Pillow's ITU-R 601 luma), down-sized 32 -> 28 pixels
  (Lanczos); its 10 classes, 50,000 / 10,000 as the originals.
- ``cifar100-grey``: CIFAR-100's first 10 superclasses (aquatic mammals, fish, flowers, food containers,
  fruit and vegetables, household electrical devices, furniture, insects, large carnivores, large man-made
  outdoor things), five heterogeneous fine classes each, labelled by superclass; the central 28x28 crop
  in grey: 25,000 / 5,000 images.

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

from PIL import Image

from darkknowledge.data import load_cifar, load_mnist

MNIST_VARIANTS = ("inverted", "rotated", "remapped")
CIFAR_VARIANTS = ("cifar10-grey", "cifar100-grey")
VARIANTS = MNIST_VARIANTS + CIFAR_VARIANTS
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


def grey28(images: np.ndarray, crop: bool) -> np.ndarray:
    """uint8 ``[N, 3, 32, 32]`` colour images -> ``[N, 28, 28]`` grey: down-sized (Lanczos) or centre-cropped."""
    out = np.empty((len(images), 28, 28), dtype=np.uint8)
    for i, im in enumerate(images):
        grey = Image.fromarray(np.ascontiguousarray(im.transpose(1, 2, 0))).convert("L")
        out[i] = np.asarray(grey.crop((2, 2, 30, 30)) if crop else grey.resize((28, 28), Image.Resampling.LANCZOS))
    return out


def build_from_cifar(name: str, cifar_dir: str | Path) -> dict[str, np.ndarray]:
    """A CIFAR-derived variant's uint8 images and labels (see the module docstring), each split in a seeded
    shuffled order (the pickles laid out here are sorted by class; MNIST's files are not)."""
    d = load_cifar(cifar_dir, "cifar10" if name == "cifar10-grey" else "cifar100")
    arrays = {}
    for i, (split, x, y) in enumerate((("train", d.x_train, d.y_train), ("test", d.x_test, d.y_test))):
        x, y = x.numpy(), y.numpy()
        if name == "cifar100-grey":
            y = np.asarray(d.coarse_of_class)[y]
            x, y = x[y < 10], y[y < 10]
        order = np.random.default_rng(i).permutation(len(y))
        arrays[f"x_{split}"], arrays[f"y_{split}"] = grey28(x[order], crop=name == "cifar100-grey"), y[order]
    return arrays


def build(name: str, mnist_dir: str | Path | None = None, cifar_dir: str | Path | None = None) -> dict[str, np.ndarray]:
    """The variant's uint8 images and labels: ``x_train, y_train, x_test, y_test``."""
    if name in CIFAR_VARIANTS:
        if cifar_dir is None:
            raise ValueError(f"{name} is built from CIFAR: give its directory")
        return build_from_cifar(name, cifar_dir)
    if mnist_dir is None:
        raise ValueError(f"{name} is built from MNIST: give its directory")
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
    ap.add_argument("--mnist", help="MNIST directory (IDX files), for the MNIST variants")
    ap.add_argument("--cifar", help="directory with the CIFAR-10/100 pickles, for the CIFAR variants")
    ap.add_argument("--variant", choices=VARIANTS, required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if (args.cifar if args.variant in CIFAR_VARIANTS else args.mnist) is None:
        ap.error(f"--variant {args.variant} needs --{'cifar' if args.variant in CIFAR_VARIANTS else 'mnist'}")
    print(write_idx(args.out, build(args.variant, args.mnist, args.cifar)))


if __name__ == "__main__":
    main()
