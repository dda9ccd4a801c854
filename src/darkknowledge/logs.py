"""Per-epoch metrics as TensorBoard event files, beside the JSON history every run keeps.

``fit(..., tensorboard=DIR)`` (``--tensorboard DIR`` on ``dk train`` / ``dk distill``, ``tensorboard=`` in
``dk.train`` / ``dk.distill``) writes, every epoch: ``loss/mean`` and ``loss/max_batch``, ``lr`` (at the
epoch's last step), ``seconds/epoch``, ``test/errors`` and ``test/accuracy`` (the epochs it evaluates),
``train/errors`` and ``train/accuracy`` (with a train-evaluation set), the gradient norms when clipping is on;
any other number a run adds to its record under ``metrics/``; once, ``teacher/seconds``, what computing the teacher's targets cost before training (0: all from the
cache). The writer is PyTorch's (``torch.utils.tensorboard``), which needs the ``tensorboard`` package
(``pip install 'darkknowledge[tensorboard]'``); without it the run stops before it starts, with that advice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from darkknowledge.errors import DKError

_SCALARS = {"loss": "loss/mean", "loss_max": "loss/max_batch", "lr": "lr", "seconds": "seconds/epoch",
            "test_errors": "test/errors", "train_errors": "train/errors", "grad_norm_max": "grad_norm/max",
            "grad_norm_mean": "grad_norm/mean", "clipped_steps": "grad_norm/clipped_steps"}


def check_available() -> None:
    """A DKError with the install advice where the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401  (torch.utils.tensorboard imports it)
    except ImportError:
        raise DKError("TensorBoard logs need the tensorboard package: pip install tensorboard "
                      "(or pip install 'darkknowledge[tensorboard]')") from None


class TensorBoardLog:
    """One run's event files in ``log_dir``: ``epoch(record)`` per epoch, ``close()`` at the end."""

    def __init__(self, log_dir: str | Path) -> None:
        check_available()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(log_dir))
        self.test_size = self.train_size = 0

    def sizes(self, test_size: int, train_size: int) -> None:
        """How many examples the test and train error counts are out of (for the accuracies)."""
        self.test_size, self.train_size = test_size, train_size

    def teacher(self, seconds: float) -> None:
        self.writer.add_scalar("teacher/seconds", float(seconds), 0)

    def epoch(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in record.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(_SCALARS.get(key, f"metrics/{key}"), float(value), step)
        if "test_errors" in record and self.test_size:
            self.writer.add_scalar("test/accuracy", 1 - record["test_errors"] / self.test_size, step)
        if "train_errors" in record and self.train_size:
            self.writer.add_scalar("train/accuracy", 1 - record["train_errors"] / self.train_size, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
