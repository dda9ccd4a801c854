"""TensorBoard event files: every epoch's record as scalars, from the CLI, the API and ensembles."""

import json
import sys

import pytest
from conftest import dk

import darkknowledge as dk_api
from darkknowledge.errors import DKError

QUICK = ("--data", "digits", "--epochs", "3", "--batch-size", "128", "--device", "cpu", "--no-progress")


def scalars(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_dk_train_writes_the_json_history_as_scalars(tmp_path):
    r = dk("train", "--arch", "mlp-300x2", "--out", tmp_path / "t", "--tensorboard", tmp_path / "tb", *QUICK)
    assert r.returncode == 0, r.stderr
    history = json.loads((tmp_path / "t" / "model.json").read_text())["history"]
    s = scalars(tmp_path / "tb")
    assert [step for step, _ in s["loss/mean"]] == [1, 2, 3]
    assert [v for _, v in s["loss/mean"]] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    assert [v for _, v in s["lr"]] == pytest.approx([h["lr"] for h in history], rel=1e-6)
    assert s["test/errors"][-1][1] == history[-1]["test_errors"]
    assert s["test/accuracy"][-1][1] == pytest.approx(1 - history[-1]["test_errors"] / 899)
    assert {"loss/max_batch", "seconds/epoch"} <= s.keys()


def test_distill_logs_the_teachers_cost_and_members_log_apart(tmp_path):
    r = dk("train", "--arch", "mlp-300x2", "--out", tmp_path / "m", "--members", "2", "--tensorboard",
           tmp_path / "tbm", *QUICK)
    assert r.returncode == 0, r.stderr
    for i in range(2):
        assert len(scalars(tmp_path / "tbm" / f"member{i}")["loss/mean"]) == 3
    _, report = dk_api.distill(tmp_path / "m" / "member0", "mlp-30x2", "digits", epochs=2, progress=False,
                               device="cpu", tensorboard=tmp_path / "tbd")
    s = scalars(tmp_path / "tbd")
    assert len(s["teacher/seconds"]) == 1 and s["teacher/seconds"][0][1] > 0
    assert [v for _, v in s["loss/mean"]] == pytest.approx([h["loss"] for h in report.history], rel=1e-6)


def test_without_the_tensorboard_package_the_run_does_not_start(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(DKError, match="pip install tensorboard"):
        dk_api.train("mlp-30x2", "digits", epochs=1, progress=False, out=tmp_path / "t", tensorboard=tmp_path / "tb")
    assert not (tmp_path / "t").exists() and not (tmp_path / "tb").exists()
