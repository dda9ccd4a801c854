"""Everything that runs on Ray, in one file so that one test worker holds the session's one Ray instance
(``conftest.ray_instance``): a SIGKILLed member and a SIGKILLed specialist retried from their last epoch to the
uninterrupted weights, and reproduction stages as Ray tasks with their dependencies' results."""

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from darkknowledge import DKError
from darkknowledge import specialists as sp
from darkknowledge.checkpoint import load_checkpoint, read_meta
from darkknowledge.ensembles import member_task, member_tasks
from darkknowledge.executors import run_tasks
from darkknowledge.experiments.runner import Stage, run_stages
from test_executors import MEMBER as MEMBER_CFG
from test_executors import small_images as member_images
from test_specialists import SPEC, _task, train_generalist


@pytest.fixture(scope="module")
def generalist(tmp_path_factory):
    return train_generalist(tmp_path_factory.mktemp("spec"))


def kill_mid_run_and_compare(fn, ref, task, epochs: int) -> None:
    """Run ``fn(ref)`` uninterrupted here, then ``task`` (the same work into another directory) as a Ray task whose
    worker is SIGKILLed after its first epoch checkpoint; Ray retries it, it resumes from that checkpoint, and it
    must end with the uninterrupted run's weights and per-epoch losses."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray task will (1 CPU): convolutions sum in the same order
    try:
        fn(ref)
    finally:
        torch.set_num_threads(threads)
    outcome = {}
    runner = threading.Thread(target=lambda: outcome.update(r=run_tasks(
        fn, [task], executor="ray", cpus_per_task=1, progress=False)))
    out = Path(task.out)
    try:
        runner.start()
        deadline = time.time() + 240
        while not ((out / "model.json").exists() and (out / "worker.json").exists()):
            assert time.time() < deadline and runner.is_alive(), "the task never reached its first checkpoint"
            time.sleep(0.05)
        pid = json.loads((out / "worker.json").read_text())["pid"]
        epoch_at_kill = read_meta(out)["epoch"]
        os.kill(pid, signal.SIGKILL)
        runner.join(timeout=300)
        assert not runner.is_alive()
        (result,) = outcome["r"]
        assert result.ok, result.error
        assert 1 <= epoch_at_kill < epochs, "the kill came too late to test a retry"
        assert json.loads((out / "worker.json").read_text())["pid"] != pid  # retried in another worker
        a, meta_a, _ = load_checkpoint(ref.out)
        b, meta_b, _ = load_checkpoint(out)
        assert meta_b["epoch"] == epochs
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name  # resumed, not retrained: the uninterrupted run's weights
        assert [h["loss"] for h in meta_a["history"]] == [h["loss"] for h in meta_b["history"]]
    finally:
        runner.join(timeout=300)


def test_ray_retries_a_killed_member_from_its_last_epoch(tmp_path, ray_instance):
    source = member_images(tmp_path / "data.npz")
    ref = member_tasks(source, MEMBER_CFG, 1, tmp_path / "ref")[0]
    kill_mid_run_and_compare(member_task, ref, member_tasks(source, MEMBER_CFG, 1, tmp_path / "ray")[0],
                             MEMBER_CFG.epochs)


def test_ray_retries_a_killed_specialist_from_its_last_epoch(generalist, tmp_path, ray_instance):
    source, d = generalist
    ref = dataclasses.replace(_task(source, d, "ref", [2, 3]), out=str(tmp_path / "ref"),
                              config=dataclasses.replace(SPEC, epochs=6))
    kill_mid_run_and_compare(sp.specialist_task, ref, dataclasses.replace(ref, out=str(tmp_path / "ray")), 6)


def test_stages_run_as_ray_tasks_with_their_inputs(tmp_path, ray_instance):
    import sys

    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import tests/: by value
    stages = [Stage("a", "ok"), Stage("b", "boom", deps=("a",)), Stage("c", "sum", deps=("a",))]
    records = run_stages(stages, _ray_execute, tmp_path, report=lambda r: None, workers=2, executor="ray",
                         progress=False, log=lambda m: None)
    assert records["b"]["status"] == "failed" and records["b"]["error"] == "boom"
    assert records["c"]["result"] == {"value": "c after a"}


def _ray_execute(stage, inputs):
    if stage.kind == "boom":
        raise DKError("boom")
    return {"value": " after ".join([stage.name, *(r["value"] for r in inputs.values())])}
