"""CIFAR data, views (crops and mirrors), conv nets, view banks of soft targets."""

import os
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from darkknowledge import DKError, Teacher
from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig
from darkknowledge.data import (
    Dataset,
    apply_views,
    balanced_fraction,
    channel_stats,
    gather_views,
    load_cifar,
    load_data,
    pad_for_jitter,
    view_count,
)
from darkknowledge.models import ResNetS, build_model
from darkknowledge.training import HardLabels, SoftTargets, fit, new_model
from darkknowledge.views import ViewBank
from darkknowledge.workflows import distill, student_bank


def write_cifar10(root, n_train=50, n_test=20):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (n_train // 5, 3072), dtype=np.uint8),
                 b"labels": [int(v) for v in np.arange(n_train // 5) % 10]}
        (d / f"data_batch_{i}").write_bytes(pickle.dumps(batch, protocol=2))
    (d / "test_batch").write_bytes(pickle.dumps({b"data": rng.integers(0, 256, (n_test, 3072), dtype=np.uint8),
                                                 b"labels": list(np.arange(n_test) % 10)}, protocol=2))
    (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return d


def test_cifar_pickles_load_as_uint8_images(tmp_path):
    write_cifar10(tmp_path)
    data = load_data(f"cifar10:{tmp_path}")
    assert data.x_train.shape == (50, 3, 32, 32) and data.x_train.dtype == torch.uint8
    assert data.num_classes == 10 and data.in_shape == (3, 32, 32) and data.class_names[3] == "c3"
    assert load_data(str(tmp_path)).name == "cifar10"  # a plain directory without MNIST: CIFAR-10


def test_cifar_loader_refuses_objects_beyond_arrays(tmp_path):
    d = write_cifar10(tmp_path)

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({"data": Evil(), "labels": []}))
    with pytest.raises(DKError, match=r"refusing to load \w+\.system \(not part of a CIFAR file\)"):
        load_cifar(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DKError, match="batches.meta not found"):
        load_cifar(tmp_path / "empty")


def reference_view(img, code, k, flip):
    """What a view code means, spelled out: pad by k, crop at (dy, dx), mirror."""
    side = 2 * k + 1
    shift, mirror = code % (side * side), code // (side * side)
    dy, dx = shift // side, shift % side
    h, w = img.shape[-2:]
    out = torch.nn.functional.pad(img, (k, k, k, k))[..., dy:dy + h, dx:dx + w]
    return out.flip(-1) if mirror else out


@pytest.mark.parametrize("shape", [(5, 3, 6, 7), (5, 6, 7)])
def test_every_view_code_is_the_crop_and_mirror_it_names(shape):
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    k = 2
    padded = pad_for_jitter(x, k)
    idx = torch.tensor([4, 0, 2])
    for code in range(view_count(k, True)):
        got = apply_views(padded, idx, torch.full((3,), code), k, flip=True)
        for i, n in enumerate(idx):
            assert torch.equal(got[i], reference_view(x[n], code, k, True)), code
    centre = k * (2 * k + 1) + k
    assert torch.equal(apply_views(padded, idx, torch.full((3,), centre), k), x[idx])
    with pytest.raises(DKError, match="view codes"):
        apply_views(padded, idx, torch.full((3,), view_count(k, False)), k, flip=False)


def test_drawn_views_come_with_their_codes():
    x = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    padded = pad_for_jitter(x, 4)
    idx = torch.arange(20)
    out, codes = gather_views(padded, idx, 4, True, torch.Generator().manual_seed(0), return_code=True)
    assert torch.equal(out, apply_views(padded, idx, codes, 4, True))
    assert (codes >= 81).any() and (codes < 81).any()  # mirrored and not


def test_balanced_fraction_and_bank_codes():
    y = torch.arange(1000) % 10
    x = torch.arange(1000)
    xs, ys = balanced_fraction(x, y, 0.03, seed=1)
    assert torch.bincount(ys).tolist() == [3] * 10 and torch.equal(y[xs], ys)
    assert not torch.equal(balanced_fraction(x, y, 0.03, seed=2)[0], xs)
    codes = ViewBank.random(50, 4, 4, True, 0.0).codes
    assert codes.shape == (4, 50) and (codes[0] == 40).all() and int(codes.max()) < 162
    assert torch.equal(codes, ViewBank.random(50, 4, 4, True, 0.0).codes)  # seeded: every student shares one bank


def test_channel_stats_of_uint8_images():
    x = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    x[:, 1] = 255
    x[:5, 2] = 255
    mean, std = channel_stats(x)
    assert mean == pytest.approx([0, 1, 0.5]) and std[2] == pytest.approx(0.5, abs=0.01)


def test_resnet_s_family_and_registry_patterns():
    m = build_model("resnet-s-w16", (3, 32, 32), 10)
    assert isinstance(m, ResNetS) and sum(p.numel() for p in m.parameters()) == 144_602
    assert m.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert m(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)
    assert build_model("resnet-s-w4", (3, 32, 32), 100).head.out_features == 100
    with pytest.raises(DKError, match="takes images"):
        build_model("resnet-s-w16", 784, 10)
    with pytest.raises(DKError, match="unknown architecture 'resnet-s-w0'"):
        TrainConfig(arch="resnet-s-w0")
    with pytest.raises(DKError, match="user's own module"):
        build_model("custom:mine", (3, 32, 32), 10)
    TrainConfig(arch="custom:mine")  # accepted: the module comes from Python


def test_torchvision_models_enter_by_name(monkeypatch):
    import sys
    import types

    built = {}

    def get_model(name, weights=None, num_classes=1000):
        built.update(name=name, weights=weights, num_classes=num_classes)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, num_classes))

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(get_model=get_model)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    m = build_model("torchvision:resnet18", (3, 32, 32), 10)
    assert built == {"name": "resnet18", "weights": None, "num_classes": 10}
    assert m(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)).shape == (2, 10)
    monkeypatch.setitem(sys.modules, "torchvision", None)  # not installed
    with pytest.raises(DKError, match="needs torchvision"):
        build_model("torchvision:resnet18", (3, 32, 32), 10)


def tiny_images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    for c in range(4):  # a learnable signal: class c brightens channel c % 3 in one quadrant
        x[y == c, c % 3, (c // 2) * 8:(c // 2) * 8 + 8, (c % 2) * 8:(c % 2) * 8 + 8] += 150
    return x, y


CONV = TrainConfig(arch="resnet-s-w4", epochs=3, batch_size=32, lr=0.05, jitter=2, flip=True, device="cpu")


def test_conv_net_learns_and_resumes_to_identical_weights(tmp_path):
    x, y = tiny_images()
    learner = replace(CONV, epochs=8, lr=0.1)
    hist = fit(new_model(learner, (3, 16, 16), 4), x, HardLabels(y), learner, x_test=x, y_test=y,
               x_train_eval=x, y_train_eval=y, progress=False)
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"] and hist[-1]["train_errors"] <= 36  # of 96; chance: 72
    full = new_model(CONV, (3, 16, 16), 4)
    fit(full, x, HardLabels(y), CONV, progress=False)
    # Killed in its third epoch, then resumed: batch-norm statistics and momentum travel with the checkpoint.
    steps = -(-len(x) // CONV.batch_size)

    class Killed(Exception):
        pass

    class Stop:  # hard labels that kill the run in its third epoch
        bank = None  # one target per example, a fresh random view per step

        def __init__(self):
            self.inner, self.calls = HardLabels(y), 0

        def to(self, device):
            return self

        def __call__(self, logits, idx):
            self.calls += 1
            if self.calls > 2 * steps:
                raise Killed
            return self.inner(logits, idx)

    with pytest.raises(Killed):
        fit(new_model(CONV, (3, 16, 16), 4), x, Stop(), CONV, checkpoint=tmp_path, progress=False)
    resumed = new_model(CONV, (3, 16, 16), 4)
    fit(resumed, x, HardLabels(y), CONV, checkpoint=tmp_path, resume=True, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_users_own_module_trains_checkpoints_and_resumes(tmp_path):
    x, y = tiny_images(64)

    def mine():
        torch.manual_seed(0)
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4))

    cfg = TrainConfig(arch="custom:linear", epochs=2, batch_size=32, lr=0.01, device="cpu")
    xf = x.float() / 255
    a = mine()
    fit(a, xf, HardLabels(y), cfg, checkpoint=tmp_path, progress=False)
    b = mine()
    fit(b, xf, HardLabels(y), cfg, checkpoint=tmp_path, resume=True, progress=False)  # finished: loads
    assert torch.equal(a[1].weight, b[1].weight)
    t = Teacher([a], archs=["custom:linear"])
    assert t.soft_targets(xf, 2.0).shape == (64, 4)


def test_view_bank_serves_the_teachers_target_on_the_very_view_drawn(tmp_path):
    x, y = tiny_images(40)
    torch.manual_seed(0)
    members = [build_model("resnet-s-w4", (3, 16, 16), 4).eval() for _ in range(2)]
    teacher = Teacher(members, cache_dir=tmp_path)
    bank = ViewBank.random(len(x), 3, 2, True, 0.0)
    codes = bank.codes
    logits = teacher.bank_logits(x, bank)
    assert logits.shape == (2, 3, 40, 4) and teacher.cache.misses == 1
    padded = pad_for_jitter(x, 2)
    for v in range(3):  # every bank row is the members' output on exactly that view
        view = apply_views(padded, torch.arange(40), codes[v], 2, True)
        with torch.no_grad():
            torch.testing.assert_close(logits[0, v], members[0](view))
    teacher.bank_logits(x, bank)
    assert (teacher.cache.hits, teacher.cache.misses) == (1, 1)  # the same bank: computed once
    shifted = codes.clone()
    shifted[1, 0] = (shifted[1, 0] + 1) % view_count(2, True)  # one view moved by one pixel
    teacher.bank_logits(x, replace(bank, codes=shifted))
    assert teacher.cache.misses == 2  # a shifted view misses the cache
    teacher.bank_logits(x, replace(bank, fill=1.0))
    assert teacher.cache.misses == 3  # so does another background fill
    # fit shows example n in the view of slot v and asks the objective for row v * N + n: a spy checks it.
    targets = torch.softmax(logits.mean(0).flatten(0, 1) / 2, -1)
    inner = SoftTargets(targets, y.repeat(3), DistillConfig(temperature=2.0), bank)

    class Spy:
        bank = inner.bank

        def __init__(self):
            self.rows = []

        def to(self, device):
            return self

        def __call__(self, logits, idx):
            self.rows.append(idx.clone())
            return inner(logits, idx)

    spy, seen = Spy(), []
    student = build_model("resnet-s-w4", (3, 16, 16), 4)
    forward = student.forward
    student.forward = lambda xb: (seen.append(xb.clone()), forward(xb))[1]
    cfg = TrainConfig(arch="resnet-s-w4", epochs=1, batch_size=16, lr=0.01, jitter=2, flip=True, device="cpu")
    fit(student, x, spy, cfg, progress=False)
    seen = seen[1:]  # the first forward only sizes the output
    assert len(seen) == len(spy.rows) == 3
    for xb, rows in zip(seen, spy.rows):
        slot, n = rows // 40, rows % 40
        torch.testing.assert_close(xb, apply_views(padded, n, codes[slot, n], 2, True))
    assert sorted(torch.cat(spy.rows).remainder(40).tolist()) == list(range(40))


def test_distill_with_a_view_bank_on_conv_nets(tmp_path):
    x, y = tiny_images()
    data = Dataset("tiny", x, y, x[:32], y[:32], 4)
    torch.manual_seed(0)
    teacher_model = new_model(CONV, (3, 16, 16), 4)
    fit(teacher_model, x, HardLabels(y), CONV, progress=False)
    teacher = Teacher([teacher_model], archs=[CONV.arch])
    r = distill("s", data, teacher, CONV, DistillConfig(temperature=2.0, hard_weight=0.5, soft_weight=0.5),
                TransferConfig(view_bank=3), progress=False)
    assert len(r.history) == CONV.epochs and r.test["test_size"] == 32
    with pytest.raises(DKError, match="view bank needs an augmentation"):
        distill("s", data, teacher, TrainConfig(**{**CONV.__dict__, "jitter": 0, "flip": False}),
                DistillConfig(), TransferConfig(view_bank=2), progress=False)


def test_real_cifar10_and_cifar100_load(cifar_dir):
    c10 = load_data(f"cifar10:{cifar_dir}")
    assert (len(c10.y_train), len(c10.y_test)) == (50_000, 10_000) and torch.bincount(c10.y_test).tolist() == [1000] * 10
    assert c10.class_names[0] == "airplane"
    c100 = load_cifar(cifar_dir, "cifar100")
    assert c100.num_classes == 100 and len(set(c100.coarse_of_class)) == 20 and len(c100.coarse_names) == 20
    mean, std = channel_stats(c10.x_train)
    assert 0.45 < mean[0] < 0.52 and 0.2 < std[0] < 0.3


def test_a_teacher_stage_and_its_students_agree_on_the_bank(tmp_path):
    """A stage that fills the teacher's cache ahead of the students (``student_bank``) and ``distill`` compute the
    same bank from the student's config: the students only hit the cache, and a student seeing other views misses."""
    x, y = tiny_images()
    data = Dataset("tiny", x, y, x[:32], y[:32], 4)
    torch.manual_seed(0)
    teacher = Teacher([new_model(CONV, (3, 16, 16), 4)], archs=[CONV.arch], cache_dir=tmp_path)
    _, bank = student_bank(x, CONV, TransferConfig(view_bank=3))
    teacher.bank_logits(x, bank)  # the teacher stage
    assert teacher.cache.misses == 1
    distill("s", data, teacher, CONV, DistillConfig(temperature=2.0), TransferConfig(view_bank=3), progress=False)
    assert (teacher.cache.hits, teacher.cache.misses) == (1, 1)
    distill("s", data, teacher, replace(CONV, flip=False), DistillConfig(temperature=2.0),
            TransferConfig(view_bank=3), progress=False)
    assert teacher.cache.misses == 2


def test_a_bank_that_does_not_fit_the_students_augmentation_is_refused():
    x, y = tiny_images(40)
    targets = torch.full((3 * 40, 4), 0.25)
    bank = ViewBank.random(40, 3, 2, True, 0.0)
    student = build_model("resnet-s-w4", (3, 16, 16), 4)
    cfg = TrainConfig(arch="resnet-s-w4", epochs=1, batch_size=16, lr=0.01, jitter=4, flip=True, device="cpu")
    with pytest.raises(DKError, match="does not fit 40 examples with jitter 4"):
        fit(student, x, SoftTargets(targets, y.repeat(3), DistillConfig(2.0), bank), cfg, progress=False)


def test_an_exhaustive_bank_draws_views_as_random_augmentation_does():
    """``ViewBank.every`` holds every code; fit draws from it exactly as unbanked jitter and flips draw, and the
    target row is the one of the code drawn."""
    from darkknowledge.views import RandomViews

    x, _ = tiny_images(40)
    padded = pad_for_jitter(x, 2)
    bank = ViewBank.every(40, 2, True, 0.0)
    assert bank.views == view_count(2, True) == 50
    idx = torch.arange(0, 40, 3)
    xa, rows = bank.draw(padded, idx, torch.Generator().manual_seed(5))
    xb, same = RandomViews(2, True).draw(padded, idx, torch.Generator().manual_seed(5))
    assert torch.equal(xa, xb) and torch.equal(same, idx) and torch.equal(rows % 40, idx)
    torch.testing.assert_close(xa, apply_views(padded, idx, rows // 40, 2, True))


def test_a_view_bank_of_flat_features_is_one_clear_error():
    with pytest.raises(DKError, match="needs images"):
        ViewBank.for_student(torch.rand(10, 64), 1, False)
