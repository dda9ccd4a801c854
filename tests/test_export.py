"""ONNX export of a trained student, run in onnxruntime and compared with PyTorch."""

import numpy as np
import onnxruntime as ort
import torch
from conftest import dk

from darkknowledge.checkpoint import load_checkpoint


def test_export_matches_pytorch(tmp_path):
    ck = tmp_path / "s"
    assert dk("train", "--arch", "mlp-800x2", "--epochs", "1", "--out", ck, "--no-progress").returncode == 0
    r = dk("export", "--checkpoint", ck, "--out", tmp_path / "s.onnx")
    assert r.returncode == 0, r.stderr
    assert "max_abs_diff" in r.stdout
    model, _, _ = load_checkpoint(ck)
    x = torch.rand(33, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    want = model.eval()(x).detach().numpy()
    assert got.shape == (33, 10) and np.abs(got - want).max() < 1e-4


def test_export_keeps_the_input_shift(tmp_path):
    from darkknowledge.checkpoint import save_checkpoint
    from darkknowledge.models import build_model

    model = build_model("mlp-30x2", 64, 10)
    model.input_shift.fill_(1.0)
    save_checkpoint(tmp_path / "s", model, {"arch": "mlp-30x2", "in_features": 64, "num_classes": 10})
    assert dk("export", "--checkpoint", tmp_path / "s", "--out", tmp_path / "s.onnx").returncode == 0
    x = torch.rand(7, 8, 8)
    got = ort.InferenceSession(str(tmp_path / "s.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - model.eval()(x).detach().numpy()).max() < 1e-4


def test_export_of_missing_checkpoint(tmp_path):
    r = dk("export", "--checkpoint", tmp_path / "none", "--out", tmp_path / "x.onnx")
    assert r.returncode == 2 and "no checkpoint" in r.stderr and not (tmp_path / "x.onnx").exists()


def test_export_of_a_conv_net_keeps_its_normalisation(tmp_path):
    from darkknowledge.checkpoint import save_checkpoint
    from darkknowledge.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet-s-w4", (3, 32, 32), 10)
    model.calibrate_norm([0.5, 0.4, 0.3], [0.2, 0.25, 0.3])
    save_checkpoint(tmp_path / "c", model, {"arch": "resnet-s-w4", "in_features": 3072, "in_shape": [3, 32, 32],
                                            "num_classes": 10})
    r = dk("export", "--checkpoint", tmp_path / "c", "--out", tmp_path / "c.onnx")
    assert r.returncode == 0, r.stderr
    x = torch.rand(5, 3, 32, 32)
    got = ort.InferenceSession(str(tmp_path / "c.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x.numpy()})[0]
    assert np.abs(got - model.eval()(x).detach().numpy()).max() < 1e-3
