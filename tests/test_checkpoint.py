import hashlib
import json

import pytest
import torch
from safetensors.torch import save as st_save

from darkknowledge import DKError, build_model
from darkknowledge.checkpoint import load_checkpoint, read_meta, save_checkpoint


def meta(arch="mlp-30x2"):
    return {"arch": arch, "in_features": 64, "num_classes": 10}


def test_roundtrip_keeps_weights_and_extra(tmp_path):
    model = build_model("mlp-30x2", 64, 10)
    save_checkpoint(tmp_path / "ck", model, {**meta(), "note": "x"}, extra={"optim.0.momentum_buffer": torch.ones(3)})
    loaded, m, extra = load_checkpoint(tmp_path / "ck", expected_arch="mlp-30x2")
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    assert m["note"] == "x" and torch.equal(extra["optim.0.momentum_buffer"], torch.ones(3))
    assert load_checkpoint(tmp_path / "ck" / "model.json")[1]["arch"] == "mlp-30x2"  # file path accepted too
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["model.json", "model.safetensors"]  # no temp files


def test_input_shift_is_saved_and_old_checkpoints_load_without_one(tmp_path):
    model = build_model("mlp-30x2", 64, 10)
    model.input_shift.fill_(1.0)
    save_checkpoint(tmp_path / "ck", model, meta())
    loaded = load_checkpoint(tmp_path / "ck")[0]
    assert float(loaded.input_shift) == 1.0
    x = torch.rand(5, 8, 8)
    assert torch.equal(loaded(x), model(x))
    # Written before MLPs had the buffer: loads with shift 0, i.e. as it was trained.
    old = {k: v for k, v in model.state_dict().items() if k != "input_shift"}
    blob = st_save(old)
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "model.safetensors").write_bytes(blob)
    (tmp_path / "old" / "model.json").write_text(json.dumps({**meta(), "weights_sha256": hashlib.sha256(blob).hexdigest()}))
    assert float(load_checkpoint(tmp_path / "old")[0].input_shift) == 0.0


def test_checkpoint_of_another_architecture(tmp_path):
    save_checkpoint(tmp_path, build_model("mlp-30x2", 64, 10), meta())
    with pytest.raises(DKError, match="is a 'mlp-30x2' model, expected 'mlp-800x2'"):
        load_checkpoint(tmp_path, expected_arch="mlp-800x2")


def test_weights_that_do_not_fit_the_declared_architecture(tmp_path):
    save_checkpoint(tmp_path, build_model("mlp-30x2", 64, 10), meta())
    m = json.loads((tmp_path / "model.json").read_text())
    m["arch"] = "mlp-300x2"
    (tmp_path / "model.json").write_text(json.dumps(m))
    with pytest.raises(DKError, match="does not fit architecture 'mlp-300x2'"):
        load_checkpoint(tmp_path)


def test_torn_checkpoint_detected(tmp_path):
    save_checkpoint(tmp_path / "a", build_model("mlp-30x2", 64, 10), meta())
    save_checkpoint(tmp_path / "b", build_model("mlp-30x2", 64, 10), meta())
    (tmp_path / "a" / "model.safetensors").write_bytes((tmp_path / "b" / "model.safetensors").read_bytes())
    with pytest.raises(DKError, match="hash differs"):
        load_checkpoint(tmp_path / "a")


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(DKError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(DKError, match="corrupt checkpoint metadata"):
        read_meta(tmp_path)
