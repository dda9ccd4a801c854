"""Loss maths against independent references: torch.nn.functional.kl_div, NumPy, autograd/finite differences."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from darkknowledge import DKError, distillation_loss, ensemble_probs, logit_matching_loss, soften


@pytest.fixture(autouse=True, scope="module")
def float64():
    """Tight tolerances for the maths tests; restored so other modules keep float32."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def np_softmax(z, t):
    e = np.exp((z - z.max(-1, keepdims=True)) / t)
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 10, generator=g) * 3, torch.randn(6, 10, generator=g) * 3


@pytest.mark.parametrize("t", [0.5, 1.0, 2.5, 20.0])
def test_soften_matches_numpy(t):
    z = np.random.default_rng(0).normal(size=(4, 7)) * 5
    np.testing.assert_allclose(soften(torch.tensor(z), t).numpy(), np_softmax(z, t), rtol=1e-12)


@pytest.mark.parametrize("t", [0.0, -1.0, float("nan")])
def test_nonpositive_temperature_rejected(t, logits):
    z, v = logits
    with pytest.raises(DKError, match="temperature"):
        soften(z, t)
    with pytest.raises(DKError, match="temperature"):
        distillation_loss(z, soften(v, 1.0), t)


@pytest.mark.parametrize("t", [1.0, 4.0, 20.0])
def test_soft_term_is_t2_times_kl_div(t, logits):
    z, v = logits
    p = soften(v, t)
    reference = F.kl_div(F.log_softmax(z / t, -1), p, reduction="batchmean") * t**2
    torch.testing.assert_close(distillation_loss(z, p, t), reference)


def test_hard_term_is_cross_entropy_at_t1(logits):
    z, v = logits
    y = torch.tensor([0, 3, 9, 2, 2, 5])
    p = soften(v, 5.0)
    combined = distillation_loss(z, p, 5.0, y, soft_weight=0.7, hard_weight=0.2)
    expected = 0.7 * 25 * F.kl_div(F.log_softmax(z / 5, -1), p, reduction="batchmean") + 0.2 * F.cross_entropy(z, y)
    torch.testing.assert_close(combined, expected)


def test_unlabelled_examples_skip_hard_term(logits):
    z, v = logits
    y = torch.tensor([0, -1, 9, -1, 2, 5])
    p = soften(v, 2.0)
    got = distillation_loss(z, p, 2.0, y, soft_weight=0.0 + 1e-300, hard_weight=1.0)
    keep = y >= 0
    torch.testing.assert_close(got, F.cross_entropy(z[keep], y[keep]), atol=1e-12, rtol=0)
    all_unlabelled = torch.full_like(y, -1)
    assert distillation_loss(z, p, 2.0, all_unlabelled, hard_weight=1.0).isfinite()


@pytest.mark.parametrize("t", [1.0, 3.0, 20.0])
def test_soft_gradient_is_q_minus_p_over_t(t, logits):
    """Paper section 2: dC/dz_i = (q_i - p_i) / T for the soft term before the T^2 factor (batch mean)."""
    z, v = logits
    z = z.clone().requires_grad_()
    p = soften(v, t)
    (distillation_loss(z, p, t) / t**2).backward()
    q = soften(z.detach(), t)
    torch.testing.assert_close(z.grad, (q - p) / t / len(z))


def test_gradient_matches_finite_differences(logits):
    z, v = logits
    p, t = soften(v, 3.0), 3.0
    z = z.clone().requires_grad_()
    distillation_loss(z, p, t).backward()
    eps, fd = 1e-6, torch.zeros_like(z)
    for idx in np.ndindex(*z.shape):
        zp, zm = z.detach().clone(), z.detach().clone()
        zp[idx] += eps
        zm[idx] -= eps
        fd[idx] = (distillation_loss(zp, p, t) - distillation_loss(zm, p, t)) / (2 * eps)
    torch.testing.assert_close(z.grad, fd, atol=1e-7, rtol=1e-6)


def test_logit_matching_loss_matches_numpy(logits):
    z, v = logits
    expected = 0.5 * ((z.numpy() - v.numpy()) ** 2).sum(-1).mean()
    assert logit_matching_loss(z, v).item() == pytest.approx(expected, rel=1e-12)


def test_high_temperature_limit_is_logit_matching(logits):
    """Paper section 2.1: zero-mean logits, large T: T^2-scaled soft gradient -> (z - v) / N."""
    z, v = logits
    z, v = z - z.mean(-1, keepdim=True), v - v.mean(-1, keepdim=True)
    n_classes = z.shape[-1]
    grads = []
    for t in (10.0, 100.0, 1000.0):
        zz = z.clone().requires_grad_()
        distillation_loss(zz, soften(v, t), t).backward()
        grads.append(zz.grad)
    zz = z.clone().requires_grad_()
    (logit_matching_loss(zz, v) / n_classes).backward()
    errors = [(g - zz.grad).abs().max().item() for g in grads]
    assert errors[1] < errors[0] / 5 and errors[2] < errors[1] / 5  # error shrinks like 1/T
    assert (grads[-1] - zz.grad).norm() / zz.grad.norm() < 5e-3


def test_ensemble_means_match_numpy():
    m = np.random.default_rng(1).normal(size=(3, 5, 4)) * 4
    t = 2.0
    probs = np_softmax(m, t)
    arith = ensemble_probs(torch.tensor(m), t, "arithmetic").numpy()
    np.testing.assert_allclose(arith, probs.mean(0), rtol=1e-12)
    geo = np.exp(np.log(probs).mean(0))
    geo /= geo.sum(-1, keepdims=True)
    np.testing.assert_allclose(ensemble_probs(torch.tensor(m), t, "geometric").numpy(), geo, rtol=1e-10)
    with pytest.raises(DKError, match="unknown ensemble method"):
        ensemble_probs(torch.tensor(m), t, "median")


def test_single_member_ensemble_is_soften(logits):
    z, _ = logits
    for method in ("arithmetic", "geometric"):
        torch.testing.assert_close(ensemble_probs(z[None], 3.0, method), soften(z, 3.0))


def test_shape_mismatch_names_the_problem(logits):
    z, v = logits
    with pytest.raises(DKError, match="class-count mismatch"):
        distillation_loss(z, soften(v[:, :8], 1.0), 1.0)


finite = st.floats(-30, 30, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=2, max_size=12), st.lists(finite, min_size=2, max_size=12),
       st.floats(0.1, 50), st.floats(-100, 100))
def test_properties(a, b, t, shift):
    n = min(len(a), len(b))
    z, v = torch.tensor([a[:n]]), torch.tensor([b[:n]])
    q = soften(z, t)
    assert q.sum().item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(soften(z + shift, t), q)  # shift invariance
    loss = distillation_loss(z, soften(v, t), t)
    assert loss.item() >= -1e-12  # KL is non-negative
    assert distillation_loss(z, q, t).item() == pytest.approx(0.0, abs=1e-9)  # zero at the teacher
