"""The fused MLP step against autograd, and its dropout masks against their definition."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from darkknowledge.config import DistillConfig, TrainConfig
from darkknowledge.data import load_digits
from darkknowledge.fused import DropoutMask, FusedMLPStep
from darkknowledge.losses import UNLABELLED, distillation_loss, distillation_loss_and_grad
from darkknowledge.models import MLP
from darkknowledge.training import HardLabels, MatchLogits, SoftTargets, fit, make_sgd, new_model

CPU = torch.device("cpu")


def autograd_grad(loss_fn, z):
    z = z.detach().clone().requires_grad_()
    loss = loss_fn(z)
    (g,) = torch.autograd.grad(loss, z)
    return loss.detach(), g


@pytest.mark.parametrize("case", ["hard", "soft", "soft+hard", "some unlabelled", "all unlabelled"])
def test_closed_form_gradient_equals_autograd(case):
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 10, generator=g, dtype=torch.float64) * 4
    p = torch.softmax(torch.randn(16, 10, generator=g, dtype=torch.float64) * 3, -1)
    y = torch.randint(0, 10, (16,), generator=g)
    if case == "some unlabelled":
        y[::3] = UNLABELLED
    if case == "all unlabelled":
        y[:] = UNLABELLED
    sw, hw = {"hard": (0.0, 1.0), "soft": (1.0, 0.0)}.get(case, (0.7, 0.3))
    loss, grad = distillation_loss_and_grad(z, p if sw else None, 8.0, y, soft_weight=sw, hard_weight=hw)
    ref_loss, ref_grad = autograd_grad(
        lambda zz: distillation_loss(zz, p, 8.0, y, soft_weight=sw, hard_weight=hw) if sw else
        F.cross_entropy(zz, y, ignore_index=UNLABELLED) * hw, z)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def test_soft_gradient_is_the_papers_formula():
    """Paper section 2: d C / d z_i = (q_i - p_i) / T per example; times T^2, over the batch mean."""
    g = torch.Generator().manual_seed(1)
    z, v = (torch.randn(5, 10, generator=g, dtype=torch.float64) * 3 for _ in range(2))
    t = 20.0
    p, q = torch.softmax(v / t, -1), torch.softmax(z / t, -1)
    _, grad = distillation_loss_and_grad(z, p, t)
    torch.testing.assert_close(grad, t**2 * (q - p) / t / 5)


@pytest.mark.parametrize("objective", ["hard", "soft", "match"])
def test_objectives_loss_and_grad_equal_autograd_of_their_loss(objective):
    g = torch.Generator().manual_seed(2)
    n = 12
    labels = torch.randint(0, 10, (n,), generator=g)
    obj = {"hard": HardLabels(labels),
           "soft": SoftTargets(torch.softmax(torch.randn(n, 10, generator=g), -1), labels, DistillConfig(20.0, 1.0, 0.1)),
           "match": MatchLogits(torch.randn(n, 10, generator=g) * 5)}[objective]
    idx = torch.tensor([3, 1, 7, 7, 0])
    z = torch.randn(5, 10, generator=g) * 3
    loss, grad = obj.loss_and_grad(z, idx)
    ref_loss, ref_grad = autograd_grad(lambda zz: obj(zz, idx), z)
    torch.testing.assert_close(loss, ref_loss)
    torch.testing.assert_close(grad, ref_grad)


def reference_grads(model: MLP, x, masks, loss_fn, dtype=torch.float32):
    """Autograd through the same net with the given dropout masks (one per linear layer, None: no dropout),
    under PyTorch's own bf16 autocast when ``dtype`` is bf16."""
    params = dict(model.named_parameters())
    ref = {k: v.detach().clone().requires_grad_() for k, v in params.items()}
    h = x.reshape(len(x), -1)
    names = [n.rsplit(".", 1)[0] for n in params if n.endswith("weight")]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        for i, name in enumerate(names):
            if masks[i] is not None:
                h = h * masks[i].to(h.dtype)
            h = F.linear(h, ref[f"{name}.weight"], ref[f"{name}.bias"])
            if i < len(names) - 1:
                h = torch.relu(h)
        loss = loss_fn(h.float())
    loss.backward()
    return {k: v.grad for k, v in ref.items()}


# fp32: the same arithmetic as autograd up to summation order. bf16: the same as PyTorch's autocast
# (against an fp32 reference both are ~10% off in this 20-example net: bf16 flips ReLU gates near 0).
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_fused_step_gradients_equal_autograd_with_the_same_masks(dtype, tol, monkeypatch):
    torch.manual_seed(0)
    model = MLP(64, (48, 32), 10, input_dropout=0.2, hidden_dropout=0.5, max_norm=15.0)
    x = torch.rand(20, 8, 8)
    y = torch.randint(0, 10, (20,))
    masks = []
    real_call = DropoutMask.__call__

    def recording(self, shape, generator, device):
        m = real_call(self, shape, generator, device)
        masks.append(m.float())
        return m

    monkeypatch.setattr(DropoutMask, "__call__", recording)
    opt = make_sgd(model.parameters(), TrainConfig(lr=1.0), CPU)
    for group in opt.param_groups:
        group["lr"] = 0.0  # leave the weights as they are: compare gradients only
    step = FusedMLPStep(model, opt, dtype)
    obj = HardLabels(y)
    idx = torch.arange(20)
    loss = step(x.to(dtype), obj, idx, torch.Generator().manual_seed(0))
    assert len(masks) == 3 and all(set(m.unique().tolist()) <= {0.0, DropoutMask(p, dtype).scale}
                                   for m, p in zip(masks, (0.2, 0.5, 0.5)))
    xr = x.to(dtype).float()  # the fused step sees the inputs rounded to its dtype
    ref = reference_grads(model, xr, masks, lambda z: F.cross_entropy(z, y), dtype)
    for name, p in model.named_parameters():
        err = (p.grad - ref[name]).norm() / ref[name].norm()
        assert err < tol, (name, float(err))
    assert torch.isfinite(loss)


def test_fused_step_subtracts_the_input_shift(monkeypatch):
    torch.manual_seed(0)
    model = MLP(64, (48, 32), 10)
    model.input_shift.fill_(0.5)
    x, y = torch.rand(20, 8, 8), torch.randint(0, 10, (20,))
    opt = make_sgd(model.parameters(), TrainConfig(lr=1.0), CPU)
    for group in opt.param_groups:
        group["lr"] = 0.0
    step = FusedMLPStep(model, opt, torch.float32)
    obj = HardLabels(y)
    step(x, obj, torch.arange(20), torch.Generator().manual_seed(0))
    fused = {k: v.grad.clone() for k, v in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()  # forward subtracts the shift too
    for name, p in model.named_parameters():
        assert torch.allclose(fused[name], p.grad, rtol=1e-4, atol=1e-6), name
    model.zero_grad()
    model.input_shift.zero_()
    F.cross_entropy(model(x), y).backward()
    assert not torch.allclose(fused["net.1.weight"], model.net[1].weight.grad, rtol=1e-2)  # the shift mattered


@pytest.mark.parametrize("p", [0.5, 0.2, 0.1])
def test_dropout_mask_keeps_units_at_the_stated_rate(p):
    mask = DropoutMask(p, torch.bfloat16)
    m = mask((400, 500), torch.Generator().manual_seed(0), CPU).float()
    assert set(m.unique().tolist()) == {0.0, mask.scale}
    dropped = (m == 0).float().mean().item()
    sd = (mask.p * (1 - mask.p) / m.numel()) ** 0.5
    assert abs(dropped - mask.p) < 5 * sd and abs(mask.p - p) <= 1 / 512
    assert abs(m.mean().item() - 1) < 0.01  # kept units are scaled so the expectation is unchanged
    again = mask((400, 500), torch.Generator().manual_seed(0), CPU)
    other = mask((400, 500), torch.Generator().manual_seed(1), CPU)
    assert torch.equal(again.float(), m) and not torch.equal(other.float(), m)
    cols = (m == 0).float().mean(0)  # no unit is favoured: per-unit drop rates spread as binomials
    assert (cols - mask.p).abs().max() < 6 * (mask.p * (1 - mask.p) / 400) ** 0.5


def test_fused_and_autograd_paths_train_alike_on_digits():
    data = load_digits()
    cfg = TrainConfig(arch="mlp-1200x2", epochs=15, batch_size=64, lr=0.05, jitter=1, precision="fp32")
    errors = {}
    for fused in (True, False):
        c = replace(cfg, fused=fused)
        model = new_model(c, 64, 10)
        hist = fit(model, data.x_train, HardLabels(data.y_train), c, x_test=data.x_test, y_test=data.y_test,
                   progress=False)
        errors[fused] = hist[-1]["test_errors"]
    # Of 899; chance ~810. Seed 0 gave 115 (fused) and 108 (autograd): different dropout streams.
    assert errors[True] < 150 and errors[False] < 150
    assert abs(errors[True] - errors[False]) <= 30


def test_bf16_fused_training_keeps_fp32_master_weights():
    data = load_digits()
    cfg = TrainConfig(arch="mlp-800x2", epochs=10, batch_size=64, lr=0.05, precision="bf16")
    model = new_model(cfg, 64, 10)
    hist = fit(model, data.x_train, HardLabels(data.y_train), cfg, x_test=data.x_test, y_test=data.y_test,
               progress=False)
    assert hist[-1]["test_errors"] < 120 and all(p.dtype == torch.float32 for p in model.parameters())
