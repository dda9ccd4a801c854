"""Datasets, transfer-set filters and on-device input jitter.

Grey images are kept as float32 tensors ``[N, H, W]`` in [0, 1]; colour images (CIFAR) stay uint8
``[N, 3, H, W]``, a quarter of the memory, resident on the training device, and become floats only per
batch (the model's ``InputNorm`` scales and normalises them). Labels are int64 ``[N]``; a label of -1
marks an unlabelled transfer-set example.

Sources (``load_data``):
    ``digits``         scikit-learn's embedded 8x8 digits (1,797 images), split by ``DIGITS_SPLIT``.
    a directory        canonical MNIST IDX files, gzipped or not, in ``DIR/MNIST/raw``, ``DIR/raw`` or ``DIR``;
                       without them, the CIFAR-10 (then CIFAR-100) pickles in their torchvision layout.
    ``cifar10:DIR``    the CIFAR-10 pickles in ``DIR/cifar-10-batches-py`` (or ``DIR`` itself).
    ``cifar100:DIR``   the CIFAR-100 pickles in ``DIR/cifar-100-python`` (or ``DIR``), fine labels.
    ``mnist:DIR``      MNIST only, even where CIFAR lies beside it.
    ``folder:DIR``     torchvision's ImageFolder layout: ``DIR/train/CLASS/*`` and ``DIR/test/CLASS/*`` (or
                       ``DIR/val/CLASS/*``), PNG or JPEG; ``folder:DIR@32`` or ``@32x48`` (width x height)
                       resizes every image. Decoded once with Pillow, cached in ``DIR/.dk-cache``.
    a ``.npz`` file    arrays ``x_train, y_train, x_test, y_test`` (images ``[N, ...]``, integer labels).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import pickle
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

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
    class_names: tuple[str, ...] = ()
    # CIFAR-100's 20 superclasses: coarse label of every fine class, and their names (else empty).
    coarse_of_class: tuple[int, ...] = ()
    coarse_names: tuple[str, ...] = ()

    @property
    def in_features(self) -> int:
        return int(np.prod(self.x_train.shape[1:]))

    @property
    def in_shape(self) -> tuple[int, ...]:
        """One image's shape: ``(H, W)`` for grey images, ``(C, H, W)`` for colour ones."""
        return tuple(self.x_train.shape[1:])


def from_arrays(name: str, x_train, y_train, x_test, y_test, scale: float | None) -> Dataset:
    """A checked Dataset from arrays of images (divided by ``scale``; ``None``: kept as uint8) and integer labels."""
    if scale is None:
        x_train, x_test = torch.as_tensor(np.array(x_train, np.uint8)), torch.as_tensor(np.array(x_test, np.uint8))
    else:
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
    """``"digits"``, a data directory, ``cifar10:DIR``, ``cifar100:DIR``, ``mnist:DIR`` or a ``.npz``
    file (see the module docstring)."""
    if source == "digits":
        return load_digits()
    kind, sep, rest = source.partition(":")
    if sep and kind in ("cifar10", "cifar100", "mnist"):
        return load_mnist(rest) if kind == "mnist" else load_cifar(rest, kind)
    if sep and kind == "folder":
        return load_folder(*_folder_spec(rest))
    path = Path(source)
    if path.suffix == ".npz":
        if not path.is_file():
            raise DKError(f"data file {path} does not exist")
        return load_npz(path)
    if path.is_dir():
        for kind, finder in (("mnist", _has_mnist), ("cifar10", _has_cifar10), ("cifar100", _has_cifar100)):
            if finder(path):
                return load_mnist(path) if kind == "mnist" else load_cifar(path, kind)
        raise DKError(f"{path} holds neither MNIST IDX files nor CIFAR pickles (lay them out with "
                      "`python ../shared/tools/datasets.py install DIR`)")
    raise DKError(f"data source {source!r} is neither 'digits', an existing data directory, "
                  "cifar10:DIR, cifar100:DIR, mnist:DIR, folder:DIR nor a .npz file")


def _has_mnist(root: Path) -> bool:
    try:
        _find_idx(root, "train-images-idx3-ubyte")
        return True
    except DKError:
        return False


def _cifar_dir(root: Path, kind: str) -> Path | None:
    sub, probe = CIFAR_LAYOUT[kind]
    for d in (root / sub, root):
        if (d / probe).is_file():
            return d
    return None


def _has_cifar10(root: Path) -> bool:
    return _cifar_dir(root, "cifar10") is not None


def _has_cifar100(root: Path) -> bool:
    return _cifar_dir(root, "cifar100") is not None


# ---- CIFAR (the canonical pickles, torchvision layout) ---------------------------------------------------

# kind -> (sub-directory, a file it must hold)
CIFAR_LAYOUT = {"cifar10": ("cifar-10-batches-py", "batches.meta"), "cifar100": ("cifar-100-python", "meta")}


def _unpickle_cifar(path: Path) -> dict[str, Any]:
    """One CIFAR pickle: a dict of numpy arrays, lists and strings, read with an unpickler that builds
    nothing else (the published files hold only those), so a tampered file cannot run code."""
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DKError(f"CIFAR file {path} not found") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DKError(f"cannot read CIFAR file {path}: {e}") from None
    if not isinstance(obj, dict):
        raise DKError(f"{path}: not a CIFAR pickle (holds {type(obj).__name__}, expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


class _CifarUnpickler(pickle.Unpickler):
    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (not part of a CIFAR file)")
        return super().find_class(module, name)


def _cifar_arrays(d: Path, name: str, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle_cifar(d / name)
    if "data" not in batch or label_key not in batch:
        raise DKError(f"{d / name}: missing 'data' or {label_key!r} (not a CIFAR batch)")
    x, y = np.asarray(batch["data"]), np.asarray(batch[label_key])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32:
        raise DKError(f"{d / name}: images must be uint8 rows of 3072 values, got {x.dtype} {x.shape}")
    if len(x) != len(y):
        raise DKError(f"{d / name}: {len(x)} images but {len(y)} labels")
    return x.reshape(-1, 3, 32, 32), y.astype(np.int64)


def load_cifar(root: str | Path, kind: str = "cifar10") -> Dataset:
    """CIFAR-10 or CIFAR-100 (fine labels, with the coarse superclass of each) from the canonical pickles.

    Images stay uint8 ``[N, 3, 32, 32]``; the training split's order is the files' (class-major in the
    copies laid out here: always split with a seeded permutation, as ``split_validation`` does).
    """
    if kind not in CIFAR_LAYOUT:
        raise DKError(f"unknown CIFAR variant {kind!r}; allowed: {', '.join(CIFAR_LAYOUT)}")
    root = Path(root)
    if not root.is_dir():
        raise DKError(f"{kind} directory {root} does not exist")
    d = _cifar_dir(root, kind)
    if d is None:
        sub, probe = CIFAR_LAYOUT[kind]
        raise DKError(f"{kind}: {probe} not found in {root / sub} or {root} (lay it out with "
                      f"`python ../shared/tools/datasets.py install DIR --only {kind}`)")
    if kind == "cifar10":
        parts = [_cifar_arrays(d, f"data_batch_{i}", "labels") for i in range(1, 6)]
        x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        x_test, y_test = _cifar_arrays(d, "test_batch", "labels")
        names = tuple(_unpickle_cifar(d / "batches.meta").get("label_names", ()))
        coarse_of, coarse_names = (), ()
    else:
        x_train, y_train = _cifar_arrays(d, "train", "fine_labels")
        x_test, y_test = _cifar_arrays(d, "test", "fine_labels")
        meta = _unpickle_cifar(d / "meta")
        names, coarse_names = tuple(meta.get("fine_label_names", ())), tuple(meta.get("coarse_label_names", ()))
        _, coarse = _cifar_arrays(d, "train", "coarse_labels")
        table = np.full(int(y_train.max()) + 1, -1)
        table[y_train] = coarse
        coarse_of = tuple(int(c) for c in table)
    data = from_arrays(kind, x_train, y_train, x_test, y_test, scale=None)
    return replace(data, class_names=_names(names), coarse_of_class=coarse_of, coarse_names=_names(coarse_names))


# ---- image folders (torchvision's ImageFolder layout) ------------------------------------------------------

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
FOLDER_CACHE = ".dk-cache"
_FOLDER_FORMAT = 1  # bump when the cached arrays change meaning


def _folder_spec(rest: str) -> tuple[str, tuple[int, int] | None]:
    """``DIR``, ``DIR@32`` or ``DIR@32x48`` -> (DIR, (width, height) or None)."""
    m = re.fullmatch(r"(.+)@([1-9]\d{0,4})(?:x([1-9]\d{0,4}))?", rest)
    if not m:
        if "@" in rest and not Path(rest).exists():
            raise DKError(f"folder:{rest}: the size after '@' must be WIDTH or WIDTHxHEIGHT in pixels, e.g. @32")
        return rest, None
    width = int(m.group(2))
    return m.group(1), (width, int(m.group(3) or width))


def _folder_files(split_dir: Path, classes: Sequence[str] | None) -> tuple[list[str], list[tuple[Path, int]]]:
    """The class names (sorted sub-directories, as ImageFolder) and every (image, label) of one split."""
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DKError(f"{split_dir} holds no class folders (expected {split_dir}/CLASS/*.png or .jpg)")
    names = list(classes) if classes is not None else found
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DKError(f"{split_dir} has classes the training split lacks: {', '.join(unknown[:5])}")
    files = []
    for c in found:
        images = sorted(f for f in (split_dir / c).iterdir()
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES and not f.name.startswith("."))
        if not images:
            raise DKError(f"class folder {split_dir / c} holds no PNG or JPEG images")
        files += [(f, names.index(c)) for f in images]
    return names, files


GREY_MODES = ("1", "L", "LA", "I", "I;16")  # Pillow modes stored with one channel (decoded as "L")


def _decode(files: list[tuple[Path, int]], size: tuple[int, int] | None) -> list[np.ndarray]:
    """Each image once: uint8 ``[H, W]`` if stored grey, else ``[3, H, W]``, resized to ``size`` if given."""
    from PIL import Image, UnidentifiedImageError
    from tqdm import tqdm

    out, hw, first = [], None, None
    for path, _ in tqdm(files, desc="decoding images", unit="img", disable=len(files) < 2000, leave=False):
        try:
            with Image.open(path) as im:
                grey = im.mode in GREY_MODES
                im = im.convert("L" if grey else "RGB")
                if size is not None and im.size != size:
                    im = im.resize(size, Image.Resampling.LANCZOS)
                a = np.asarray(im, dtype=np.uint8)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DKError(f"cannot decode image {path}: {e}") from None
        if hw is None:
            hw, first = a.shape[:2], path
        elif a.shape[:2] != hw:
            raise DKError(f"images differ in size: {first} is {hw[1]}x{hw[0]}, {path} is {a.shape[1]}x{a.shape[0]}"
                          f"; resize them all with folder:DIR@WIDTHxHEIGHT")
        out.append(a if grey else a.transpose(2, 0, 1))
    return out


def _stack(images: list[np.ndarray], colour: bool) -> np.ndarray:
    """One array: grey ``[N, H, W]``, or ``[N, 3, H, W]`` with grey images repeated over the channels."""
    return np.stack([np.repeat(a[None], 3, 0) if colour and a.ndim == 2 else a for a in images])


def load_folder(root: str | Path, size: tuple[int, int] | None = None) -> Dataset:
    """Images in torchvision's ImageFolder layout: ``root/train/CLASS/*`` and ``root/test/CLASS/*`` (else
    ``root/val/CLASS/*``), PNG or JPEG; labels are the classes' indices in sorted order (their names kept).

    Grey images become float32 ``[N, H, W]`` in [0, 1] (as MNIST), colour ones uint8 ``[N, 3, H, W]`` (as
    CIFAR); all must share one size unless ``size`` (width, height) resizes them. The decoded arrays are
    cached in ``root/.dk-cache``, keyed by every file's path, size and modification time and by ``size``.
    """
    root = Path(root)
    if not root.is_dir():
        raise DKError(f"image folder {root} does not exist")
    if not (root / "train").is_dir():
        raise DKError(f"image folder {root} has no train/ sub-folder (expected {root}/train/CLASS/*.png)")
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is None:
        raise DKError(f"image folder {root} has neither test/ nor val/ beside train/")
    names, train_files = _folder_files(root / "train", None)
    _, test_files = _folder_files(test_dir, names)
    stamp = hashlib.sha256(json.dumps([_FOLDER_FORMAT, size, [
        (str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in train_files + test_files]]
    ).encode()).hexdigest()[:16]
    cache = root / FOLDER_CACHE / f"{stamp}.npz"
    try:
        with np.load(cache, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError):
        train, test = _decode(train_files, size), _decode(test_files, size)
        colour = any(a.ndim == 3 for a in train + test)  # grey only when every image is stored grey
        arrays = {"x_train": _stack(train, colour), "y_train": np.array([y for _, y in train_files]),
                  "x_test": _stack(test, colour), "y_test": np.array([y for _, y in test_files])}
        if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
            raise DKError(f"{root}: train images {arrays['x_train'].shape[1:]} and test images "
                          f"{arrays['x_test'].shape[1:]} differ in size; resize them with folder:DIR@WIDTHxHEIGHT")
        _save_cache(cache, arrays)
    grey = arrays["x_train"].ndim == 3
    data = from_arrays(root.name, arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                       scale=255.0 if grey else None)
    return replace(data, num_classes=len(names), class_names=tuple(names))


def _save_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write the decoded arrays atomically; a folder that cannot be written to is simply not cached."""
    import io

    from darkknowledge.checkpoint import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError:
        return


def _names(names) -> tuple[str, ...]:
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def channel_stats(x: torch.Tensor, sample: int = 10_000) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of images ``[N, C, H, W]`` in [0, 1] units (uint8 images
    are divided by 255), from up to ``sample`` images spread evenly over ``x``: the training split's
    statistics, which the model's ``InputNorm`` subtracts and divides by."""
    step = max(1, len(x) // sample)
    v = x[::step].float()
    if x.dtype == torch.uint8:
        v = v / 255
    v = v.transpose(0, 1).reshape(x.shape[1], -1)
    return v.mean(1).tolist(), v.std(1).clamp_min(1e-3).tolist()


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


def balanced_fraction(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int = 0):
    """A seeded, class-balanced subset: ``round(fraction * n_c)`` (at least 1) random examples of each class c
    (paper section 6: 3% of the training set), in their original order."""
    if not 0 < fraction <= 1:
        raise DKError(f"fraction must be in (0, 1], got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    y_cpu = y.cpu()
    keep = []
    for c in torch.unique(y_cpu).tolist():
        members = (y_cpu == c).nonzero().squeeze(1)
        n = max(1, round(fraction * len(members)))
        keep.append(members[torch.randperm(len(members), generator=gen)[:n]])
    idx = torch.cat(keep).sort().values.to(y.device)
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
    """Pad images ``[N, H, W]`` or ``[N, C, H, W]`` by ``max_shift`` on every side with ``value`` (the
    background), once, for ``gather_jittered`` / ``gather_views``."""
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


def view_count(max_shift: int, flip: bool) -> int:
    """How many distinct views ``gather_views`` can draw: every translation, with and without a mirror."""
    return (2 * max_shift + 1) ** 2 * (2 if flip else 1)


def apply_views(padded: torch.Tensor, idx: torch.Tensor, codes: torch.Tensor, max_shift: int,
                flip: bool = False) -> torch.Tensor:
    """Images ``idx`` of a ``pad_for_jitter`` tensor, image ``idx[i]`` seen in view ``codes[i]``.

    ``padded`` is ``[N, H + 2k, W + 2k]`` or ``[N, C, H + 2k, W + 2k]`` (any dtype: uint8 CIFAR stays
    uint8). A view code is ``dy * (2k + 1) + dx + m * (2k + 1)^2``: the crop at (dy, dx) of the padded
    image (``(k, k)`` is the untranslated one), mirrored left-right when ``m`` is 1 (only with ``flip``).
    One flat ``index_select``: no per-example loop, no host round trip.
    """
    k, side = max_shift, 2 * max_shift + 1
    if int(codes.numel()) and (int(codes.min()) < 0 or int(codes.max()) >= view_count(k, flip)):
        raise DKError(f"view codes must lie in [0, {view_count(k, flip)}) for max_shift {k}, flip {flip}")
    grey = padded.dim() == 3
    p = padded.unsqueeze(1) if grey else padded
    _, c, ph, pw = p.shape
    h, w = ph - 2 * k, pw - 2 * k
    dev = p.device
    shift, mirror = codes % (side * side), codes // (side * side)
    start = idx * (c * ph * pw) + (shift // side) * pw + shift % side  # [B]
    cols = torch.arange(w, device=dev)
    col = torch.where(mirror[:, None] > 0, w - 1 - cols, cols) if flip else cols.expand(len(idx), w)  # [B, W]
    index = (start[:, None, None, None] + (torch.arange(c, device=dev) * (ph * pw))[None, :, None, None]
             + (torch.arange(h, device=dev) * pw)[None, None, :, None] + col[:, None, None, :])
    out = p.reshape(-1).index_select(0, index.reshape(-1)).view(len(idx), c, h, w)
    return out.squeeze(1) if grey else out


def gather_views(padded: torch.Tensor, idx: torch.Tensor, max_shift: int, flip: bool = False,
                 generator: torch.Generator | None = None, return_code: bool = False):
    """Images ``idx`` of a ``pad_for_jitter`` tensor, each in an independent random view: a translation by
    up to ``max_shift`` pixels (the random crop of a padded image) and, with ``flip``, a left-right mirror
    with probability 1/2. With ``return_code``, also each image's view code (``apply_views``).

    Grey images without flips take ``gather_jittered``'s path (the same draws, so MNIST runs are unchanged).
    """
    if not flip and (max_shift <= 0 or padded.dim() == 3):  # flat feature vectors too, when nothing moves
        return gather_jittered(padded, idx, max_shift, generator, return_shift=return_code)
    k = max_shift
    dev = padded.device
    shifts = torch.randint(0, 2 * k + 1, (2, len(idx)), device=dev, generator=generator)
    codes = shifts[0] * (2 * k + 1) + shifts[1]
    if flip:
        codes = codes + torch.randint(0, 2, (len(idx),), device=dev, generator=generator) * (2 * k + 1) ** 2
    out = apply_views(padded, idx, codes, k, flip)
    return (out, codes) if return_code else out


def jitter(x: torch.Tensor, max_shift: int, generator: torch.Generator | None = None,
           value: float = 0.0) -> torch.Tensor:
    """Translate each image ``[B, H, W]`` by an independent random (dy, dx) in [-k, k]^2, filled with ``value``.

    The paper's MNIST teacher saw inputs jittered by up to 2 pixels (section 3). Training pads the
    whole resident data set once and calls ``gather_jittered`` per batch instead.
    """
    if max_shift <= 0:
        return x
    return gather_jittered(pad_for_jitter(x, max_shift, value), torch.arange(len(x), device=x.device), max_shift, generator)


_SPLITS: dict[tuple[str, int, int, int], tuple[Dataset, tuple[torch.Tensor, torch.Tensor] | None]] = {}


def load_split(source: str, val_size: int = 0, limit: int = 0, seed: int = 0
               ) -> tuple[Dataset, tuple[torch.Tensor, torch.Tensor] | None]:
    """``load_data(source)`` (first ``limit`` training images after a seeded shuffle if set), with
    ``val_size`` images carved off the training split as ``(x_val, y_val)``; cached per process, so every
    stage and task of one process shares one copy."""
    key = (source, val_size, limit, seed)
    if key not in _SPLITS:
        data = load_data(source)
        x, y = data.x_train, data.y_train
        if limit:
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            x, y = x[keep], y[keep]
        val = None
        if val_size:
            x, y, xv, yv = split_validation(x, y, val_size, seed)
            val = (xv, yv)
        _SPLITS[key] = (replace(data, x_train=x, y_train=y), val)
    return _SPLITS[key]
