"""Datasets, transfer-set filters and on-device input jitter.

Images are kept as float32 tensors ``[N, H, W]`` in [0, 1] and labels as int64 ``[N]``; a label of -1
marks an unlabelled transfer-set example.

Sources (``load_data``):
    ``digits``      scikit-learn's embedded 8x8 digits (1,797 images), split by ``DIGITS_SPLIT``.
    a directory     canonical MNIST IDX files, gzipped or not, in ``DIR/MNIST/raw``, ``DIR/raw`` or ``DIR``.
    a ``.npz`` file arrays ``x_train, y_train, x_test, y_test`` (images ``[N, ...]``, integer labels).
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from darkknowledge.errors import DKError
from darkknowledge.losses import UNLABELLED

# The embedded default: scikit-learn's digits, split once, stratified, with a fixed seed so every
# machine and every run sees the same 50/50 train/test partition (899 test images).
DIGITS_SPLIT = dict(test_size=0.5, random_state=0)


@dataclass(frozen=True)
class Dataset:
    """A train/test pair of image tensors with integer labels."""

    name: str
    x_train: torch.Tensor  # [N, H, W] float32 in [0, 1]
    y_train: torch.Tensor  # [N] int64
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def in_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))


def from_arrays(name: str, x_train, y_train, x_test, y_test, scale: float) -> Dataset:
    """A checked Dataset from arrays of images (divided by ``scale``) and integer labels."""
    x_train = torch.as_tensor(np.array(x_train), dtype=torch.float32) / scale
    x_test = torch.as_tensor(np.array(x_test), dtype=torch.float32) / scale
    y_train = torch.as_tensor(np.asarray(y_train).astype(np.int64))
    y_test = torch.as_tensor(np.asarray(y_test).astype(np.int64))
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise DKError(f"{name}: images and labels differ in count "
                      f"(train {len(x_train)} vs {len(y_train)}, test {len(x_test)} vs {len(y_test)})")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DKError(f"{name}: train images {tuple(x_train.shape[1:])} and test images "
                      f"{tuple(x_test.shape[1:])} differ in shape")
    if len(y_train) == 0 or len(y_test) == 0:
        raise DKError(f"{name}: empty train or test split")
    if min(int(y_train.min()), int(y_test.min())) < 0:
        raise DKError(f"{name}: negative labels")
    num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1
    return Dataset(name, x_train, y_train, x_test, y_test, num_classes)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (pixel values 0..16), split by ``DIGITS_SPLIT``."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    d = sk_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(d.images, d.target, stratify=d.target, **DIGITS_SPLIT)
    return from_arrays("digits", x_tr, y_tr, x_te, y_te, scale=16.0)


_IDX_MAGIC = {2051: 3, 2049: 1}  # images: (n, rows, cols); labels: (n,)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzipped if its name ends in .gz) with checks on magic and length."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DKError(f"cannot read {path}: {e}") from None
    if len(raw) < 8:
        raise DKError(f"{path}: truncated IDX file ({len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_MAGIC:
        raise DKError(f"{path}: not an IDX file of unsigned bytes (magic {magic:#010x}, expected 0x00000803 or 0x00000801)")
    ndim = _IDX_MAGIC[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DKError(f"{path}: truncated IDX header")
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DKError(f"{path}: truncated or padded IDX file: {len(raw)} bytes, header {shape} needs {expected}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(root: Path, stem: str) -> Path:
    for d in (root / "MNIST" / "raw", root / "raw", root):
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    raise DKError(f"MNIST file {stem}[.gz] not found in {root} (looked in MNIST/raw/, raw/ and the directory itself)")


def load_mnist(root: str | Path) -> Dataset:
    """Canonical MNIST IDX files (torchvision layout ``ROOT/MNIST/raw/`` or a plain directory)."""
    root = Path(root)
    if not root.is_dir():
        raise DKError(f"MNIST directory {root} does not exist")
    arrays = {s: read_idx(_find_idx(root, f"{s}-ubyte")) for s in
              ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")}
    for s, nd in (("train-images-idx3", 3), ("t10k-images-idx3", 3), ("train-labels-idx1", 1), ("t10k-labels-idx1", 1)):
        if arrays[s].ndim != nd:
            raise DKError(f"MNIST {s}: expected {nd}-d data, got shape {arrays[s].shape}")
    return from_arrays("mnist", arrays["train-images-idx3"], arrays["train-labels-idx1"],
                 arrays["t10k-images-idx3"], arrays["t10k-labels-idx1"], scale=255.0)


def load_npz(path: str | Path) -> Dataset:
    """A ``.npz`` with ``x_train, y_train, x_test, y_test``; integer images are scaled by their dtype max."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = {"x_train", "y_train", "x_test", "y_test"} - set(f.files)
            if missing:
                raise DKError(f"{path}: missing arrays {sorted(missing)} (needs x_train, y_train, x_test, y_test)")
            arrays = {k: f[k] for k in ("x_train", "y_train", "x_test", "y_test")}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DKError(f"cannot read {path}: {e}") from None
    for k in ("y_train", "y_test"):
        if not np.issubdtype(arrays[k].dtype, np.integer):
            raise DKError(f"{path}: {k} must hold integer labels, got {arrays[k].dtype}")
    x = arrays["x_train"]
    scale = float(np.iinfo(x.dtype).max) if np.issubdtype(x.dtype, np.integer) else 1.0
    return from_arrays(path.stem, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"], scale)


def load_data(source: str) -> Dataset:
    """``"digits"``, an MNIST directory, or a ``.npz`` file (see the module docstring)."""
    if source == "digits":
        return load_digits()
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DKError(f"data file {path} does not exist")
        return load_npz(path)
    if path.is_dir():
        return load_mnist(path)
    raise DKError(f"data source {source!r} is neither 'digits', an existing MNIST directory nor a .npz file")


# ---- transfer-set filters (paper sections 3 and 6) -------------------------------------------------

def drop_classes(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove every example of ``classes`` (the paper's 'omitted 3' transfer set)."""
    keep = ~torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype, device=y.device))
    return x[keep], y[keep]


def keep_classes(x: torch.Tensor, y: torch.Tensor, classes: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep only examples of ``classes`` (the paper's '7s and 8s only' transfer set)."""
    keep = torch.isin(y, torch.as_tensor(list(classes), dtype=y.dtype, device=y.device))
    return x[keep], y[keep]


def keep_fraction(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random subset of ``fraction`` of the examples (paper section 6 uses 3%)."""
    if not 0 < fraction <= 1:
        raise DKError(f"fraction must be in (0, 1], got {fraction}")
    n = max(1, round(fraction * len(y)))
    idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return x[idx], y[idx]


def drop_labels(y: torch.Tensor) -> torch.Tensor:
    """Mark every example unlabelled (-1): the student then learns from soft targets alone."""
    return torch.full_like(y, UNLABELLED)


def split_validation(x: torch.Tensor, y: torch.Tensor, size: int, seed: int = 0):
    """Seeded split ``(x_rest, y_rest, x_val, y_val)`` with ``size`` validation examples."""
    if not 0 < size < len(y):
        raise DKError(f"validation size must be in (0, {len(y)}), got {size}")
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    val, rest = perm[:size].sort().values, perm[size:].sort().values
    return x[rest], y[rest], x[val], y[val]


# ---- background and augmentation ---------------------------------------------------------------------

def background_value(x: torch.Tensor, min_share: float = 0.25, sample: int = 1000) -> float:
    """The images' background level: their most common pixel value if at least ``min_share`` of the
    pixels hold it, else 0.

    MNIST's background is 0 (about 80% of its pixels); inverted digits have a background of 1. An MLP
    subtracts this value from its input (``MLP.calibrate_input``) and jitter pads with it, so a data set
    whose background is not 0 trains like one whose background is. Read from up to ``sample`` images
    spread evenly over ``x``.
    """
    if x.numel() == 0:
        return 0.0
    step = max(1, len(x) // sample)
    values, counts = torch.unique(x[::step].detach().reshape(-1).float().cpu(), return_counts=True)
    top = int(counts.argmax())
    return float(values[top]) if counts[top] >= min_share * counts.sum() else 0.0


def pad_for_jitter(x: torch.Tensor, max_shift: int, value: float = 0.0) -> torch.Tensor:
    """Pad images ``[N, H, W]`` by ``max_shift`` on every side with ``value`` (the background), once,
    for ``gather_jittered``."""
    k = max_shift
    return torch.nn.functional.pad(x, (k, k, k, k), value=value) if k > 0 else x


def gather_jittered(padded: torch.Tensor, idx: torch.Tensor, max_shift: int,
                    generator: torch.Generator | None = None, return_shift: bool = False):
    """Images ``idx`` of a ``pad_for_jitter`` tensor, each translated by an independent random
    (dy, dx) in [-k, k]^2, filled with the padding: ``[B, H, W]`` from ``[N, H + 2k, W + 2k]``.

    One flat ``index_select`` on the padded tensor's device: no per-example Python loop, no host round
    trip, and on a CPU several times cheaper than gathering with advanced indexing. With
    ``return_shift``, also each image's translation as one code ``dy * (2k + 1) + dx`` (dy, dx in
    0..2k index the padded image, so code (k, k) is the untranslated view).
    """
    k = max_shift
    if k <= 0:  # any shape: flat feature vectors too
        out = padded.index_select(0, idx)
        return (out, torch.zeros_like(idx)) if return_shift else out
    n, ph, pw = padded.shape
    h, w = ph - 2 * k, pw - 2 * k
    dev = padded.device
    shifts = torch.randint(0, 2 * k + 1, (2, len(idx)), device=dev, generator=generator)
    # Flat index of output pixel (i, j) of image n: n * ph * pw + (i + dy_n) * pw + (j + dx_n).
    start = idx * (ph * pw) + shifts[0] * pw + shifts[1]  # [B]
    pixel = (torch.arange(h, device=dev)[:, None] * pw + torch.arange(w, device=dev)).reshape(-1)  # [H * W]
    out = padded.reshape(-1).index_select(0, (start[:, None] + pixel).reshape(-1)).view(len(idx), h, w)
    return (out, shifts[0] * (2 * k + 1) + shifts[1]) if return_shift else out


def jittered_views(x: torch.Tensor, max_shift: int, value: float = 0.0):
    """Yield ``(code, view)``: every translation of the images ``[N, H, W]`` that ``gather_jittered`` can
    draw, each view ``[N, H, W]`` with its shift code (filled with ``value``)."""
    k, (h, w) = max_shift, x.shape[1:]
    padded = pad_for_jitter(x, k, value)
    for dy in range(2 * k + 1):
        for dx in range(2 * k + 1):
            yield dy * (2 * k + 1) + dx, padded[:, dy:dy + h, dx:dx + w].contiguous()


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None,
           value: float = 0.0) -> torch.Tensor:
    """Translate each image ``[B, H, W]`` by an independent random (dy, dx) in [-k, k]^2, filled with ``value``.

    The paper's MNIST teacher saw inputs jittered by up to 2 pixels (section 3). Training pads the
    whole resident data set once and calls ``gather_jittered`` per batch instead.
    """
    if max_shift <= 0:
        return x
    return gather_jittered(pad_for_jitter(x, max_shift, value), torch.arange(len(x), device=x.device), max_shift, generator)
