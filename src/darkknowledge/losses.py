"""Distillation losses as pure functions of tensors (Hinton, Vinyals & Dean 2015, section 2).

Shapes: ``logits`` and ``probs`` are ``[batch, classes]``; ``labels`` is ``[batch]`` (int64,
``-1`` marks an unlabelled example); ensemble logits are ``[members, batch, classes]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from darkknowledge.errors import DKError

COMBINE_METHODS = ("arithmetic", "geometric")
UNLABELLED = -1  # label value of transfer-set examples without a true label


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:  # also rejects NaN
        raise DKError(f"temperature must be > 0, got {temperature}")


def soften(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Softmax at temperature T over the last dim: ``q_i = exp(z_i/T) / sum_j exp(z_j/T)`` (paper eq. 1)."""
    _check_temperature(temperature)
    return torch.softmax(logits / temperature, dim=-1)


def distillation_loss(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor,
    temperature: float,
    labels: torch.Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
) -> torch.Tensor:
    """Weighted sum of the soft and hard objectives of paper section 2.

        loss = soft_weight * T^2 * mean_b KL(p_b || softmax(z_b / T))
             + hard_weight * mean_b CE(z_b, y_b)            (at T = 1)

    The T^2 factor undoes the 1/T^2 scaling of the soft term's gradients, so the relative weight of
    the two terms does not change with T. Before it, d(mean KL)/dz_i = (q_i - p_i) / (T * batch).
    KL rather than cross-entropy: they differ by the teacher's entropy, a constant, so gradients are
    identical and a perfect student scores 0. Unlabelled examples (label -1) are left out of the hard
    term.

    Args:
        student_logits: ``[B, C]`` raw student outputs.
        teacher_probs: ``[B, C]`` teacher soft targets at ``temperature`` (rows sum to 1).
        temperature: T > 0, shared by teacher and student.
        labels: ``[B]`` true labels, required when ``hard_weight > 0``.
        soft_weight: weight of the soft term.
        hard_weight: weight of the hard-label term.
    """
    _check_temperature(temperature)
    if student_logits.shape != teacher_probs.shape:
        raise DKError(
            f"student logits {tuple(student_logits.shape)} and teacher targets "
            f"{tuple(teacher_probs.shape)} differ in shape (class-count mismatch?)"
        )
    log_q = F.log_softmax(student_logits / temperature, dim=-1)
    # KL(p || q) = sum_i p_i (log p_i - log q_i); xlogy makes 0 * log 0 = 0 for one-hot-like targets.
    kl = (torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(-1).mean()
    loss = soft_weight * temperature**2 * kl
    if hard_weight:
        if labels is None:
            raise DKError("hard_weight > 0 needs labels")
        if (labels != UNLABELLED).any():
            loss = loss + hard_weight * F.cross_entropy(student_logits, labels, ignore_index=UNLABELLED)
    return loss


def distillation_loss_and_grad(
    student_logits: torch.Tensor,
    teacher_probs: torch.Tensor | None,
    temperature: float,
    labels: torch.Tensor | None = None,
    soft_weight: float = 1.0,
    hard_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``distillation_loss`` and its gradient with respect to the logits, in closed form.

        d loss / dz_i = soft_weight * T * (q_i - p_i) / B  +  hard_weight * (softmax(z)_i - [i = y]) / B_labelled

    with ``q = softmax(z / T)``: the paper's per-logit gradient ``(q_i - p_i) / T`` (section 2) times
    the T^2 factor, averaged over the batch. The fused training step uses this instead of autograd
    (no graph for the [B, C] head); ``teacher_probs`` may be None when ``soft_weight`` is 0 (hard labels).

    Returns:
        ``(loss, grad)``: the 0-dim loss (as ``distillation_loss``) and ``grad [B, C]``.
    """
    _check_temperature(temperature)
    b = student_logits.shape[0]
    loss, grad = student_logits.new_zeros(()), None
    if soft_weight:
        if teacher_probs is None or student_logits.shape != teacher_probs.shape:
            raise DKError(f"student logits {tuple(student_logits.shape)} and teacher targets "
                          f"{None if teacher_probs is None else tuple(teacher_probs.shape)} differ in shape")
        log_q = F.log_softmax(student_logits / temperature, dim=-1)
        kl = (torch.special.xlogy(teacher_probs, teacher_probs) - teacher_probs * log_q).sum(-1).mean()
        loss = soft_weight * temperature**2 * kl
        grad = log_q.exp_().sub_(teacher_probs).mul_(soft_weight * temperature / b)
    if hard_weight:
        if labels is None:
            raise DKError("hard_weight > 0 needs labels")
        # The mean runs over labelled examples only; with none, the term is 0.
        weight = (labels != UNLABELLED).to(student_logits.dtype)
        weight *= hard_weight / weight.sum().clamp(min=1)
        y = labels.clamp(min=0)[:, None]
        log_p = F.log_softmax(student_logits, dim=-1)
        loss = loss - (log_p.gather(1, y).squeeze(1) * weight).sum()
        g = log_p.exp_().scatter_add_(1, y, torch.full_like(weight[:, None], -1.0)).mul_(weight[:, None])
        grad = g if grad is None else grad.add_(g)
    return loss, grad if grad is not None else torch.zeros_like(student_logits)


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Caruana/Ba logit matching: batch-mean of ``1/2 * ||z - v||^2`` (paper section 2.1).

    Distillation tends to this (times 1/N) in the high-temperature limit for zero-mean logits.
    """
    if student_logits.shape != teacher_logits.shape:
        raise DKError(
            f"student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape"
        )
    return 0.5 * (student_logits - teacher_logits).pow(2).sum(-1).mean()


def logit_matching_loss_and_grad(student_logits: torch.Tensor,
                                  teacher_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``logit_matching_loss`` and its gradient ``(z - v) / B`` (paper section 2.1)."""
    loss = logit_matching_loss(student_logits, teacher_logits)
    return loss, (student_logits - teacher_logits) / student_logits.shape[0]


def ensemble_probs(member_logits: torch.Tensor, temperature: float, method: str = "arithmetic") -> torch.Tensor:
    """Soft targets of an ensemble (paper section 2): the mean of the members' softened distributions.

    Args:
        member_logits: ``[M, B, C]`` logits of M members.
        temperature: T > 0 applied to every member.
        method: ``"arithmetic"``, mean of the probabilities, or ``"geometric"``, the normalised
            geometric mean ``softmax(mean_m log softmax(z_m / T))``.

    Returns:
        ``[B, C]`` probabilities.
    """
    _check_temperature(temperature)
    if member_logits.dim() != 3:
        raise DKError(f"member_logits must be [members, batch, classes], got shape {tuple(member_logits.shape)}")
    if method == "arithmetic":
        return soften(member_logits, temperature).mean(0)
    if method == "geometric":
        return torch.softmax(F.log_softmax(member_logits / temperature, dim=-1).mean(0), dim=-1)
    raise DKError(f"unknown ensemble method {method!r}; allowed: {', '.join(COMBINE_METHODS)}")
