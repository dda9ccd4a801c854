"""The short Python API (``dk.train``, ``dk.distill``) on tensors, a folder, checkpoints, ensembles and other
people's modules (Hugging Face ``transformers`` built from a config; torchvision where it imports)."""

import json

import numpy as np
import pytest
import torch
from torch import nn

import darkknowledge as dk
from darkknowledge.api import UserModule, as_dataset
from darkknowledge.data import load_digits

DIGITS = load_digits()  # scikit-learn's real 8x8 digits: 898 train / 899 test images
FAST = dict(lr=0.1, batch_size=64, device="cpu", precision="fp32")


def net(hidden: int = 0, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10)] if hidden else [nn.Linear(64, 10)]
    return nn.Sequential(nn.Flatten(), *layers)


def test_distill_in_three_lines_on_tensors():
    x, y = torch.cat([DIGITS.x_train, DIGITS.x_test]), torch.cat([DIGITS.y_train, DIGITS.y_test])
    teacher, t_report = dk.train(net(256), (x, y), epochs=15, progress=False, **FAST)
    student = net()
    before = student[1].weight.clone()
    trained, report = dk.distill(teacher, student, (x, y), temperature=4, epochs=15, progress=False, **FAST)
    assert trained is student and not torch.equal(before, student[1].weight)  # the user's module, trained in place
    assert report.test["test_size"] == 180 == round(0.1 * len(y))  # a stratified tenth held out
    assert t_report.accuracy > 0.9 and report.accuracy > 0.85, (t_report.accuracy, report.accuracy)
    assert len(report.history) == 15 and report.settings["distill"]["temperature"] == 4
    assert "test accuracy" in str(report) and report.data == "tensors"


def test_distill_warns_when_the_student_jitters_without_a_view_bank():
    teacher = net()
    with pytest.warns(UserWarning, match="jitter 1 changes its images, but without a view bank"):
        dk.distill(teacher, net(), "digits", epochs=1, jitter=1, progress=False, **FAST)


def test_the_held_out_split_is_stratified_and_seeded():
    x, y = DIGITS.x_train, DIGITS.y_train
    a, b = as_dataset((x, y), seed=0), as_dataset((x, y), seed=0)
    assert torch.equal(a.y_test, b.y_test) and len(a.y_test) + len(a.y_train) == len(y)
    counts = np.bincount(a.y_test.numpy(), minlength=10)
    assert counts.min() >= 8 and counts.max() <= 10  # about a tenth of each class's ~90 images


def test_registry_names_checkpoints_and_ensembles(tmp_path):
    teacher, report = dk.train("mlp-256x1-d0-0", "digits", epochs=10, out=tmp_path / "t", progress=False, **FAST)
    assert teacher.dk_arch == "mlp-256x1-d0-0" and report.checkpoint == str(tmp_path / "t")
    saved = json.loads((tmp_path / "t" / "report.json").read_text())
    assert saved["test"]["errors"] == report.errors
    # a checkpoint path as the teacher, a registry name as the student
    s1, r1 = dk.distill(tmp_path / "t", "mlp-64x1-d0-0", "digits", epochs=10, progress=False, **FAST)
    assert r1.accuracy > 0.85
    # a list of modules: an ensemble, here by the geometric mean; a registry module passed on keeps its name
    other, _ = dk.train(net(128, seed=1), "digits", epochs=10, progress=False, **FAST)
    s2, r2 = dk.distill([teacher, other], "mlp-64x1-d0-0", "digits", combine="geometric", epochs=10,
                        progress=False, **FAST)
    assert r2.settings["combine"] == "geometric" and r2.accuracy > 0.85
    s3, r3 = dk.distill(teacher, s1, "digits", epochs=2, out=tmp_path / "s3", progress=False, **FAST)
    assert s3 is s1 and json.loads((tmp_path / "s3" / "model.json").read_text())["arch"] == "mlp-64x1-d0-0"


def test_a_teacher_no_better_than_its_baseline_is_said_plainly():
    baseline, _ = dk.train(net(), "digits", epochs=10, val_size=200, progress=False, **FAST)
    untrained = net(64, seed=3)
    with pytest.warns(UserWarning, match="is not better than the hard-label baseline"):
        _, report = dk.distill(untrained, net(), "digits", epochs=1, baseline=baseline, val_size=200,
                               progress=False, **FAST)
    check = report.teacher_check
    assert check["split"] == "validation" and check["size"] == 200 and not check["teacher_better"]
    assert check["teacher_errors"][0] > check["baseline_errors"][0]


def test_a_folder_of_images(tmp_path):
    from PIL import Image

    for split, xs, ys in (("train", DIGITS.x_train, DIGITS.y_train), ("test", DIGITS.x_test, DIGITS.y_test)):
        for i, (img, label) in enumerate(zip(xs, ys)):
            d = tmp_path / "digits" / split / f"class{int(label)}"
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray((img.numpy() * 255).round().astype(np.uint8)).save(d / f"{i}.png")
    source = f"folder:{tmp_path / 'digits'}"
    teacher, _ = dk.train("mlp-256x1-d0-0", source, epochs=10, progress=False, **FAST)
    student, report = dk.distill(teacher, net(), source, epochs=10, progress=False, **FAST)
    assert report.test["test_size"] == len(DIGITS.y_test) and report.accuracy > 0.85


def test_a_hugging_face_module_as_student_and_teacher():
    transformers = pytest.importorskip("transformers", reason="transformers is in the test extra: pip install "
                                       "-e '.[test]'")
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=64, num_labels=10)
    data = (DIGITS.x_train[:, None], DIGITS.y_train, DIGITS.x_test[:, None], DIGITS.y_test)
    torch.manual_seed(0)
    vit = transformers.ViTForImageClassification(cfg)
    student, report = dk.distill(_trained_mlp(data), vit, data, epochs=30,
                                 progress=False, **FAST)
    assert student is vit and report.accuracy > 0.5, report.accuracy  # a ModelOutput, read by its logits (chance: 0.1)
    # and the trained ViT as a teacher of a small net
    _, r2 = dk.distill(vit, net(), data, epochs=10, progress=False, **FAST)
    assert r2.accuracy > 0.5, r2.accuracy


def _trained_mlp(data) -> nn.Module:
    teacher, _ = dk.train(net(256), data, epochs=15, progress=False, **FAST)
    return teacher


def test_a_torchvision_module():
    tv = pytest.importorskip("torchvision", reason="torchvision does not import beside torch 2.13 here; "
                             "`pip install torch==2.14.1 torchvision==0.29.1` gives an environment where it does")
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(96) % 4
    model = tv.models.resnet18(num_classes=4)
    student, report = dk.distill(net_conv(), model, (x, y, x[:16], y[:16]), epochs=1, progress=False, **FAST)
    assert student is model and report.test["test_size"] == 16


def test_a_timm_module():
    timm = pytest.importorskip("timm", reason="timm needs torchvision, which does not import beside torch 2.13 here; "
                               "`pip install torch==2.14.1 torchvision==0.29.1 timm` gives an environment where it does")
    x = torch.randint(0, 256, (96, 3, 32, 32), dtype=torch.uint8)
    y = torch.arange(96) % 4
    model = timm.create_model("resnet10t", pretrained=False, num_classes=4)  # built from its config: no download
    student, report = dk.distill(model, net_conv(), (x, y, x[:16], y[:16]), epochs=1, progress=False, **FAST)
    assert report.test["test_size"] == 16  # timm's module as the teacher
    student, report = dk.distill(net_conv(), model, (x, y, x[:16], y[:16]), epochs=1, progress=False, **FAST)
    assert student is model and report.test["test_size"] == 16  # and as the student


def net_conv() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))


def test_bad_input_is_one_clear_error():
    with pytest.raises(dk.DKError, match="unknown training setting"):
        dk.train(net(), "digits", epochs=1, learning_rate=0.1)
    with pytest.raises(dk.DKError, match="does not take this data's inputs of shape"):
        dk.train(nn.Sequential(nn.Flatten(), nn.Linear(50, 10)), "digits", epochs=1, progress=False)
    with pytest.raises(dk.DKError, match="labels must be integers"):
        dk.train(net(), (DIGITS.x_train, DIGITS.y_train.float()), epochs=1, progress=False)
    with pytest.raises(dk.DKError, match="data must be a source string"):
        dk.train(net(), 42, epochs=1)
    with pytest.raises(dk.DKError, match="a student is a module or a registry name"):
        dk.distill(net(), 3, "digits")
    with pytest.raises(dk.DKError, match="a teacher is a module"):
        dk.distill([net(), "x"], net(), "digits")
    with pytest.raises(dk.DKError, match="unknown architecture"):
        dk.train("mlp-nope", "digits")
    with pytest.raises(dk.DKError, match="predicts 4 classes but the data has 10"):
        dk.distill(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), net(), "digits", progress=False)


def test_user_module_reads_logits_from_outputs():
    class Out:
        def __init__(self, logits):
            self.logits = logits

    class HFLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 10)

        def forward(self, x):
            return Out(self.lin(x.flatten(1)))

    m = UserModule(HFLike(), DIGITS.x_test)
    assert m.output_classes == 10 and m(DIGITS.x_test[:3]).shape == (3, 10)
    t = UserModule(nn.Sequential(nn.Flatten(), nn.Linear(48, 3)), torch.zeros(2, 4, 4, 3, dtype=torch.uint8))
    torch.testing.assert_close(t(torch.full((1, 4, 4, 3), 255, dtype=torch.uint8)),
                               t.module(torch.ones(1, 4, 4, 3)))  # bytes arrive as floats in [0, 1]
