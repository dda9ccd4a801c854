import pytest
import torch

from darkknowledge import DKError, Teacher, build_model, ensemble_probs, soften


@pytest.fixture
def members():
    torch.manual_seed(0)
    return [build_model("mlp-30x2", 64, 10) for _ in range(3)]


def test_single_teacher_soft_targets_are_softened_eval_logits(members):
    x = torch.rand(40, 8, 8)
    t = Teacher(members[:1])
    torch.testing.assert_close(t.soft_targets(x, 4.0), soften(members[0].eval()(x), 4.0))
    assert t.num_classes == 10


@pytest.mark.parametrize("combine", ["arithmetic", "geometric"])
def test_ensemble_soft_targets(members, combine):
    x = torch.rand(40, 8, 8)
    logits = torch.stack([m.eval()(x) for m in members])
    got = Teacher(members, combine).soft_targets(x, 3.0)
    torch.testing.assert_close(got, ensemble_probs(logits, 3.0, combine))


def test_cache_hits_and_never_serves_stale_targets(members, tmp_path):
    x = torch.rand(40, 8, 8)
    t = Teacher(members[:2], cache_dir=tmp_path)
    a = t.soft_targets(x, 2.0)
    assert (t.cache.misses, t.cache.hits) == (1, 0)
    torch.testing.assert_close(t.soft_targets(x, 2.0), a)
    assert t.cache.hits == 1  # same teacher, same data: served from the cache
    b = t.soft_targets(x, 20.0)  # another temperature: derived from cached logits, not stale
    assert t.cache.misses == 1 and not torch.allclose(a, b)
    torch.testing.assert_close(b, ensemble_probs(torch.stack([m.eval()(x) for m in members[:2]]), 20.0))
    x2 = x.clone()
    x2[0, 0, 0] += 0.5  # changed data
    t.soft_targets(x2, 2.0)
    assert t.cache.misses == 2
    with torch.no_grad():  # changed teacher weights
        members[0].net[-1].bias[0] += 1.0
    c = t.soft_targets(x, 2.0)
    assert t.cache.misses == 3 and not torch.allclose(a, c)
    assert t.member_logits(x, view="jitter-1").shape == (2, 40, 10) and t.cache.misses == 4  # views cached apart
    # A fresh teacher object with the same weights reads the disk cache.
    fresh = Teacher(members[:2], cache_dir=tmp_path)
    torch.testing.assert_close(fresh.soft_targets(x, 2.0), c)
    assert (fresh.cache.hits, fresh.cache.misses) == (1, 0)


def test_nan_teacher_outputs_rejected(members):
    with torch.no_grad():
        members[0].net[1].weight[0, 0] = float("nan")
    with pytest.raises(DKError, match="NaN or inf"):
        Teacher(members[:1]).soft_targets(torch.rand(10, 8, 8), 2.0)


def test_bad_teacher_arguments(members):
    with pytest.raises(DKError, match="at least one"):
        Teacher([])
    with pytest.raises(DKError, match="unknown combine"):
        Teacher(members, combine="harmonic")
