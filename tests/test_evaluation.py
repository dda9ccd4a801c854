import torch

import pytest

from darkknowledge.evaluation import bias_vector, errors_from_logits, fit_bias_offset, teacher_check


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


def test_teacher_check_passes_a_better_teacher_and_warns_about_one_that_is_not():
    good = teacher_check([60, 62], [100, 98], 10_000, "validation")
    assert good["teacher_better"] and good["warning"] is None and good["split"] == "validation"
    tie = teacher_check([100], [100], 10_000, "test")  # no better is not better
    assert not tie["teacher_better"] and "not better than the hard-label baseline (100)" in tie["warning"]
    worse = teacher_check([1364, 1360, 1370], [1108, 1100, 1380], 10_000, "test", baseline="hard-label student")
    assert not worse["teacher_better"]
    assert "in 2 of 3 pairs" in worse["warning"] and "1364.67 errors of 10000 on the test split" in worse["warning"]
    with pytest.raises(ValueError):
        teacher_check([1, 2], [3], 10, "test")


def test_a_failed_teacher_check_is_marked_on_its_row_and_spelt_out_in_markdown():
    from darkknowledge.experiments.report import checks_markdown, note_checks, paired_check, rows_table, values_row

    rows = [values_row("teacher", "test_errors", 67, [1364.0, 1360.0], 2), values_row("student", "test_errors", 146,
                                                                                       [1108.0, 1100.0], 2)]
    check = paired_check("teacher", "hard-label student", "test", [1364, 1360], [1108, 1100], 10_000, "teacher",
                         "no split is held out of the teacher")
    assert paired_check("teacher", "student", "test", [], [], 0, "teacher") is None  # nothing measured yet
    note_checks(rows, [check])
    assert rows[0]["warning"] == "not better than the hard-label student on the test split" and "warning" not in rows[1]
    table = "\n".join(rows_table(rows))
    assert "(**not better than the hard-label student on the test split**)" in table
    text = "\n".join(checks_markdown([check]))
    assert "| teacher | hard-label student | test (10000 images) | 1364, 1360 | 1108, 1100 | NO |" in text
    assert "**Warning**: the teacher (1362 errors of 10000 on the test split)" in text
    assert "- no split is held out of the teacher" in text
