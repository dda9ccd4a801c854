import torch

from darkknowledge.evaluation import bias_vector, errors_from_logits, fit_bias_offset


def test_fit_bias_offset_recovers_a_known_shift():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (2000,), generator=g)
    logits = torch.randn(2000, 10, generator=g) + 6 * torch.nn.functional.one_hot(y, 10)
    logits[:, 3] -= 5.0  # a student that under-predicts 3s
    before = errors_from_logits(logits, y, 10)
    offset, errors = fit_bias_offset(logits, y, [3])
    assert 3.0 <= offset <= 7.0 and errors < before["errors"] / 3
    fixed = errors_from_logits(logits + bias_vector({3: offset}, 10), y, 10)
    assert fixed["errors"] == errors and fixed["per_class_errors"][3] < before["per_class_errors"][3]


def test_fit_bias_offset_moves_several_classes_together_and_prefers_zero():
    y = torch.tensor([0, 1, 2])
    logits = torch.eye(3) * 5
    assert fit_bias_offset(logits, y, [1, 2]) == (0.0, 0)  # nothing to fix: smallest offset wins
    logits[:, 1:] += 10  # 1s and 2s over-predicted
    offset, errors = fit_bias_offset(logits, y, [1, 2])
    assert errors == 0 and -15 < offset <= -5
