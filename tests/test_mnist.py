"""Real MNIST (skipped with a reason unless $DK_MNIST_DIR holds it; .ci/run lays it out)."""

import hashlib

import torch
from conftest import dk

from darkknowledge.data import load_mnist

# Published class counts of the 60,000 training and 10,000 test labels.
TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_mnist_loads_exactly(mnist_dir):
    ds = load_mnist(mnist_dir)
    assert ds.x_train.shape == (60000, 28, 28) and ds.x_test.shape == (10000, 28, 28)
    assert torch.bincount(ds.y_train).tolist() == TRAIN_COUNTS
    assert torch.bincount(ds.y_test).tolist() == TEST_COUNTS
    raw = (ds.x_test * 255).round().to(torch.uint8).numpy().tobytes()
    header = (2051).to_bytes(4, "big") + b"".join(n.to_bytes(4, "big") for n in (10000, 28, 28))
    assert hashlib.md5(header + raw).hexdigest() == "2646ac647ad5339dbf082846283269ea"  # published MD5


def test_train_on_real_mnist(mnist_dir, tmp_path):
    r = dk("train", "--data", mnist_dir, "--arch", "mlp-30x2", "--epochs", "1", "--batch-size", "256",
               "--out", tmp_path / "m", "--no-progress")
    assert r.returncode == 0, r.stderr
    errors = int(r.stdout.splitlines()[2].split()[1])
    assert errors < 1000  # one epoch of a 2x30 net: well under 10% test error (chance: 9,000)
