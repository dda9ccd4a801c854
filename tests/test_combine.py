"""``specialists.combine`` (paper section 5.4) against an independent optimiser (SciPy), and its errors."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from darkknowledge.errors import DKError
from darkknowledge.specialists import active_specialists, combine


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    m = p > 0
    return float((p[m] * (np.log(p[m]) - np.log(np.maximum(q[m], 1e-300)))).sum())


def _objective(q: np.ndarray, pg: np.ndarray, ps: list[np.ndarray], subsets, active: np.ndarray) -> float:
    """The section-5.4 objective for one example, written out independently of the library."""
    total = _kl(pg, q)
    for m, (p, s) in enumerate(zip(ps, subsets)):
        if active[m]:
            qs = q[s]
            total += _kl(p, np.append(qs, max(1.0 - qs.sum(), 0.0)))
    return total


def _scipy_optimum(pg, ps, subsets, active) -> np.ndarray:
    """Minimise over q = softmax(z) with L-BFGS and the gradient worked out by hand."""
    c = len(pg)
    outside = [np.setdiff1d(np.arange(c), s) for s in subsets]

    def f(z):
        q = np.exp(z - z.max())
        q /= q.sum()
        grad_q = -pg / q
        for m, (p, s) in enumerate(zip(ps, subsets)):
            if active[m]:
                grad_q[s] -= p[:-1] / q[s]
                grad_q[outside[m]] -= p[-1] / q[outside[m]].sum()
        return _objective(q, pg, ps, subsets, active), q * (grad_q - q @ grad_q)

    res = minimize(f, np.log(pg), jac=True, method="L-BFGS-B",
                   options={"ftol": 1e-16, "gtol": 1e-13, "maxiter": 10000, "maxcor": 30})
    q = np.exp(res.x - res.x.max())
    return q / q.sum()


def _case(seed: int, n: int = 6, c: int = 12, sharp: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    # Class 0 in two specialists, classes 10 and 11 in none, one subset of one class.
    subsets = [[0, 1, 2, 3], [0, 4, 5], [6, 7, 8], [9]]
    pg = torch.softmax(sharp * torch.randn(n, c, generator=g, dtype=torch.float64), 1)
    ps = [torch.softmax(sharp * torch.randn(n, len(s) + 1, generator=g, dtype=torch.float64), 1) for s in subsets]
    return pg, ps, subsets


@pytest.mark.parametrize("top_n", [1, 3, 12])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combine_reaches_the_scipy_optimum(seed, top_n):
    pg, ps, subsets = _case(seed)
    q = combine(pg, ps, subsets, top_n=top_n)
    assert q.shape == pg.shape and q.dtype == torch.float64
    torch.testing.assert_close(q.sum(1), torch.ones(len(q), dtype=torch.float64), atol=1e-12, rtol=0)
    active = active_specialists(pg, subsets, top_n).numpy()
    for i in range(len(pg)):
        args = (pg[i].numpy(), [p[i].numpy() for p in ps], subsets, active[i])
        ref = _scipy_optimum(*args)
        ours, theirs = _objective(q[i].numpy(), *args), _objective(ref, *args)
        assert ours <= theirs + 1e-9, (i, ours, theirs)
        np.testing.assert_allclose(q[i].numpy(), ref, atol=1e-6)


def test_all_specialists_active_changes_the_answer_and_inactive_ones_do_not_count():
    pg, ps, subsets = _case(3)
    # top_n = C: every specialist active; the answer moves away from the generalist.
    q_all = combine(pg, ps, subsets, top_n=12)
    assert (q_all - pg).abs().max() > 1e-2
    # A specialist that is never active (its class is never in the top 1) cannot change the result.
    active = active_specialists(pg, subsets, 1)
    never = [m for m in range(len(subsets)) if not active[:, m].any()]
    q1 = combine(pg, ps, subsets, top_n=1)
    for m in never:
        ps2 = list(ps)
        ps2[m] = torch.roll(ps[m], 1, dims=1)
        torch.testing.assert_close(combine(pg, ps2, subsets, top_n=1), q1)


def test_no_active_specialist_returns_the_generalist():
    pg, ps, subsets = _case(4)
    subsets = [[10], [11]]
    ps = [torch.tensor([[0.9, 0.1]] * len(pg), dtype=torch.float64)] * 2
    keep = pg[:, 10:].max(1).values < pg.max(1).values  # rows where neither class is the top one
    q = combine(pg, ps, subsets, top_n=1)
    torch.testing.assert_close(q[keep], pg[keep])


def test_a_specialist_that_agrees_with_the_generalist_leaves_it_alone():
    pg, _, _ = _case(5)
    subsets = [[0, 1, 2], [1, 3]]
    ps = [torch.cat([pg[:, s], 1 - pg[:, s].sum(1, keepdim=True)], 1) for s in subsets]
    torch.testing.assert_close(combine(pg, ps, subsets, top_n=12), pg, atol=1e-7, rtol=0)


def test_batches_and_float32_inputs_agree_with_one_float64_solve():
    pg, ps, subsets = _case(6, n=50)
    ref = combine(pg, ps, subsets, top_n=2)
    q = combine(pg.float(), [p.float() for p in ps], subsets, top_n=2, batch_size=7)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.double(), ref, atol=1e-5, rtol=0)


@pytest.mark.parametrize("change, message", [
    (lambda pg, ps, s: (pg, ps, [[0, 1, 12], *s[1:]]), "outside 0..11"),
    (lambda pg, ps, s: (pg, ps, [[-1, 1, 2], *s[1:]]), "outside 0..11"),
    (lambda pg, ps, s: (pg, ps, [[0, 1, 1, 3], *s[1:]]), "repeats class indices"),
    (lambda pg, ps, s: (pg, ps, [[], *s[1:]]), "is empty"),
    (lambda pg, ps, s: (pg, ps[:-1], s), "3 specialist probability tensors for 4 subsets"),
    (lambda pg, ps, s: (pg, [ps[0][:, :-1], *ps[1:]], s), r"specialist_probs\[0\] must be \[6, 5\]"),
    (lambda pg, ps, s: (pg, [ps[0][:3], *ps[1:]], s), r"specialist_probs\[0\] must be \[6, 5\]"),
    (lambda pg, ps, s: (pg * 1.1, ps, s), "generalist_probs: rows must sum to 1"),
    (lambda pg, ps, s: (pg, [ps[0] * 0.5, *ps[1:]], s), r"specialist_probs\[0\]: rows must sum to 1"),
    (lambda pg, ps, s: (pg[0], ps, s), r"must be \[N, C\]"),
    (lambda pg, ps, s: (pg, ps, [list(range(12)), *s[1:]]), "dustbin would be empty"),
])
def test_bad_input_is_one_clear_error(change, message):
    pg, ps, subsets = _case(7)
    with pytest.raises(DKError, match=message):
        combine(*change(pg, ps, subsets))
    with pytest.raises(DKError, match="top_n must be in 1..12"):
        combine(pg, ps, subsets, top_n=0)
