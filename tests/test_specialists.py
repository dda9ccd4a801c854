"""Specialists (paper section 5): clustering, specialist models and batches, training through executors
(Ray: a worker killed mid-specialist), inference, and the `dk specialists` commands."""

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from conftest import dk
from darkknowledge import DKError
from darkknowledge import specialists as sp
from darkknowledge.checkpoint import load_checkpoint, read_meta
from darkknowledge.config import SpecialistConfig, TrainConfig
from darkknowledge.executors import run_tasks
from darkknowledge.models import build_model
from darkknowledge.evaluation import predict_logits


def planted_covariance(groups, c=30, seed=0):
    """A covariance whose classes are confused within ``groups`` (plus noise)."""
    rng = np.random.default_rng(seed)
    cov = 0.02 * rng.standard_normal((c, c))
    cov = cov @ cov.T / c
    for g in groups:
        for a in g:
            for b in g:
                cov[a, b] += 0.5 if a != b else 1.0
    return cov + np.eye(c)


def test_cluster_classes_finds_planted_groups_with_bounded_overlapping_subsets(monkeypatch):
    import sklearn.cluster

    calls = []
    real = sklearn.cluster.MiniBatchKMeans

    class Spy(real):
        def fit_predict(self, *a, **k):
            calls.append(self.n_clusters)
            return super().fit_predict(*a, **k)

    monkeypatch.setattr(sklearn.cluster, "MiniBatchKMeans", Spy)
    groups = [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9, 10, 11], [12, 13]]
    cov = planted_covariance(groups)
    subsets = sp.cluster_classes(cov, 4, max_size=6, seed=0)
    assert calls, "clustering must go through scikit-learn's MiniBatchKMeans"
    assert sorted(map(sorted, subsets)) == sorted(groups)  # the most confused groups come first
    more = sp.cluster_classes(cov, 12, max_size=6, seed=0)
    assert all(2 <= len(s) <= 6 for s in more) and len({tuple(s) for s in more}) == 12
    cover = sp.coverage(more, 30)
    assert cover.min() == 0 and cover.max() >= 2  # classes covered by none and by several: table 4's spread


def test_cluster_classes_refuses_what_it_cannot_do():
    cov = planted_covariance([[0, 1]], c=10)
    with pytest.raises(DKError, match="max_size"):
        sp.cluster_classes(cov, 2, max_size=10)
    with pytest.raises(DKError, match="fewer than the 500 specialists"):
        sp.cluster_classes(cov, 500, max_size=4)


def test_specialist_starts_from_the_generalist():
    torch.manual_seed(0)
    gen = build_model("resnet-s-w4", (3, 16, 16), 12)
    for p in gen.parameters():
        p.data.normal_(0, 0.3)
    subset = [3, 7, 1]
    spec = sp.specialist_model(gen, lambda k: build_model("resnet-s-w4", (3, 16, 16), k), subset)
    x = torch.randint(0, 255, (8, 3, 16, 16), dtype=torch.uint8)
    zg, zs = predict_logits(gen, x), predict_logits(spec, x)
    torch.testing.assert_close(zs[:, :3], zg[:, subset])  # the special classes' logits are the generalist's
    rest = [i for i in range(12) if i not in subset]
    # The dustbin starts near the log of the other classes' summed probability (mean logit + log count).
    torch.testing.assert_close(zs[:, 3], zg[:, rest].mean(1) + math.log(9), atol=1e-4, rtol=0)


def test_half_and_half_batches():
    special = torch.arange(0, 30)
    rest = torch.arange(30, 200)
    sampler = sp.HalfAndHalf(special, rest, batch_size=10)
    assert len(sampler) == 60
    orders = [sampler(torch.Generator().manual_seed(s)) for s in (0, 1)]
    for order in orders:
        assert len(order) == 60
        for b in order.split(10):
            assert (b < 30).sum() == 5 and (b >= 30).sum() == 5  # every batch half special, half the rest
        assert sorted(order[order < 30].tolist()) == list(range(30))  # each special example once per epoch
        assert len(set(order[order >= 30].tolist())) == 30  # the others without repeats
    assert not torch.equal(orders[0][orders[0] >= 30].sort().values, orders[1][orders[1] >= 30].sort().values)


@pytest.mark.parametrize("batch_size", [1, 5])
def test_half_and_half_needs_an_even_batch(batch_size):
    with pytest.raises(DKError, match=f"even batch_size, not {batch_size}"):
        sp.HalfAndHalf(torch.arange(10), torch.arange(10, 110), batch_size=batch_size)


def test_dustbin_offset_is_the_log_oversampling_factor():
    y = torch.tensor([0] * 10 + [1] * 10 + [2] * 80)
    assert sp.dustbin_offset(y, [0, 1]) == pytest.approx(math.log(80 / 20))
    labels = sp.special_labels(y, [1, 0], 3)
    assert labels[:10].eq(1).all() and labels[10:20].eq(0).all() and labels[20:].eq(2).all()


def small_images(path, n=1200, c=6, seed=0):
    """16x16 colour images of ``c`` classes; classes 2k and 2k+1 look alike (confusable pairs)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % c
    x = rng.integers(0, 60, (n, 3, 16, 16), dtype=np.uint8)
    for k in range(c):
        q = k // 2
        x[y == k, q % 3, (q // 2) * 8:(q // 2) * 8 + 8, :] += 120
        x[y == k, (q + 1) % 3, :, (k % 2) * 8:(k % 2) * 8 + 8] += 40  # the faint cue that tells a pair apart
    np.savez(path, x_train=x[:1000], y_train=y[:1000], x_test=x[1000:], y_test=y[1000:])
    return str(path)


GEN = TrainConfig(arch="resnet-s-w4", epochs=3, batch_size=64, lr=0.05, jitter=2, flip=True, device="cpu")
SPEC = dataclasses.replace(GEN, epochs=4, lr=0.02)


def train_generalist(d):
    """A small generalist in ``d / "g"`` on ``small_images``: ``(data source, d)``."""
    from darkknowledge.ensembles import MemberTask, member_task

    source = small_images(d / "data.npz")
    member_task(MemberTask(source, GEN, str(d / "g"), "g", val_size=200))
    return source, d


@pytest.fixture(scope="module")
def generalist(tmp_path_factory):
    return train_generalist(tmp_path_factory.mktemp("spec"))


def _task(source, d, name, subset, **kw):
    return sp.SpecialistTask(source, str(d / "g"), tuple(subset), name, str(d / name), SPEC, val_size=200, **kw)


def test_specialists_train_locally_and_combine(generalist):
    source, d = generalist
    subsets = [[0, 1], [2, 3], [1, 2, 3]]
    tasks = [_task(source, d, f"m{m}", s) for m, s in enumerate(subsets)]
    tasks.append(_task(source, d, "soft", [0, 1], specialist=SpecialistConfig(soft_weight=1.0, views=2),
                       cache_dir=str(d / "cache")))
    outcomes = run_tasks(sp.specialist_task, tasks, progress=False)
    assert all(o.ok for o in outcomes), [o.error for o in outcomes]
    for o, s in zip(outcomes, subsets):
        assert o.value["subset"] == list(s) and o.value["dustbin_offset"] == pytest.approx(math.log(6 / len(s) - 1), abs=0.1)
    soft_meta = read_meta(d / "soft")
    assert soft_meta["soft_weight"] == 1.0 and soft_meta["views"] == 2
    specs = [sp.load_specialist(d / f"m{m}") for m in range(3)]
    from darkknowledge.data import load_data

    data = load_data(source)
    gen, _, _ = load_checkpoint(d / "g")
    pg = torch.softmax(predict_logits(gen, data.x_test), 1)
    q, active = sp.combined_probs(pg, specs, data.x_test, top_n=1)
    assert q.shape == pg.shape and torch.allclose(q.sum(1), torch.ones(len(q)), atol=1e-5)
    assert active.any(0).all()
    ev = sp.evaluate(pg, q, data.y_test, subsets)
    assert {r["k"] for r in ev["covered_by"]} == {0, 1, 2}  # classes 4, 5 uncovered; 1, 2, 3 twice
    uncovered = next(r for r in ev["covered_by"] if r["k"] == 0)
    assert uncovered["examples"] == int((data.y_test >= 4).sum())


def test_specialist_of_a_generalist_for_other_data_is_refused(generalist, tmp_path):
    source, d = generalist
    other = small_images(tmp_path / "other.npz", c=4)
    with pytest.raises(DKError, match="predicts 6 classes, the data has 4"):
        sp.specialist_task(dataclasses.replace(_task(other, d, "bad", [0, 1]), out=str(tmp_path / "bad")))
    with pytest.raises(DKError, match="not a specialist"):
        sp.load_specialist(d / "g")


def test_dk_specialists_cluster_train_evaluate(generalist, tmp_path):
    source, d = generalist
    common = ("--generalist", d / "g", "--data", source, "--no-progress")
    r = dk("specialists", "cluster", *common, "--val-size", "200", "--specialists", "2", "--max-classes", "3",
               "--out", tmp_path / "c")
    assert r.returncode == 0, r.stderr
    clusters = json.loads((tmp_path / "c" / "clusters.json").read_text())
    assert len(clusters["subsets"]) == 2 and (tmp_path / "c" / "clusters.png").stat().st_size > 1000
    r = dk("specialists", "train", *common, "--val-size", "200", "--clusters", tmp_path / "c" / "clusters.json",
               "--out", tmp_path / "s", "--epochs", "1", "--jitter", "2")
    assert r.returncode == 0, r.stderr
    assert "special_test_accuracy_%" in r.stdout
    r = dk("specialists", "evaluate", *common, "--specialists", tmp_path / "s")
    assert r.returncode == 0, r.stderr
    assert "covered_by" in r.stdout and "generalist + 2 specialists" in r.stdout
    # Bad input: one clear line each, exit 2, nothing half-written.
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_classes": 6, "subsets": [{"classes": [0, 9]}]}))
    r = dk("specialists", "train", *common, "--clusters", bad, "--out", tmp_path / "s2")
    assert r.returncode == 2 and "subset 0 is not a set" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "s2").exists()
    r = dk("specialists", "evaluate", *common, "--specialists", tmp_path / "nothing")
    assert r.returncode == 2 and "no specialist checkpoints" in r.stderr


def test_pool_coverage_pools_table_4_over_seeds():
    """Two seeds' coverage rows: counts add up by k, each seed keeps its own relative gain, a k missing from one
    seed is pooled from the other alone."""
    def row(k, n, g, q):
        return {"k": k, "examples": n, "generalist_correct": g, "combined_correct": q,
                "relative_gain_percent": 100 * (q - g) / g if g else None}

    pooled = sp.pool_coverage([[row(0, 50, 20, 20), row(1, 50, 10, 12)], [row(0, 40, 10, 10), row(2, 60, 30, 36)]])
    assert [t["k"] for t in pooled] == [0, 1, 2]
    assert pooled[0]["examples"] == 90 and pooled[0]["relative_gain_percent"] == 0.0 and pooled[0]["seeds"] == 2
    assert pooled[1]["seed_gains"] == [pytest.approx(20.0)] and pooled[1]["combined_accuracy"] == pytest.approx(24.0)
    assert pooled[2]["relative_gain_percent"] == pytest.approx(20.0) and pooled[2]["seeds"] == 1
    assert sp.pool_coverage([]) == []
