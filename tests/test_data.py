import gzip

import numpy as np
import pytest
import torch

from darkknowledge import DKError
from darkknowledge.data import (
    background_value,
    drop_classes,
    drop_labels,
    jitter,
    keep_classes,
    keep_fraction,
    load_data,
    load_digits,
    load_mnist,
    split_validation,
)


def write_idx(path, arr, magic, gz):
    header = magic.to_bytes(4, "big") + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    raw = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def fake_mnist(root, gz=True, n=(20, 10)):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    sfx = ".gz" if gz else ""
    for split, k in (("train", n[0]), ("t10k", n[1])):
        write_idx(root / f"{split}-images-idx3-ubyte{sfx}", rng.integers(0, 256, (k, 28, 28)), 2051, gz)
        write_idx(root / f"{split}-labels-idx1-ubyte{sfx}", np.arange(k) % 10, 2049, gz)
    return root


def test_digits_split_is_fixed_and_stratified():
    a, b = load_digits(), load_digits()
    assert (len(a.y_train), len(a.y_test)) == (898, 899)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert a.x_train.shape[1:] == (8, 8) and 0 <= a.x_train.min() and a.x_train.max() <= 1
    assert a.num_classes == 10 and torch.bincount(a.y_test).min() >= 87


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("layout", ["MNIST/raw", "raw", ""])
def test_idx_loader_layouts(tmp_path, gz, layout):
    fake_mnist(tmp_path / layout if layout else tmp_path, gz=gz)
    ds = load_mnist(tmp_path)
    assert ds.x_train.shape == (20, 28, 28) and ds.x_test.shape == (10, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.x_train.max() <= 1
    assert ds.y_train.tolist() == [i % 10 for i in range(20)]
    assert load_data(str(tmp_path)).num_classes == 10


def test_idx_wrong_magic(tmp_path):
    root = fake_mnist(tmp_path)
    write_idx(root / "train-labels-idx1-ubyte.gz", np.zeros(20), 2050, True)
    with pytest.raises(DKError, match="train-labels-idx1-ubyte.gz: not an IDX file"):
        load_mnist(tmp_path)


def test_idx_truncated(tmp_path):
    root = fake_mnist(tmp_path, gz=False)
    f = root / "t10k-images-idx3-ubyte"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(DKError, match="truncated"):
        load_mnist(tmp_path)


def test_idx_corrupt_gzip(tmp_path):
    root = fake_mnist(tmp_path)
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b garbage")
    with pytest.raises(DKError, match="cannot read"):
        load_mnist(tmp_path)


def test_missing_data(tmp_path):
    with pytest.raises(DKError, match="not found"):
        load_mnist(tmp_path)
    with pytest.raises(DKError, match="neither 'digits'"):
        load_data(str(tmp_path / "nowhere"))
    with pytest.raises(DKError, match="does not exist"):
        load_data(str(tmp_path / "nowhere.npz"))


def test_npz_loader(tmp_path):
    rng = np.random.default_rng(0)
    p = tmp_path / "toy.npz"
    np.savez(p, x_train=rng.integers(0, 256, (30, 5, 5), dtype=np.uint8), y_train=np.arange(30) % 3,
             x_test=rng.integers(0, 256, (9, 5, 5), dtype=np.uint8), y_test=np.arange(9) % 3)
    ds = load_data(str(p))
    assert ds.num_classes == 3 and ds.in_features == 25 and ds.x_train.max() <= 1
    np.savez(p, x_train=np.zeros((3, 2)), y_train=np.zeros(4, dtype=int), x_test=np.zeros((1, 2)), y_test=np.zeros(1, dtype=int))
    with pytest.raises(DKError, match="differ in count"):
        load_data(str(p))
    np.savez(p, x_train=np.zeros((3, 2)))
    with pytest.raises(DKError, match="missing arrays"):
        load_data(str(p))
    p.write_bytes(b"not a zip")
    with pytest.raises(DKError, match="cannot read"):
        load_data(str(p))


def test_transfer_filters():
    x, y = torch.arange(100.0)[:, None], torch.arange(100) % 10
    xo, yo = drop_classes(x, y, [3])
    assert len(yo) == 90 and 3 not in yo.tolist() and torch.equal(xo[:, 0].long() % 10, yo)
    xk, yk = keep_classes(x, y, [7, 8])
    assert sorted(set(yk.tolist())) == [7, 8] and len(yk) == 20
    xf, yf = keep_fraction(x, y, 0.03, seed=1)
    assert len(yf) == 3 and torch.equal(keep_fraction(x, y, 0.03, seed=1)[1], yf)
    assert (drop_labels(y) == -1).all()
    xr, yr, xv, yv = split_validation(x, y, 10, seed=0)
    assert len(yv) == 10 and len(yr) == 90 and not set(xv[:, 0].tolist()) & set(xr[:, 0].tolist())
    with pytest.raises(DKError):
        keep_fraction(x, y, 0.0)


def test_jitter_shifts_each_image_independently_within_range():
    x = torch.zeros(200, 9, 9)
    x[:, 4, 4] = 1.0  # one lit pixel in the centre
    out = jitter(x, 2, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and torch.equal(out.sum((1, 2)), x.sum((1, 2)))  # nothing falls off
    pos = out.flatten(1).argmax(1)
    rows, cols = pos // 9, pos % 9
    assert rows.min() == 2 and rows.max() == 6 and cols.min() == 2 and cols.max() == 6
    assert len(set(zip(rows.tolist(), cols.tolist()))) == 25  # all 5x5 shifts occur
    assert torch.equal(jitter(x, 0), x)


def test_jitter_zero_fills_what_enters():
    x = torch.ones(50, 6, 6)
    out = jitter(x, 1, torch.Generator().manual_seed(0))
    assert out.min() == 0 and out.max() == 1 and (out.sum((1, 2)) >= 25).all()
    filled = jitter(torch.zeros(50, 6, 6), 1, torch.Generator().manual_seed(0), value=0.75)
    assert set(filled.unique().tolist()) == {0.0, 0.75}  # what enters is the given background


def test_background_value_is_the_dominant_pixel_value():
    digits = load_digits()
    assert background_value(digits.x_train) == 0.0
    assert background_value(1 - digits.x_train) == 1.0
    assert background_value(0.5 + 0.5 * digits.x_train) == 0.5
    noise = torch.rand(100, 8, 8)  # no value dominates: no background
    assert background_value(noise) == 0.0
    assert background_value(torch.empty(0, 8, 8)) == 0.0


def test_gather_jittered_equals_per_image_slicing():
    """Against an independent reference: each image cut from its zero-padded copy at its own shift."""
    from darkknowledge.data import gather_jittered, pad_for_jitter

    g = torch.Generator().manual_seed(0)
    x = torch.rand(50, 7, 9, generator=g)
    idx = torch.tensor([4, 0, 49, 4, 17])
    k = 2
    out = gather_jittered(pad_for_jitter(x, k), idx, k, torch.Generator().manual_seed(3))
    shifts = torch.randint(0, 2 * k + 1, (2, len(idx)), generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(x, (k, k, k, k))
    for b, n in enumerate(idx.tolist()):
        dy, dx = shifts[:, b].tolist()
        assert torch.equal(out[b], padded[n, dy:dy + 7, dx:dx + 9])
    assert torch.equal(gather_jittered(pad_for_jitter(x, 0), idx, 0), x[idx])


def test_gather_jittered_shift_codes_name_the_view_drawn():
    from darkknowledge.data import gather_jittered, pad_for_jitter
    from darkknowledge.views import ViewBank

    x = torch.rand(40, 7, 9, generator=torch.Generator().manual_seed(1))
    k = 2
    bank = ViewBank.every(40, k, False, 0.0)  # every translation: the exhaustive bank
    idx = torch.arange(40)
    views = {v: bank.images(pad_for_jitter(x, k), v, idx) for v in range(bank.views)}
    assert sorted(views) == list(range(25)) and torch.equal(views[2 * 5 + 2], x)  # code (k, k): no shift
    out, code = gather_jittered(pad_for_jitter(x, k), idx, k, torch.Generator().manual_seed(5), return_shift=True)
    assert len(set(code.tolist())) > 10
    for b in range(40):
        assert torch.equal(out[b], views[int(code[b])][b])
    flat, zero = gather_jittered(x.flatten(1), idx[:3], 0, return_shift=True)  # flat features, no jitter
    assert torch.equal(flat, x.flatten(1)[:3]) and zero.tolist() == [0, 0, 0]
