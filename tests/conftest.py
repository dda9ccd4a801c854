"""Shared fixtures. Real MNIST is read from $DK_MNIST_DIR (``.ci/run`` lays it out there)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = os.environ.get("DK_MNIST_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("real MNIST not laid out: set DK_MNIST_DIR to a directory made by "
                    "`python ../shared/tools/datasets.py install DIR --only mnist` (.ci/run does this)")
    return Path(d)


def run_dk(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real entry point (``python -m darkknowledge``) as a user would."""
    return subprocess.run([sys.executable, "-m", "darkknowledge", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """Real CIFAR-10/100 from $DK_CIFAR_DIR (default: $DK_MNIST_DIR, where ``.ci/run`` lays out all three)."""
    d = os.environ.get("DK_CIFAR_DIR") or os.environ.get("DK_MNIST_DIR")
    if not d or not (Path(d) / "cifar-10-batches-py").is_dir():
        pytest.skip("real CIFAR-10 not laid out: set DK_CIFAR_DIR to a directory made by "
                    "`python ../shared/tools/datasets.py install DIR --only cifar10,cifar100` (.ci/run does this)")
    return Path(d)
