"""10-class 32x32 data sets in the CIFAR-10 pickle layout, for checking that the CIFAR recipes are not tuned to
CIFAR-10 alone (`dk reproduce cifar10 --data-dir OUT --quick` runs on them as on CIFAR-10).

    python benchmarks/cifar_variants.py --data-dir DIR --variant cifar100-10 --out OUT [--seed 0]

Variants:

- ``cifar100-10``: 10 CIFAR-100 classes, one from each of 10 seeded superclasses (so no two are a pair the
  superclasses call alike), relabelled 0-9: 5,000 training and 1,000 test images, a tenth of CIFAR-10's
  training set, different objects.
- ``inverted``: CIFAR-10 with every pixel inverted (255 - value), the colour channels rotated (RGB -> GBR) and
  the labels permuted by a fixed derangement: other input statistics (the whitening and normalisation are set
  from them), other class indices.

Writes OUT/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}: uint8 rows of 3,072 values and
label lists, what ``darkknowledge.data.load_cifar`` reads (and torchvision's CIFAR10).
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np

from darkknowledge.data import load_cifar

VARIANTS = ("cifar100-10", "inverted")
PERMUTATION = np.array([3, 7, 0, 9, 5, 1, 8, 2, 4, 6])  # a derangement: no class keeps its index


def cifar100_10(data_dir: str, seed: int):
    d = load_cifar(data_dir, "cifar100")
    rng = np.random.default_rng(seed)
    coarse = np.asarray(d.coarse_of_class)
    supers = rng.choice(int(coarse.max()) + 1, 10, replace=False)
    classes = [int(rng.choice(np.flatnonzero(coarse == s))) for s in supers]
    table = np.full(d.num_classes, -1)
    table[classes] = np.arange(10)
    out = []
    for x, y in ((d.x_train, d.y_train), (d.x_test, d.y_test)):
        y = table[np.asarray(y)]
        keep = y >= 0
        out += [np.asarray(x)[keep], y[keep]]
    return (*out, [d.class_names[c] for c in classes])


def inverted(data_dir: str, seed: int):
    d = load_cifar(data_dir, "cifar10")
    def flip(x):
        return (255 - np.asarray(x))[:, [1, 2, 0]]
    return (flip(d.x_train), PERMUTATION[np.asarray(d.y_train)], flip(d.x_test), PERMUTATION[np.asarray(d.y_test)],
            [d.class_names[int(np.flatnonzero(PERMUTATION == c)[0])] for c in range(10)])


def write_cifar10(out: Path, x_train, y_train, x_test, y_test, names) -> Path:
    d = out / "cifar-10-batches-py"
    d.mkdir(parents=True, exist_ok=True)
    parts = np.array_split(np.arange(len(y_train)), 5)
    files = [(f"data_batch_{i + 1}", x_train[p], y_train[p]) for i, p in enumerate(parts)]
    for name, x, y in files + [("test_batch", x_test, y_test)]:
        batch = {"batch_label": name, "data": np.ascontiguousarray(x.reshape(len(x), -1), dtype=np.uint8),
                 "labels": [int(v) for v in y], "filenames": [f"{name}_{i}.png" for i in range(len(y))]}
        tmp = d / f"{name}.tmp"
        tmp.write_bytes(pickle.dumps(batch, protocol=2))
        tmp.replace(d / name)
    tmp = d / "batches.meta.tmp"  # written last: its presence marks a complete layout
    tmp.write_bytes(pickle.dumps({"label_names": list(names), "num_cases_per_batch": len(parts[0]),
                                  "num_vis": 3072}, protocol=2))
    tmp.replace(d / "batches.meta")
    return d


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", required=True, help="directory with the canonical CIFAR-10/100 pickles")
    ap.add_argument("--variant", required=True, choices=VARIANTS)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    build = {"cifar100-10": cifar100_10, "inverted": inverted}[args.variant]
    x_train, y_train, x_test, y_test, names = build(args.data_dir, args.seed)
    d = write_cifar10(Path(args.out), x_train, y_train, x_test, y_test, names)
    print(f"{args.variant}: {len(y_train)} training and {len(y_test)} test images of {len(names)} classes "
          f"({', '.join(names)}) -> {d}")


if __name__ == "__main__":
    main()
