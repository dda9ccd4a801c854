"""Stage runner: failures are recorded and never stop the others; every finished stage is on disk."""

import json
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

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


@dataclass(frozen=True)
class ToyScale:
    default_seeds: int = 1
    teacher_steps: int = 1
    student_steps: int = 1


@dataclass(frozen=True)
class ToyRecipe:
    lr: float = 0.1


def toy_stage(stage, inputs):
    for path in (Path("models") / stage.name, *stage.paths):  # resumable checkpoints
        (Path(stage.params["out"]) / path).mkdir(parents=True, exist_ok=True)
    return {"run": time.perf_counter_ns(), "steps": stage.params["scale"].student_steps}


def toy_experiment(owners):
    from darkknowledge.experiments.report import Experiment

    return Experiment(
        name="toy", title="toy", scales={"full": ToyScale()}, check_data=lambda data_dir, sc: None,
        stages=lambda sc, seeds, ctx: [Stage("teacher", "teacher", ctx), Stage("student", "student", ctx, ("teacher",), paths=("students/s0",)),
                                       Stage("report", "report", ctx, ("student",)), Stage("other", "other", ctx)],
        run_stage=toy_stage, summarise=lambda stages, records, sc, seeds: {"rows": []},
        markdown=lambda results: [], plots=lambda results, out: [], precision="fp32",
        configs=lambda sc: {"student": ToyRecipe()}, owners=owners)


def test_resume_after_an_owned_setting_changed_runs_its_stages_and_their_dependants_again(tmp_path, monkeypatch):
    from dataclasses import replace

    from darkknowledge.experiments import report

    owners = {"scale.student_steps": ("student",), "recipes.student": ("student",)}
    exp = toy_experiment(owners)
    before = report.reproduce(exp, tmp_path, tmp_path / "run", progress=False, log=lambda m: None)
    runs = {s["stage"]: s for s in before["stages"]}
    assert all(s["status"] == "done" for s in runs.values())
    first = {name: json.loads((tmp_path / "run" / "stages" / f"{name}.json").read_text())["result"]["run"]
             for name in runs}
    (tmp_path / "run" / "models" / "student" / "epoch.pt").write_bytes(b"an old checkpoint")
    (tmp_path / "run" / "students" / "s0" / "epoch.pt").write_bytes(b"an old checkpoint outside models/")
    monkeypatch.setitem(exp.scales, "full", replace(ToyScale(), student_steps=2))
    logs = []
    report.reproduce(exp, tmp_path, tmp_path / "run", resume=True, progress=False, log=logs.append)
    again = {name: json.loads((tmp_path / "run" / "stages" / f"{name}.json").read_text())["result"]
             for name in runs}
    assert again["teacher"]["run"] == first["teacher"] and again["other"]["run"] == first["other"]
    assert again["student"]["run"] != first["student"] and again["student"]["steps"] == 2
    assert again["report"]["run"] != first["report"]  # it depends on the student
    assert not (tmp_path / "run" / "models" / "student" / "epoch.pt").exists()  # not resumed from the old one
    assert not (tmp_path / "run" / "students" / "s0" / "epoch.pt").exists()  # nor from its other checkpoints
    assert any("scale.student_steps" in m and "running again student, report" in m for m in logs)
    manifest = json.loads((tmp_path / "run" / report.MANIFEST).read_text())
    assert manifest["settings"]["scale"]["student_steps"] == 2
    assert manifest["invocations"][-1]["ran_again"] == ["student", "report"]
    # A setting no stage kind owns still refuses, and nothing is forgotten.
    monkeypatch.setitem(exp.scales, "full", replace(ToyScale(), student_steps=2, teacher_steps=3))
    with pytest.raises(DKError, match=r"other settings \(scale.teacher_steps differ\)"):
        report.reproduce(exp, tmp_path, tmp_path / "run", resume=True, progress=False, log=lambda m: None)
    assert (tmp_path / "run" / "stages" / "student.json").is_file()


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_every_owned_setting_exists_and_its_owners_are_stage_kinds(name):
    import importlib

    from darkknowledge.experiments.report import _flat, run_settings

    exp = importlib.import_module(f"darkknowledge.experiments.{name}").EXPERIMENT
    sc = exp.scales["smoke"]
    keys = _flat(run_settings(exp, sc))
    kinds = {s.kind for scale in exp.scales.values() for s in exp.stages(scale, scale.default_seeds, {"scale": scale})}
    for key, owners in exp.owners.items():
        assert any(k == key or k.startswith(key + ".") for k in keys), key
        assert set(owners) <= kinds, (key, owners)
