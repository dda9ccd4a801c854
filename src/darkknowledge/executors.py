"""The one way to run independent tasks (ensemble members, specialists, reproduction stages): serially in
this process, in a pool of spawned processes, or as Ray tasks, through one submit/wait interface.

``open_executor(...)`` gives an ``Executor``: ``submit(fn, arg) -> handle``, ``wait(timeout) -> [(handle,
Outcome)]`` for the tasks that finished, ``close()``. Every task's failure is its ``Outcome`` (described by
``describe_error``, the one error description), never the end of the others. ``run_tasks`` runs a list of
tasks to completion on any executor; ``experiments.runner`` schedules dependent stages on the same executors.

- ``local`` with ``workers=1``: in this process, one task at a time, each with all threads (a Ctrl-C stops it).
- ``local`` with ``workers > 1``: a pool of that many spawned processes, the cores shared out among them.
- ``ray``: each task a Ray task with its CPU/GPU request, on a local Ray instance or a cluster (``address``);
  a task whose worker dies (killed, out of memory, node lost) is retried by Ray up to ``max_retries`` times.
  Task functions checkpoint every epoch and resume from their last checkpoint, so a retry continues the
  member instead of training it again from scratch. An unreachable ``address`` is a DKError within seconds.

``fn`` must be a top-level function (it is pickled to the workers) taking and returning plain data or
frozen dataclasses.
"""

from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from tqdm.auto import tqdm

from darkknowledge.errors import DKError

EXECUTORS = ("local", "ray")
RAY_CONNECT_SECONDS = 5.0  # how long to wait for a Ray cluster's address to answer before calling it unreachable


@dataclass(frozen=True)
class Outcome:
    """What became of one task: ``ok`` with its ``value``, or not with its ``error`` message."""

    ok: bool
    value: Any = None
    error: str = ""
    seconds: float = 0.0


def describe_error(e: BaseException) -> str:
    """One line for a failed task: a DKError's own message, else the exception type, message and where."""
    cause = getattr(e, "cause", None)  # Ray wraps the task's own exception
    if isinstance(cause, BaseException):
        return describe_error(cause)
    if isinstance(e, DKError):
        return str(e)
    text = str(e).strip()
    frames = traceback.extract_tb(e.__traceback__) if e.__traceback__ else []
    where = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}{where}"


class Executor:
    """Submit tasks, then wait for the finished ones: the interface of every executor."""

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> Any:
        raise NotImplementedError

    def wait(self, timeout: float = 1.0) -> list[tuple[Any, Outcome]]:
        """Some finished tasks' ``(handle, outcome)`` (none if nothing finished within ``timeout``)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """In this process, in submission order: ``wait`` runs the next task to completion."""

    def __init__(self) -> None:
        self.queue: list[tuple[int, Callable, Any]] = []
        self.count = 0

    def submit(self, fn, arg):
        self.count += 1
        self.queue.append((self.count, fn, arg))
        return self.count

    def wait(self, timeout: float = 1.0):
        if not self.queue:
            return []
        handle, fn, arg = self.queue.pop(0)
        t0 = time.perf_counter()
        try:
            value = fn(arg)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as e:  # a task's failure is data; the others still run
            return [(handle, Outcome(False, error=describe_error(e), seconds=time.perf_counter() - t0))]
        return [(handle, Outcome(True, value, seconds=time.perf_counter() - t0))]


def _with_threads(fn: Callable, arg: Any, threads: int) -> Any:
    import torch

    torch.set_num_threads(max(1, threads))
    return fn(arg)


class ProcessExecutor(Executor):
    """A pool of ``workers`` spawned processes, each with its share of this process's torch threads (which follow
    OMP_NUM_THREADS and the cores it may use)."""

    def __init__(self, workers: int) -> None:
        import concurrent.futures as cf
        import multiprocessing as mp

        import torch

        self.threads = max(1, torch.get_num_threads() // workers)
        self.pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))
        self.started: dict[Any, float] = {}

    def submit(self, fn, arg):
        future = self.pool.submit(_with_threads, fn, arg, self.threads)
        self.started[future] = time.perf_counter()
        return future

    def wait(self, timeout: float = 1.0):
        import concurrent.futures as cf

        if not self.started:
            return []
        finished, _ = cf.wait(list(self.started), timeout=timeout, return_when=cf.FIRST_COMPLETED)
        out = []
        for future in finished:
            seconds = time.perf_counter() - self.started.pop(future)
            try:
                out.append((future, Outcome(True, future.result(), seconds=seconds)))
            except Exception as e:
                out.append((future, Outcome(False, error=describe_error(e), seconds=seconds)))
        return out

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


def check_reachable(address: str, timeout: float = RAY_CONNECT_SECONDS) -> None:
    """A Ray cluster address (``host:port`` or ``ray://host:port``) must answer a TCP connection within
    ``timeout`` seconds; otherwise a DKError (``ray.init`` itself retries an unreachable address for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise DKError(f"Ray address {address!r} is not host:port, ray://host:port, auto or local")
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise DKError(f"cannot reach Ray at {address}: {reason.lower()} (is the cluster running? start one with "
                      "`ray start --head`, or leave out --address for a local instance)") from None


def ray_init(address: str | None = None):
    """Connect to ``address`` or start a local Ray instance (quietly, no dashboard); the ``ray`` module."""
    try:
        import ray
    except ImportError:
        raise DKError("the ray executor needs Ray: pip install 'darkknowledge[ray]'") from None
    if not ray.is_initialized():
        kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        if address:
            check_reachable(address)
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        try:
            ray.init(**kwargs)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise DKError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {e}") from None
    return ray


class RayExecutor(Executor):
    """Ray tasks, each asking for ``cpus`` CPUs (and as many torch threads) and ``gpus`` GPUs; ``cpus`` None:
    the cluster's CPUs shared out among ``workers`` tasks at once."""

    def __init__(self, address: str | None, cpus: float | None, gpus: float, max_retries: int,
                 workers: int = 1) -> None:
        self.ray = ray_init(address)
        if cpus is None:
            cpus = max(1.0, self.ray.cluster_resources().get("CPU", workers) / workers)
        self.remote = self.ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=max_retries)(_with_threads)
        self.threads = max(1, int(cpus))
        self.started: dict[Any, float] = {}

    def submit(self, fn, arg):
        ref = self.remote.remote(fn, arg, self.threads)
        self.started[ref] = time.perf_counter()
        return ref

    def wait(self, timeout: float = 1.0):
        if not self.started:
            return []
        ready, _ = self.ray.wait(list(self.started), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            seconds = time.perf_counter() - self.started.pop(ref)
            try:
                out.append((ref, Outcome(True, self.ray.get(ref), seconds=seconds)))
            except Exception as e:  # the task raised, or its worker died more than max_retries times
                out.append((ref, Outcome(False, error=describe_error(e), seconds=seconds)))
        return out


def open_executor(executor: str = "local", workers: int = 1, *, address: str | None = None,
                  cpus_per_task: float | None = 1.0, gpus_per_task: float = 0.0, max_retries: int = 3) -> Executor:
    """The executor named (see the module docstring); bad names and counts, and an unreachable Ray
    ``address``, are DKErrors raised here, before any task runs."""
    if executor not in EXECUTORS:
        raise DKError(f"unknown executor {executor!r}; allowed: {', '.join(EXECUTORS)}")
    if workers < 1:
        raise DKError(f"workers must be >= 1, got {workers}")
    if executor == "ray":
        return RayExecutor(address, cpus_per_task, gpus_per_task, max_retries, workers)
    return SerialExecutor() if workers == 1 else ProcessExecutor(workers)


def run_tasks(fn: Callable[[Any], Any], tasks: list[Any], *, executor: str = "local", workers: int = 1,
              address: str | None = None, cpus_per_task: float = 1.0, gpus_per_task: float = 0.0,
              max_retries: int = 3, progress: bool = True, desc: str = "tasks",
              on_outcome: Callable[[int, Outcome], None] | None = None) -> list[Outcome]:
    """Run ``fn(task)`` for every task on ``executor`` (``open_executor``); one ``Outcome`` per task, in
    order; ``on_outcome(i, outcome)`` hears of each the moment it is known, so results are written as they come.

    Args:
        workers: ``local`` only: processes at once (1: in this process, each task with all threads).
        address: ``ray`` only: an existing cluster's address (``auto``, ``host:port``, ``ray://host:port``);
            none: start a local instance with this machine's cores.
        cpus_per_task, gpus_per_task: ``ray`` only: each task's resource request (and its torch threads).
        max_retries: ``ray`` only: retries of a task whose worker died.
    """
    outcomes: list[Outcome | None] = [None] * len(tasks)
    with open_executor(executor, workers, address=address, cpus_per_task=cpus_per_task,
                       gpus_per_task=gpus_per_task, max_retries=max_retries) as ex:
        index = {ex.submit(fn, task): i for i, task in enumerate(tasks)}
        with tqdm(total=len(tasks), desc=desc, disable=not progress, unit="task", leave=False) as bar:
            while index:
                for handle, outcome in ex.wait():
                    i = index.pop(handle)
                    outcomes[i] = outcome
                    bar.update(1)
                    if on_outcome is not None:
                        on_outcome(i, outcome)
    return [o if o is not None else Outcome(False, error="not run") for o in outcomes]
