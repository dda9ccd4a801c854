"""Ensembles (paper section 4): N members that differ only by seed, trained through an executor, and
evaluated alone and under the arithmetic and geometric means of their distributions.

Each member is one ``MemberTask`` for ``member_task``: it trains ``workflows.train`` into ``OUT/member{i}`` with an epoch
checkpoint and ``resume``, so a member whose worker died continues from its last finished epoch when
the executor retries it. ``OUT/ensemble.json`` lists the members and their outcomes as they finish.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import torch

from darkknowledge.checkpoint import atomic_write_json
from darkknowledge.config import TrainConfig
from darkknowledge.data import load_split
from darkknowledge.errors import DKError
from darkknowledge.evaluation import errors_from_logits
from darkknowledge.executors import Outcome, run_tasks
from darkknowledge.losses import COMBINE_METHODS, ensemble_probs
from darkknowledge.teachers import Teacher


@dataclass(frozen=True)
class MemberTask:
    """One member to train (or resume): what ``member_task`` reads; any executor can carry it."""

    data: str  # a ``data.load_data`` source
    config: TrainConfig
    out: str  # the member's checkpoint directory
    name: str
    val_size: int = 0  # training images carved off for validation (``data.load_split``)
    limit: int = 0  # the first N training images of a seeded shuffle (0: all)
    progress: bool = False
    record_split: bool = False  # write val_size into the checkpoint (what ``dk distill --val-size`` checks)
    tensorboard: str = ""  # TensorBoard event files of this member's epochs ('' : none)


def member_task(task: MemberTask) -> dict[str, Any]:
    """Train (or resume) one member into ``task.out``; a top-level function, so any executor can run it."""
    from darkknowledge.workflows import train

    out = Path(task.out)
    out.mkdir(parents=True, exist_ok=True)
    # Where the member runs, for whoever watches (or kills) it: rewritten by every attempt.
    atomic_write_json(out / "worker.json", {"pid": os.getpid(), "host": socket.gethostname()})
    data, _ = load_split(task.data, task.val_size, task.limit)
    result = train(task.name, data, task.config, out=out, resume=True, progress=task.progress,
                   meta={"val_size": task.val_size} if task.record_split else None,
                   tensorboard=task.tensorboard or None)
    return {"name": task.name, "out": str(out), "seed": task.config.seed, "test_errors": result.test["errors"],
            "test_size": result.test["test_size"], "accuracy": result.test["accuracy"],
            "epochs": len(result.history), "seconds": round(result.seconds, 2),
            "history": [{k: h[k] for k in ("epoch", "loss", "test_errors", "seconds") if k in h}
                        for h in result.history]}


def member_tasks(source: str, cfg: TrainConfig, members: int, out: str | Path, *, val_size: int = 0,
                 limit: int = 0, progress: bool = False, first_seed: int | None = None,
                 record_split: bool = False, tensorboard: str = "") -> list[MemberTask]:
    """One task per member: seeds ``first_seed`` (default ``cfg.seed``) onwards, into ``OUT/member{i}`` (and
    their TensorBoard logs, if asked, into ``TENSORBOARD/member{i}``)."""
    if members < 1:
        raise DKError(f"members must be >= 1, got {members}")
    base = cfg.seed if first_seed is None else first_seed
    return [MemberTask(source, replace(cfg, seed=base + i), str(Path(out) / f"member{i}"), f"member{i}",
                       val_size, limit, progress, record_split,
                       str(Path(tensorboard) / f"member{i}") if tensorboard else "") for i in range(members)]


def train_members(source: str, cfg: TrainConfig, members: int, out: str | Path, *, executor: str = "local",
                  workers: int = 1, address: str | None = None, cpus_per_task: float = 1.0,
                  gpus_per_task: float = 0.0, val_size: int = 0, limit: int = 0, progress: bool = True,
                  log: Callable[[str], None] = print, tensorboard: str = "") -> list[Outcome]:
    """Train ``members`` members of ``cfg`` through ``executor``; ``OUT/ensemble.json`` is rewritten as each ends."""
    out = Path(out)
    tasks = member_tasks(source, cfg, members, out, val_size=val_size, limit=limit,
                         progress=progress and executor == "local" and workers == 1, record_split=True,
                         tensorboard=tensorboard)
    status: list[dict[str, Any]] = [{"name": t.name, "out": t.out, "seed": t.config.seed, "status": "pending"}
                                    for t in tasks]

    def on_outcome(i: int, o: Outcome) -> None:
        status[i] = {**status[i], "status": "done" if o.ok else "failed", "seconds": round(o.seconds, 2),
                     **({"test_errors": o.value["test_errors"], "accuracy": o.value["accuracy"]} if o.ok
                        else {"error": o.error})}
        atomic_write_json(out / "ensemble.json", {"arch": cfg.arch, "data": source, "executor": executor,
                                                  "members": status})
        log(f"{tasks[i].name}: " + (f"{o.value['test_errors']} test errors ({100 * o.value['accuracy']:.2f}%)"
                                       if o.ok else f"failed: {o.error}") + f" in {o.seconds:.0f} s")

    return run_tasks(member_task, tasks, executor=executor, workers=workers, address=address,
                     cpus_per_task=cpus_per_task, gpus_per_task=gpus_per_task, progress=progress, desc="members",
                     on_outcome=on_outcome)


def evaluate_ensemble(teacher: Teacher, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                      tta: int = 0) -> dict[str, Any]:
    """Test errors of every member and of the ensemble under each mean (T = 1); ``tta``: each member's logits
    averaged over the test-time views first (``evaluation.tta_views``), as for a single net."""
    logits = teacher.member_logits(x, tta=tta)
    out: dict[str, Any] = {"members": [errors_from_logits(z, y, num_classes)["errors"] for z in logits],
                           "test_size": len(y)}
    for method in COMBINE_METHODS:
        probs = ensemble_probs(logits, 1.0, method)
        out[method] = errors_from_logits(probs.log(), y, num_classes)["errors"]
    return out
