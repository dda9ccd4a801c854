"""Stage runner: failures are recorded and never stop the others; every finished stage is on disk."""

import json

import pytest

import time

from darkknowledge import DKError
from darkknowledge.experiments.runner import Stage, critical_path, read_records, run_stages

STAGES = [Stage("a", "ok"), Stage("b", "boom", deps=("a",)), Stage("c", "ok", deps=("b",)),
          Stage("d", "ok", deps=("a",)), Stage("e", "crash")]


def execute(stage, inputs):
    if stage.kind == "boom":
        raise DKError("training diverged (loss nan) in epoch 1")
    if stage.kind == "crash":
        raise ZeroDivisionError("division by zero")
    return {"value": stage.name}


def test_failures_are_recorded_and_the_rest_still_runs(tmp_path):
    reports = []
    records = run_stages(STAGES, execute, tmp_path, report=lambda r: reports.append({k: v["status"] for k, v in r.items()}),
                         progress=False, log=lambda m: None)
    assert {k: v["status"] for k, v in records.items()} == {"a": "done", "b": "failed", "c": "failed", "d": "done",
                                                           "e": "failed"}
    assert records["b"]["error"] == "training diverged (loss nan) in epoch 1"
    assert records["c"]["error"] == "needs b, which failed"
    assert records["e"]["error"].startswith("ZeroDivisionError: division by zero at test_runner.py:")
    assert records["a"]["result"] == {"value": "a"}
    # The report ran before any stage and after each one, seeing each outcome as it came.
    assert len(reports) == 1 + len(STAGES)
    assert reports[0] == {s.name: "pending" for s in STAGES} and reports[1]["a"] == "done"
    on_disk = read_records(tmp_path, STAGES)
    assert on_disk == json.loads(json.dumps(records))


def test_resume_keeps_done_stages_and_retries_failed_ones(tmp_path):
    run_stages(STAGES, execute, tmp_path, report=lambda r: None, progress=False, log=lambda m: None)
    ran = []

    def fixed(stage, inputs):
        ran.append(stage.name)
        return {"value": stage.name}

    records = run_stages(STAGES, fixed, tmp_path, report=lambda r: None, resume=True, progress=False,
                         log=lambda m: None)
    assert ran == ["b", "c", "e"] and all(r["status"] == "done" for r in records.values())
    ran.clear()
    run_stages(STAGES, fixed, tmp_path, report=lambda r: None, resume=False, progress=False, log=lambda m: None)
    assert ran == [s.name for s in STAGES]  # without resume everything runs again


def _parallel_execute(stage, inputs):
    if stage.kind == "boom":
        raise DKError("boom")
    return {"value": stage.name}


def test_a_stage_gets_the_results_of_the_stages_it_needs(tmp_path):
    stages = [Stage("a", "ok"), Stage("b", "ok"), Stage("c", "sum", deps=("b", "a"))]

    def add(stage, inputs):
        if stage.kind == "sum":
            return {"inputs": sorted(inputs), "value": "+".join(inputs[d]["value"] for d in stage.deps)}
        return {"value": stage.name}

    records = run_stages(stages, add, tmp_path, report=lambda r: None, progress=False, log=lambda m: None)
    assert records["c"]["result"] == {"inputs": ["a", "b"], "value": "b+a"}
    # Resumed, the finished stages are not run again, yet a retried dependant still gets their results.
    (tmp_path / "stages" / "c.json").unlink()
    records = run_stages(stages, add, tmp_path, report=lambda r: None, resume=True, progress=False,
                         log=lambda m: None)
    assert records["c"]["result"]["value"] == "b+a"


def test_parallel_workers_record_the_same_outcomes(tmp_path):
    records = run_stages(STAGES[:4], _parallel_execute, tmp_path, report=lambda r: None, workers=2,
                         progress=False, log=lambda m: None)
    assert {k: v["status"] for k, v in records.items()} == {"a": "done", "b": "failed", "c": "failed", "d": "done"}


def _timed_execute(stage, inputs):
    start = time.time()
    time.sleep(1.5)  # longer than a spawned worker's start-up skew on a loaded machine
    return {"start": start}


def test_the_longest_dependency_chain_starts_first(tmp_path):
    # Listed last, the expensive chain (big, then child) would start only after both small stages
    # and then run alone; started first, the small stages fill the other worker beside it.
    stages = [Stage("small1", "ok"), Stage("small2", "ok"), Stage("big", "ok", cost=5.0),
              Stage("child", "ok", deps=("big",), cost=5.0)]
    assert critical_path(stages) == {"small1": 1.0, "small2": 1.0, "big": 10.0, "child": 5.0}
    records = run_stages(stages, _timed_execute, tmp_path, report=lambda r: None, workers=2, progress=False,
                         log=lambda m: None)
    start = {k: v["result"]["start"] for k, v in records.items()}
    assert start["big"] < start["small2"] and start["small1"] < start["small2"]


def test_bad_stage_lists_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_stages([Stage("a", "ok"), Stage("a", "ok")], execute, tmp_path, report=lambda r: None, progress=False)
    with pytest.raises(ValueError, match="unknown stages"):
        run_stages([Stage("a", "ok", deps=("z",))], execute, tmp_path, report=lambda r: None, progress=False)
    with pytest.raises(ValueError, match="wait on each other"):
        critical_path([Stage("a", "ok", deps=("b",)), Stage("b", "ok", deps=("a",))])


def test_resume_refuses_a_reproduction_started_with_other_settings(tmp_path):
    from dataclasses import replace

    from darkknowledge.experiments.cifar10 import EXPERIMENT, SCALES
    from darkknowledge.experiments.report import MANIFEST, prepare_out, run_settings

    settings = run_settings(EXPERIMENT, SCALES["smoke"])
    assert settings["recipes"]["member"]["arch"] and settings["scale"]["members"] == 2
    prepare_out(tmp_path, "cifar10", "smoke", resume=False, overwrite=False, settings=settings)
    (tmp_path / MANIFEST).write_text(json.dumps({"experiment": "cifar10", "scale": "smoke", "settings": settings}))
    prepare_out(tmp_path, "cifar10", "smoke", resume=True, overwrite=False, settings=settings)  # same: resumes
    other = run_settings(EXPERIMENT, replace(SCALES["smoke"], member_epochs=3))
    with pytest.raises(DKError, match=r"other settings \(scale.member_epochs differ\)"):
        prepare_out(tmp_path, "cifar10", "smoke", resume=True, overwrite=False, settings=other)


def test_resume_takes_a_setting_added_since_the_run_started_at_its_default(tmp_path):
    from darkknowledge.experiments.cifar10 import EXPERIMENT, SCALES
    from darkknowledge.experiments.report import MANIFEST, prepare_out, run_settings, settings_defaults

    sc = SCALES["smoke"]
    settings, defaults = run_settings(EXPERIMENT, sc), settings_defaults(EXPERIMENT, sc)
    older = json.loads(json.dumps(settings))
    del older["recipes"]["member"]["lookahead"]  # a manifest written before the field existed
    (tmp_path / MANIFEST).write_text(json.dumps({"experiment": "cifar10", "scale": "smoke", "settings": older}))
    prepare_out(tmp_path, "cifar10", "smoke", resume=True, overwrite=False, settings=settings, defaults=defaults)
    newer = json.loads(json.dumps(settings))
    newer["recipes"]["member"]["lookahead"] = True  # the new field set: not the run that was started
    with pytest.raises(DKError, match=r"recipes.member.lookahead differ"):
        prepare_out(tmp_path, "cifar10", "smoke", resume=True, overwrite=False, settings=newer, defaults=defaults)
