"""Independent training tasks (ensemble members, specialists) through one interface: ``local`` or ``ray``.

``run_tasks(fn, tasks, executor=...)`` calls ``fn(task)`` for every task and returns one ``Outcome``
per task, in order; ``on_outcome`` hears of each the moment it is known, so results are written as
they come. A task's failure is its outcome, never the end of the others.

- ``local``: in this process (``workers=1``) or in a pool of spawned processes.
- ``ray``: each task is a Ray task with its CPU/GPU request on a local Ray instance or a cluster
  (``address``). A task whose worker dies (killed, out of memory, node lost) is retried by Ray up to
  ``max_retries`` times; task functions checkpoint every epoch and resume from their last checkpoint,
  so a retry continues the member instead of training it again from scratch.

``fn`` must be a top-level function (it is pickled to the workers) taking and returning plain data.
"""

from __future__ import annotations

import os
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from tqdm.auto import tqdm

from darkknowledge.errors import DKError

EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class Outcome:
    """What became of one task: ``ok`` with its ``value``, or not with its ``error`` message."""

    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0


def _describe(e: BaseException) -> str:
    if isinstance(e, DKError):
        return str(e)
    cause = getattr(e, "cause", None)  # Ray wraps the task's own exception
    if isinstance(cause, BaseException):
        return _describe(cause)
    frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}{where}"


def run_tasks(fn: Callable[[dict[str, Any]], Any], tasks: list[dict[str, Any]], *, executor: str = "local",
              workers: int = 1, address: str | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
              max_retries: int = 3, progress: bool = True, desc: str = "tasks",
              on_outcome: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """Run ``fn(task)`` for every task on ``executor``; see the module docstring.

    Args:
        workers: ``local`` only: processes at once (1: in this process, each task with all threads).
        address: ``ray`` only: an existing cluster's address (``auto``, ``ray://host:port``); none: start a
            local instance with this machine's cores.
        cpus_per_task, gpus_per_task: ``ray`` only: each task's resource request (and its torch threads).
        max_retries: ``ray`` only: retries of a task whose worker died.
    """
    if executor not in EXECUTORS:
        raise DKError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise DKError(f"workers must be >= 1, got {workers}")
    outcomes: list[Outcome | None] = [None] * len(tasks)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress, unit="task", leave=False)

    def record(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        bar.update(1)
        if on_outcome is not None:
            on_outcome(i, outcome)

    try:
        if executor == "ray":
            _run_ray(fn, tasks, address, cpus_per_task, gpus_per_task, max_retries, record)
        elif workers == 1:
            for i, task in enumerate(tasks):
                t0 = time.perf_counter()
                try:
                    value = fn(task)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:
                    record(i, Outcome(False, error=_describe(e), seconds=time.perf_counter() - t0))
                else:
                    record(i, Outcome(True, value, seconds=time.perf_counter() - t0))
        else:
            _run_pool(fn, tasks, workers, record)
    finally:
        bar.close()
    return [o if o is not None else Outcome(False, error="not run") for o in outcomes]


def _with_threads(fn: Callable, task: dict[str, Any], threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(task)


def _run_pool(fn, tasks, workers, record) -> None:
    import concurrent.futures as cf
    import multiprocessing as mp

    threads = max(1, (os.cpu_count() or 1) // workers)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        started = {pool.submit(_with_threads, fn, t, threads): (i, time.perf_counter()) for i, t in enumerate(tasks)}
        for fut in cf.as_completed(started):
            i, t0 = started[fut]
            try:
                record(i, Outcome(True, fut.result(), seconds=time.perf_counter() - t0))
            except Exception as e:
                record(i, Outcome(False, error=_describe(e), seconds=time.perf_counter() - t0))


def ray_init(address: str | None = None):
    """Connect to ``address`` or start a local Ray instance (quietly, no dashboard); the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise DKError("the ray executor needs Ray: pip install 'darkknowledge[ray]'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DKError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    return ray


def _run_ray(fn, tasks, address, cpus, gpus, max_retries, record) -> None:
    ray = ray_init(address)
    remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)(_with_threads)
    threads = max(1, int(cpus))
    t0 = time.perf_counter()
    refs = {remote.remote(fn, task, threads): i for i, task in enumerate(tasks)}
    pending = list(refs)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
        for ref in ready:
            i = refs[ref]
            try:
                record(i, Outcome(True, ray.get(ref), seconds=time.perf_counter() - t0))
            except Exception as e:  # the task raised, or its worker died more than max_retries times
                record(i, Outcome(False, error=_describe(e), seconds=time.perf_counter() - t0))
