"""Stages of a reproduction: run in order (or in worker processes), recorded as they finish, resumable.

An experiment is a list of ``Stage``s: one training run each (a teacher, a student, a sweep point),
with the stages it needs. ``run_stages`` executes them and writes each outcome to
``OUT/stages/NAME.json`` the moment it is known:

- ``done``: the stage's result (a JSON mapping) and its seconds;
- ``failed``: its error message (the stage raised), or the failed stage it depends on.

A failed stage never stops the others. After every stage the experiment's ``report`` callback
rewrites the results file from all records so far, so an interrupted run keeps everything that
finished. With ``resume``, stages already ``done`` are not run again, and a stage cut off mid-way
continues from its own epoch checkpoint (the stage function passes ``resume`` on to ``fit``); a
previous run's ``failed`` stages are retried.

Progress: one overall bar weighted by each stage's estimated ``cost`` (so its time estimate means
something when a teacher costs 50 small stages), above the running stage's own epoch bar.
"""

from __future__ import annotations

import json
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from darkknowledge.checkpoint import atomic_write_json
from darkknowledge.errors import DKError

DONE, FAILED, PENDING = "done", "failed", "pending"


@dataclass(frozen=True)
class Stage:
    """One unit of work: ``kind`` and ``params`` are what the experiment's stage function reads."""

    name: str  # unique, e.g. "teacher/s0"; "/" becomes "__" in file names
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    cost: float = 1.0  # relative compute, for the overall progress bar's time estimate


def stage_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name.replace('/', '__')}.json"


def read_records(out: Path, stages: list[Stage]) -> dict[str, dict[str, Any]]:
    """The recorded outcome of every stage (``{"status": "pending"}`` where none is recorded)."""
    records = {}
    for s in stages:
        path = stage_path(out, s.name)
        try:
            records[s.name] = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            records[s.name] = {"status": PENDING}
    return records


def _failure(e: BaseException) -> str:
    cause = getattr(e, "cause", None)  # a Ray task's own exception
    if isinstance(cause, BaseException):
        return _failure(cause)
    if isinstance(e, DKError):
        return str(e)
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
    return f"{type(e).__name__}: {e}{where}"


def run_stages(stages: list[Stage], execute: Callable[[Stage], dict[str, Any]], out: Path, *,
               report: Callable[[dict[str, dict[str, Any]]], None], resume: bool = False, workers: int = 1,
               progress: bool = True, log: Callable[[str], None] = print, executor: str = "local",
               address: str | None = None) -> dict[str, dict[str, Any]]:
    """Run ``stages`` (dependencies before dependants), recording each; returns all records.

    Args:
        stages: in the order to run them when one worker runs them all.
        execute: ``execute(stage) -> result``; a top-level function when ``workers > 1`` (it is
            pickled to worker processes). Raising marks the stage failed.
        out: the experiment's output directory (records go to ``out/stages/``).
        report: called with all records after every stage (writes results files).
        resume: keep stages already done in ``out``; otherwise they are run again.
        workers: stages run in this many processes at once (1: in this process).
        executor: ``local`` (a process pool when ``workers > 1``) or ``ray``: every stage a Ray task (on a
            local instance or the cluster at ``address``), ``workers`` at once, each retried by Ray if its
            worker dies; stage functions resume from their epoch checkpoints, so a retry loses at most an epoch.
    """
    names = [s.name for s in stages]
    if len(set(names)) != len(names):
        raise ValueError("stage names must be unique")
    by_name = {s.name: s for s in stages}
    for s in stages:
        missing = [d for d in s.deps if d not in by_name]
        if missing:
            raise ValueError(f"stage {s.name} depends on unknown stages {missing}")
    records = read_records(out, stages) if resume else {s.name: {"status": PENDING} for s in stages}
    for name, rec in records.items():
        if rec["status"] != DONE:
            records[name] = {"status": PENDING}
    total = sum(s.cost for s in stages)
    already = [s for s in stages if records[s.name]["status"] == DONE]
    # Stages done before a resume start the bar (``initial``) without counting towards its rate, so the
    # time-left estimate is this run's pace, not inflated by work it did not do.
    bar = tqdm(total=total, initial=sum(s.cost for s in already), disable=not progress, unit="", position=0,
               dynamic_ncols=True,
               bar_format="{desc} {percentage:3.0f}%|{bar}| [{elapsed}<{remaining}] {postfix}", mininterval=1.0)

    def show_running(names: list[str]) -> None:
        bar.set_postfix_str("running " + ", ".join(names) if names else "", refresh=False)
        bar.refresh()

    def done_count() -> int:
        return sum(r["status"] != PENDING for r in records.values())

    def refresh_bar() -> None:
        bar.set_description_str(f"stages {done_count()}/{len(stages)}", refresh=False)

    def finish(stage: Stage, record: dict[str, Any]) -> None:
        records[stage.name] = record
        atomic_write_json(stage_path(out, stage.name), record)
        bar.update(stage.cost)
        refresh_bar()
        state = record["status"] + (f": {record['error']}" if record["status"] == FAILED else "")
        log(f"stage {stage.name}: {state} ({record.get('seconds', 0):.0f} s)")
        report(records)

    def blocked(stage: Stage) -> str | None:
        bad = [d for d in stage.deps if records[d]["status"] == FAILED]
        return f"needs {', '.join(bad)}, which failed" if bad else None

    if already:
        log(f"resuming: {len(already)} of {len(stages)} stages already done")
    refresh_bar()
    report(records)
    todo = [s for s in stages if records[s.name]["status"] == PENDING]
    try:
        if workers == 1 and executor == "local":
            for stage in todo:
                reason = blocked(stage)
                if reason:
                    finish(stage, {"status": FAILED, "error": reason, "seconds": 0.0})
                    continue
                t0 = time.perf_counter()
                show_running([stage.name])
                try:
                    result = execute(stage)
                except (KeyboardInterrupt, SystemExit):
                    raise
                except Exception as e:  # a stage's failure is data; the others still run
                    finish(stage, {"status": FAILED, "error": _failure(e), "seconds": time.perf_counter() - t0})
                else:
                    finish(stage, {"status": DONE, "result": result, "seconds": time.perf_counter() - t0})
        else:
            _run_parallel(todo, execute, records, workers, blocked, finish, show_running, executor, address)
    finally:
        bar.close()
    return records


def critical_path(stages: list[Stage]) -> dict[str, float]:
    """Each stage's cost plus the costliest chain of stages that wait on it (directly or not).

    Starting the stage with the longest such chain first keeps a long dependency chain (a teacher,
    then its students) from being started last and running alone while the other workers idle.
    """
    dependants: dict[str, list[str]] = {s.name: [] for s in stages}
    for s in stages:
        for d in s.deps:
            if d in dependants:  # a dependency outside ``stages`` is already done
                dependants[d].append(s.name)
    cost = {s.name: s.cost for s in stages}
    path: dict[str, float] = {}

    def visit(name: str, seen: tuple[str, ...] = ()) -> float:
        if name in seen:
            raise ValueError(f"stages {list(seen)} wait on each other")
        if name not in path:
            path[name] = cost[name] + max((visit(d, seen + (name,)) for d in dependants[name]), default=0.0)
        return path[name]

    for s in stages:
        visit(s.name)
    return path


class _Pool:
    """``submit(fn, arg) -> handle`` and ``wait(handles, timeout) -> finished`` over a process pool or Ray."""

    def __init__(self, executor: str, workers: int, address: str | None) -> None:
        self.executor = executor
        if executor == "ray":
            from darkknowledge.executors import ray_init

            self.ray = ray_init(address)
            total = self.ray.cluster_resources().get("CPU", workers)
            self.cpus = max(1.0, total / workers)
        else:
            import concurrent.futures as cf
            import multiprocessing as mp

            self.pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"))

    def submit(self, fn, arg):
        if self.executor == "ray":
            return self.ray.remote(num_cpus=self.cpus, max_retries=3)(fn).remote(arg)
        return self.pool.submit(fn, arg)

    def wait(self, handles, timeout: float):
        if self.executor == "ray":
            ready, _ = self.ray.wait(list(handles), num_returns=1, timeout=timeout)
            return ready
        import concurrent.futures as cf

        finished, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return finished

    def result(self, handle):
        return self.ray.get(handle) if self.executor == "ray" else handle.result()

    def close(self) -> None:
        if self.executor != "ray":
            self.pool.shutdown()


def _run_parallel(todo: list[Stage], execute, records, workers: int, blocked, finish, show_running,
                  executor: str = "local", address: str | None = None) -> None:
    """Submit each ready stage, longest critical path first; record results as they arrive."""
    path = critical_path(todo)
    waiting = sorted(todo, key=lambda s: -path[s.name])  # stable: ties keep the experiment's order
    running: dict[Any, tuple[Stage, float]] = {}
    pool = _Pool(executor, workers, address)
    try:
        while waiting or running:
            for stage in list(waiting):
                reason = blocked(stage)
                if reason:
                    waiting.remove(stage)
                    finish(stage, {"status": FAILED, "error": reason, "seconds": 0.0})
                elif all(records[d]["status"] == DONE for d in stage.deps) and len(running) < workers:
                    waiting.remove(stage)
                    running[pool.submit(execute, stage)] = (stage, time.perf_counter())
            show_running([s.name for s, _ in running.values()])
            if not running:
                if waiting:  # nothing runs and nothing can start: the dependencies form a cycle
                    raise ValueError(f"stages {[s.name for s in waiting]} wait on each other")
                continue
            finished = pool.wait(running, timeout=1.0)
            show_running([s.name for s, _ in running.values()])  # and the elapsed time ticks on
            for fut in finished:
                stage, t0 = running.pop(fut)
                try:
                    result = pool.result(fut)
                except Exception as e:
                    finish(stage, {"status": FAILED, "error": _failure(e), "seconds": time.perf_counter() - t0})
                else:
                    finish(stage, {"status": DONE, "result": result, "seconds": time.perf_counter() - t0})
    finally:
        pool.close()
