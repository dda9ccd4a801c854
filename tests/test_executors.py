"""Executors: local (in-process, process pool) and Ray, with a worker killed mid-member."""

import json
import time

import numpy as np
import pytest
import torch

from darkknowledge import DKError
from darkknowledge.checkpoint import load_checkpoint
from darkknowledge.config import TrainConfig
from darkknowledge.executors import run_tasks


def square(task):
    if task["x"] < 0:
        raise DKError(f"negative input {task['x']}")
    return task["x"] ** 2


@pytest.mark.parametrize("workers", [1, 2])
def test_local_executor_keeps_order_and_records_failures(workers):
    heard = []
    out = run_tasks(square, [{"x": 3}, {"x": -1}, {"x": 4}], workers=workers, progress=False,
                    on_outcome=lambda i, o: heard.append(i))
    assert [o.ok for o in out] == [True, False, True]
    assert out[0].value == 9 and out[2].value == 16 and out[1].error == "negative input -1"
    assert sorted(heard) == [0, 1, 2]


def test_unknown_executor_is_refused():
    with pytest.raises(DKError, match="unknown executor 'dask'"):
        run_tasks(square, [], executor="dask")


def small_images(path, n=800, seed=0):
    """A 16x16 colour data set as a .npz (uint8), class c brightening one channel and quadrant."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    x = rng.integers(0, 60, (n, 3, 16, 16), dtype=np.uint8)
    for c in range(4):
        x[y == c, c % 3, (c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 150
    np.savez(path, x_train=x, y_train=y, x_test=x[:200], y_test=y[:200])
    return str(path)


MEMBER = TrainConfig(arch="resnet-s-w8", epochs=6, batch_size=64, lr=0.05, jitter=2, flip=True, device="cpu")


def test_dk_train_members_builds_an_ensemble(tmp_path):
    from conftest import dk

    source = small_images(tmp_path / "data.npz", n=300)
    args = ["train", "--members", "2", "--data", source, "--arch", "resnet-s-w4", "--epochs", "1", "--batch-size",
            "64", "--jitter", "2", "--flip", "--out", tmp_path / "ens", "--no-progress"]
    r = dk(*args)
    assert r.returncode == 0, r.stderr
    assert "ensemble (arithmetic mean)" in r.stdout and "ensemble (geometric mean)" in r.stdout
    status = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert [m["status"] for m in status["members"]] == ["done", "done"]
    assert [m["seed"] for m in status["members"]] == [0, 1]
    a, _, _ = load_checkpoint(tmp_path / "ens" / "member0")
    b, _, _ = load_checkpoint(tmp_path / "ens" / "member1")
    assert not torch.equal(a.head.weight, b.head.weight)  # members differ by seed
    again = dk(*args)
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites silently


def test_an_unreachable_ray_cluster_is_one_clear_error_and_writes_nothing(tmp_path):
    from conftest import closed_port, run_dk

    source = small_images(tmp_path / "data.npz", n=100)
    t0 = time.time()
    r = run_dk("train", "--members", "2", "--executor", "ray", "--address", f"127.0.0.1:{closed_port()}",
               "--data", source, "--arch", "resnet-s-w4", "--epochs", "1", "--out", tmp_path / "ens", "--no-progress",
               timeout=60)
    assert time.time() - t0 < 30
    assert r.returncode == 2 and r.stderr.startswith("dk: error: cannot reach Ray at 127.0.0.1:")
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "ens").exists()


def test_ray_addresses_are_checked_before_connecting():
    from conftest import closed_port

    from darkknowledge.executors import check_reachable

    with pytest.raises(DKError, match="cannot reach Ray at ray://127.0.0.1"):
        check_reachable(f"ray://127.0.0.1:{closed_port()}", timeout=2)
    with pytest.raises(DKError, match="is not host:port"):
        check_reachable("somewhere")
    check_reachable("auto")  # left to Ray: the local cluster's address file
