import pytest
import torch

from darkknowledge import ARCHITECTURES, MLP, DKError, build_model
from darkknowledge.models import apply_constraints

MLPS = [a for a in ARCHITECTURES if a.startswith("mlp-") and "{" not in a] + ["mlp-50x3-d10-30"]  # images: test_cifar


@pytest.mark.parametrize("arch", sorted(MLPS))
def test_every_architecture_builds_and_runs(arch):
    model = build_model(arch, 64, 10)
    out = model(torch.rand(5, 8, 8))
    assert out.shape == (5, 10)
    out.sum().backward()  # every parameter gets a gradient
    assert all(p.grad is not None for p in model.parameters())
    assert arch not in ARCHITECTURES or ARCHITECTURES[arch].description


@pytest.mark.parametrize("arch", sorted(MLPS))
def test_eval_mode_is_deterministic(arch):
    model = build_model(arch, 64, 10).eval()
    x = torch.rand(5, 64)
    torch.testing.assert_close(model(x), model(x))


def test_teacher_is_the_papers_regularised_net():
    teacher = build_model("mlp-1200x2", 784, 10)
    widths = [m.out_features for m in teacher.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [1200, 1200, 10]
    assert [m.p for m in teacher.modules() if isinstance(m, torch.nn.Dropout)] == [0.2, 0.5, 0.5]
    assert teacher.max_norm == 15.0
    student = build_model("mlp-800x2", 784, 10)
    assert not any(isinstance(m, torch.nn.Dropout) for m in student.modules()) and student.max_norm is None
    same = build_model("mlp-1200x2-d20-50", 784, 10)  # the pattern spells the teacher out
    assert str(same) == str(teacher) and same.max_norm == 15.0


def test_the_mlp_pattern_sets_width_depth_and_dropout():
    net = build_model("mlp-64x3-d5-25", 784, 10)
    assert [m.out_features for m in net.modules() if isinstance(m, torch.nn.Linear)] == [64, 64, 64, 10]
    assert [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout)] == [0.05, 0.25, 0.25, 0.25]
    plain = build_model("mlp-64x1-d0-0", 784, 10)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.modules())
    for bad in ("mlp-64x3-d100-0", "mlp-0x2-d0-0", "mlp-64x2-d05-0"):
        with pytest.raises(DKError, match="unknown architecture"):
            build_model(bad, 784, 10)


def test_max_norm_constraint_caps_each_units_incoming_weights():
    model = MLP(10, (20,), 3, max_norm=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50)
    small = model.net[-1].weight[0].clone() / 1e6
    with torch.no_grad():
        model.net[-1].weight[0] = small
    apply_constraints(model)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear):
            assert m.weight.norm(dim=1).max() <= 1.0 + 1e-5
    torch.testing.assert_close(model.net[-1].weight[0], small)  # already inside the ball: untouched


def test_unknown_architecture_is_named():
    with pytest.raises(DKError, match="unknown architecture 'resnet-9000'.*mlp-800x2"):
        build_model("resnet-9000", 64, 10)


def test_max_norm_equals_torch_renorm():
    model = MLP(30, (40,), 5, max_norm=2.0)
    with torch.no_grad():
        for lin in model.linears:
            lin.weight.mul_(torch.linspace(0.5, 8, lin.weight.shape[0])[:, None])  # some rows above the cap
    expected = [torch.renorm(lin.weight.detach(), 2, 0, 2.0) for lin in model.linears]
    apply_constraints(model)
    for lin, want in zip(model.linears, expected):
        torch.testing.assert_close(lin.weight.detach(), want)
