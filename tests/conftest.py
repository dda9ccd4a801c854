"""Shared fixtures. Real MNIST is read from $DK_MNIST_DIR (``.ci/run`` lays it out there)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

# Under pytest-xdist (``make test`` runs one worker per core, with OMP_NUM_THREADS=1 from the start) each worker,
# and every `dk` it starts, takes one thread; alone, the suite takes two (the CI machines' two cores).
THREADS = 1 if os.environ.get("PYTEST_XDIST_WORKER") else 2
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
torch.set_num_threads(THREADS)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    d = os.environ.get("DK_MNIST_DIR")
    if not d or not Path(d).is_dir():
        pytest.skip("real MNIST not laid out: set DK_MNIST_DIR to a directory made by "
                    "`python ../shared/tools/datasets.py install DIR --only mnist` (.ci/run does this)")
    return Path(d)


def run_dk(*args: str, cwd: Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run the real entry point (``python -m darkknowledge``) in a new process, as a user would."""
    return subprocess.run([sys.executable, "-m", "darkknowledge", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def dk(*args: str) -> subprocess.CompletedProcess:
    """The ``dk`` command in this process (``cli.main``), its stdout and stderr captured: what ``run_dk`` checks,
    without a new interpreter and torch import per call. An exception that escapes ``main`` (a traceback a
    user would see) fails the test."""
    import contextlib
    import io

    from darkknowledge import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
    return subprocess.CompletedProcess(["dk", *map(str, args)], code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """Real CIFAR-10/100 from $DK_CIFAR_DIR (default: $DK_MNIST_DIR, where ``.ci/run`` lays out all three)."""
    d = os.environ.get("DK_CIFAR_DIR") or os.environ.get("DK_MNIST_DIR")
    if not d or not (Path(d) / "cifar-10-batches-py").is_dir():
        pytest.skip("real CIFAR-10 not laid out: set DK_CIFAR_DIR to a directory made by "
                    "`python ../shared/tools/datasets.py install DIR --only cifar10,cifar100` (.ci/run does this)")
    return Path(d)


@pytest.fixture(scope="module")
def ray_instance():
    """One local Ray instance for the module that holds every Ray test (``test_ray.py``), so one per test session
    (starting one costs seconds), shut down when that module ends: its processes do not linger beside the rest."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'darkknowledge[ray]'; "
                                            ".ci/run installs it)")
    from darkknowledge import DKError
    from darkknowledge.executors import ray_init

    try:
        ray_init()
    except DKError as e:  # the environment (shared memory, ports), not this code: said in the -ra summary
        pytest.skip(f"a local Ray instance does not start here: {e}")
    yield ray
    ray.shutdown()


def closed_port() -> int:
    """A loopback TCP port that nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
