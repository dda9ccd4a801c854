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

Stages run on an ``executors`` executor (serially in this process, in a process pool, or as Ray
tasks): a stage function takes the stage and the results of the stages it depends on
(``execute(stage, inputs)``, ``inputs[name]`` the result of dependency ``name``), so no stage reads
another's files by path.

Progress: one overall bar weighted by each stage's estimated ``cost`` (so its time estimate means
something when a teacher costs 50 small stages), above the running stage's own epoch bar.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tqdm.auto import tqdm

from darkknowledge.checkpoint import atomic_write_json
from darkknowledge.executors import Executor, open_executor

DONE, FAILED, PENDING = "done", "failed", "pending"


@dataclass(frozen=True)
class Stage:
    """One unit of work: ``kind`` and ``params`` are what the experiment's stage function reads."""

    name: str  # unique, e.g. "teacher/s0"; "/" becomes "__" in file names
    kind: str
    params: dict[str, Any] = field(default_factory=dict)
    deps: tuple[str, ...] = ()
    cost: float = 1.0  # relative compute, for the overall progress bar's time estimate
    paths: tuple[str, ...] = ()  # what it saves outside models/<name> (relative to out), forgotten with it


def stage_path(out: Path, name: str) -> Path:
    return out / "stages" / f"{name.replace('/', '__')}.json"


def model_dir(out: Path, name: str) -> Path:
    """Where stage ``name`` keeps its (resumable) checkpoint: forgotten with its record."""
    return out / "models" / name.replace("/", "__")


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


def run_stages(stages: list[Stage], execute: Callable[[Stage, dict[str, Any]], dict[str, Any]], out: Path, *,
               report: Callable[[dict[str, dict[str, Any]]], None], resume: bool = False, workers: int = 1,
               progress: bool = True, log: Callable[[str], None] = print, executor: str | Executor = "local",
               address: str | None = None) -> dict[str, dict[str, Any]]:
    """Run ``stages`` (dependencies before dependants), recording each; returns all records.

    Args:
        stages: in the order to run them when one worker runs them all; with more, a ready stage with the
            longest chain of dependants waiting on it starts first (``critical_path``).
        execute: ``execute(stage, inputs) -> result`` with ``inputs`` the results of the stage's
            dependencies; a top-level function when stages run in other processes (it is pickled).
            Raising marks the stage failed.
        out: the experiment's output directory (records go to ``out/stages/``).
        report: called with all records after every stage (writes results files).
        resume: keep stages already done in ``out``; otherwise they are run again.
        workers: stages at once.
        executor: ``local`` (in this process with one worker, else a process pool), ``ray`` (every stage a Ray
            task on a local instance or the cluster at ``address``, retried by Ray if its worker dies; stage
            functions resume from their epoch checkpoints, so a retry loses at most an epoch), or an open
            ``executors.Executor``.
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

    def finish(stage: Stage, record: dict[str, Any]) -> None:
        record = json.loads(json.dumps(record))  # as a resumed run reads it back: dependants see one form
        records[stage.name] = record
        atomic_write_json(stage_path(out, stage.name), record)
        bar.update(stage.cost)
        bar.set_description_str(f"stages {sum(r['status'] != PENDING for r in records.values())}/{len(stages)}",
                                refresh=False)
        state = record["status"] + (f": {record['error']}" if record["status"] == FAILED else "")
        log(f"stage {stage.name}: {state} ({record.get('seconds', 0):.0f} s)")
        report(records)

    if already:
        log(f"resuming: {len(already)} of {len(stages)} stages already done")
    bar.set_description_str(f"stages {len(already)}/{len(stages)}", refresh=False)
    report(records)
    todo = [s for s in stages if records[s.name]["status"] == PENDING]
    if workers > 1:
        path = critical_path(todo)
        todo.sort(key=lambda s: -path[s.name])  # stable: ties keep the experiment's order
    ex = executor if isinstance(executor, Executor) else open_executor(executor, workers, address=address,
                                                                        cpus_per_task=None)
    running: dict[Any, Stage] = {}
    try:
        while todo or running:
            for stage in list(todo):
                failed = [d for d in stage.deps if records[d]["status"] == FAILED]
                if failed:
                    todo.remove(stage)
                    finish(stage, {"status": FAILED, "error": f"needs {', '.join(failed)}, which failed",
                                   "seconds": 0.0})
                elif all(records[d]["status"] == DONE for d in stage.deps) and len(running) < workers:
                    todo.remove(stage)
                    inputs = {d: records[d]["result"] for d in stage.deps}
                    running[ex.submit(_run_stage, (execute, stage, inputs))] = stage
            bar.set_postfix_str("running " + ", ".join(s.name for s in running.values()) if running else "",
                                refresh=True)
            if not running:
                if todo:  # nothing runs and nothing can start: the dependencies form a cycle
                    raise ValueError(f"stages {[s.name for s in todo]} wait on each other")
                continue
            for handle, outcome in ex.wait(timeout=1.0):
                stage = running.pop(handle)
                finish(stage, {"status": DONE, "result": outcome.value, "seconds": outcome.seconds} if outcome.ok
                       else {"status": FAILED, "error": outcome.error, "seconds": outcome.seconds})
    finally:
        bar.close()
        if ex is not executor:
            ex.close()
    return records


def _run_stage(job: tuple[Callable[[Stage, dict[str, Any]], dict[str, Any]], Stage, dict[str, Any]]) -> dict[str, Any]:
    execute, stage, inputs = job
    return execute(stage, inputs)


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
