"""Combining a generalist with specialists at inference (paper section 5.4), batched over examples.

For each example, the combined distribution ``q`` over all C classes minimises

    KL(p^g || q) + sum over active specialists m of KL(p^m || q^m)

where ``p^g`` is the generalist's distribution, ``p^m`` specialist m's over its special classes S_m plus
one dustbin class, and ``q^m`` is ``q`` restricted to S_m with the rest of its mass in the dustbin. A
specialist is active for an example when S_m meets the generalist's ``top_n`` most probable classes.

Solved exactly (to a tolerance) by the expectation-maximisation fixed point of this problem, which is
convex in ``q`` (each term is ``-sum_k p_k log (A q)_k`` with A linear and q on the simplex): with
``D_m = 1 - sum_{j in S_m} q_j`` (the dustbin's share of q) and W = 1 + the number of active specialists,

    q_i <- (p^g_i + sum_m [i in S_m] p^m_i + q_i sum_m [i not in S_m] p^m_dustbin / D_m) / W.

Every iterate stays on the simplex and the objective never rises (the EM argument); the fixed point is
the minimum. One iterate is two [N, C] x [C, M] matrix products for all examples at once; iterations stop
when no example's q moves more than ``tol`` (max-abs), and each batch can be accelerated (SQUAREM:
Varadhan & Roland 2008, steps along the EM path with a monotone fallback).
"""

from __future__ import annotations

from typing import Sequence

import torch

from darkknowledge.errors import DKError


def _check(generalist_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor],
           subsets: Sequence[Sequence[int]], top_n: int, atol: float) -> None:
    if generalist_probs.dim() != 2:
        raise DKError(f"generalist_probs must be [N, C], got shape {tuple(generalist_probs.shape)}")
    n, c = generalist_probs.shape
    if len(specialist_probs) != len(subsets):
        raise DKError(f"{len(specialist_probs)} specialist probability tensors for {len(subsets)} subsets")
    if not 1 <= top_n <= c:
        raise DKError(f"top_n must be in 1..{c}, got {top_n}")
    _check_rows("generalist_probs", generalist_probs, atol)
    for m, (p, s) in enumerate(zip(specialist_probs, subsets)):
        s = list(s)
        if not s:
            raise DKError(f"subset {m} is empty")
        bad = [k for k in s if not isinstance(k, int) or not 0 <= k < c]
        if bad:
            raise DKError(f"subset {m} has class indices outside 0..{c - 1}: {bad[:5]}")
        if len(set(s)) != len(s):
            raise DKError(f"subset {m} repeats class indices: {sorted(k for k in set(s) if s.count(k) > 1)[:5]}")
        if len(s) >= c:
            raise DKError(f"subset {m} covers all {c} classes: its dustbin would be empty")
        if p.dim() != 2 or tuple(p.shape) != (n, len(s) + 1):
            raise DKError(f"specialist_probs[{m}] must be [{n}, {len(s) + 1}] ({len(s)} special classes + dustbin), "
                          f"got {tuple(p.shape)}")
        _check_rows(f"specialist_probs[{m}]", p, atol)


def _check_rows(name: str, p: torch.Tensor, atol: float) -> None:
    if not torch.isfinite(p).all() or (p < 0).any():
        raise DKError(f"{name} has negative, NaN or infinite entries")
    sums = p.double().sum(-1)
    off = (sums - 1).abs()
    if len(off) and float(off.max()) > atol:
        i = int(off.argmax())
        raise DKError(f"{name}: rows must sum to 1 (row {i} sums to {float(sums[i]):.6g})")


def active_specialists(generalist_probs: torch.Tensor, subsets: Sequence[Sequence[int]], top_n: int = 1) -> torch.Tensor:
    """``[N, M]`` bool: specialist m is active for example n when S_m meets the generalist's top-n classes."""
    n, c = generalist_probs.shape
    member = membership(subsets, c, generalist_probs.device)  # [M, C]
    top = torch.zeros(n, c, device=generalist_probs.device)
    top.scatter_(1, generalist_probs.topk(top_n, dim=1).indices, 1.0)
    return (top @ member.T.float()) > 0


def membership(subsets: Sequence[Sequence[int]], num_classes: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``[M, C]`` bool: class i is special to specialist m."""
    member = torch.zeros(len(subsets), num_classes, dtype=torch.bool, device=device)
    for m, s in enumerate(subsets):
        member[m, list(s)] = True
    return member


def objective(q: torch.Tensor, generalist_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor],
              subsets: Sequence[Sequence[int]], active: torch.Tensor) -> torch.Tensor:
    """``[N]`` value of the section-5.4 objective at ``q`` (the KL terms, for checks and tests)."""
    eps = 1e-300
    q = q.double()

    def kl(p: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        p = p.double()
        return torch.where(p > 0, p * (p.clamp_min(eps).log() - r.clamp_min(eps).log()), torch.zeros_like(p)).sum(-1)

    total = kl(generalist_probs, q)
    for m, (p, s) in enumerate(zip(specialist_probs, subsets)):
        qs = q[:, list(s)]
        qm = torch.cat([qs, (1 - qs.sum(-1, keepdim=True)).clamp_min(0)], dim=1)
        total = total + torch.where(active[:, m], kl(p, qm), torch.zeros_like(total))
    return total


def combine(generalist_probs: torch.Tensor, specialist_probs: Sequence[torch.Tensor],
            subsets: Sequence[Sequence[int]], top_n: int = 1, *, tol: float = 1e-7, max_iter: int = 5000,
            batch_size: int = 2048, atol: float = 1e-3, accelerate: bool = True,
            return_iterations: bool = False) -> torch.Tensor | tuple[torch.Tensor, int]:
    """The distribution ``q [N, C]`` (rows sum to 1) minimising the section-5.4 objective per example.

    Args:
        generalist_probs: ``[N, C]`` probabilities (rows sum to 1 within ``atol``).
        specialist_probs: one ``[N, |S_m| + 1]`` tensor per specialist; the last column is its dustbin.
        subsets: ``S_m`` as class-index lists; subsets may overlap, and classes may belong to none.
        top_n: a specialist is active where ``S_m`` meets the generalist's ``top_n`` classes.
        tol: stop when no example's ``q`` moves more than this (max-abs) in an iteration.
        max_iter: at most this many iterations per batch of examples.
        batch_size: examples solved together (bounds memory: ``[B, C]`` and ``[B, M]`` float64 tensors).
        accelerate: SQUAREM steps (monotone: a step that raises the objective falls back to plain EM).
        return_iterations: also return the largest iteration count of any batch.

    Raises DKError on out-of-range or repeated class indices, shapes that disagree, or rows that do not
    sum to 1. Runs on ``generalist_probs``' device in float64; returns its dtype.
    """
    _check(generalist_probs, specialist_probs, subsets, top_n, atol)
    n, c = generalist_probs.shape
    device, dtype = generalist_probs.device, generalist_probs.dtype
    member = membership(subsets, c, device).double()  # [M, C]
    active = active_specialists(generalist_probs, subsets, top_n)  # [N, M]
    out = torch.empty(n, c, dtype=dtype, device=device)
    worst = 0
    for start in range(0, n, batch_size):
        sl = slice(start, min(start + batch_size, n))
        pg = generalist_probs[sl].double()
        pg = pg / pg.sum(-1, keepdim=True)
        act = active[sl].double()  # [B, M]
        # Specialists' special-class probabilities scattered onto all C classes, summed over active ones,
        # and each active specialist's dustbin probability: both fixed for the whole solve.
        fixed = pg.clone()
        dust = torch.zeros(sl.stop - sl.start, len(subsets), dtype=torch.float64, device=device)
        for m, (p, s) in enumerate(zip(specialist_probs, subsets)):
            pm = p[sl].to(device).double()
            pm = pm / pm.sum(-1, keepdim=True)
            fixed[:, list(s)] += act[:, m:m + 1] * pm[:, :-1]
            dust[:, m] = act[:, m] * pm[:, -1]
        weight = 1.0 + act.sum(1, keepdim=True)
        q, iters = _solve(pg.clone(), fixed, dust, member, weight, tol, max_iter, accelerate)
        worst = max(worst, iters)
        out[sl] = q.to(dtype)
    return (out, worst) if return_iterations else out


def _em(q: torch.Tensor, fixed: torch.Tensor, dust: torch.Tensor, member: torch.Tensor,
        weight: torch.Tensor) -> torch.Tensor:
    """One EM update of ``q [B, C]`` (see the module docstring)."""
    d = (1.0 - q @ member.T).clamp_min(1e-300)  # [B, M]: each specialist's dustbin share of q
    w = dust / d  # zero for inactive specialists
    outside = w.sum(1, keepdim=True) - w @ member  # sum over m of [i not in S_m] w_m
    return torch.addcmul(fixed, q, outside).div_(weight)  # stays on the simplex (up to rounding)


def _value(q, fixed, dust, member, weight) -> torch.Tensor:
    """The objective up to per-example constants: -sum_i fixed_i log q_i - sum_m dust_m log D_m."""
    logq = q.clamp_min(1e-300).log()
    d = (1.0 - q @ member.T).clamp_min(1e-300)
    return -(fixed * logq).sum(1) - (dust * d.log()).sum(1)


def _solve(q, fixed, dust, member, weight, tol, max_iter, accelerate) -> tuple[torch.Tensor, int]:
    """Iterate until converged; SQUAREM (scheme S3) per example where it lowers the objective."""
    it = 0
    while it < max_iter:
        q1 = _em(q, fixed, dust, member, weight)
        it += 1
        if not accelerate:
            change = (q1 - q).abs().amax()
            q = q1
            if change <= tol:
                break
            continue
        q2 = _em(q1, fixed, dust, member, weight)
        it += 1
        r, v = q1 - q, (q2 - q1) - (q1 - q)
        rn, vn = r.norm(dim=1, keepdim=True), v.norm(dim=1, keepdim=True)
        alpha = -(rn / vn.clamp_min(1e-300)).clamp_min(1.0)  # step length <= -1 (alpha = -1 is plain EM twice)
        alpha = torch.where(vn > 0, alpha, torch.full_like(alpha, -1.0))
        jump = q - 2 * alpha * r + alpha * alpha * v
        ok = (jump > 0).all(1, keepdim=True)
        jump = torch.where(ok, jump, q2).clamp_min(1e-300)
        jump = jump / jump.sum(1, keepdim=True)
        new = _em(jump, fixed, dust, member, weight)  # a stabilising EM step after the jump
        it += 1
        better = _value(new, fixed, dust, member, weight) <= _value(q2, fixed, dust, member, weight)
        new = torch.where(better[:, None], new, q2)
        change = (new - q).abs().amax()
        q = new
        if change <= tol * 0.1 and (_em(q, fixed, dust, member, weight) - q).abs().amax() <= tol:
            break
    return q, it
