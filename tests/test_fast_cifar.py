"""The airbench-class CIFAR family, its training settings, test-time augmentation and mixed views."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from darkknowledge import DKError, Teacher, build_model
from darkknowledge.config import DistillConfig, TrainConfig, TransferConfig
from darkknowledge.data import Dataset, apply_views, pad_for_jitter
from darkknowledge.ensembles import evaluate_ensemble
from darkknowledge.evaluation import predict_logits, tta_views
from darkknowledge.models import AirNet
from darkknowledge.training import HardLabels, SoftTargets, fit, lr_at, make_sgd, param_groups
from darkknowledge.views import ViewBank
from darkknowledge.workflows import distill, student_bank

AIR = TrainConfig(arch="airnet-8-16-16", epochs=2, batch_size=32, lr=0.2, momentum=0.85, nesterov=True,
                  weight_decay=5e-4, label_smoothing=0.2, lr_schedule="linear", warmup_epochs=0.5, jitter=2,
                  flip=True, device="cpu", precision="fp32")


def tiny_images(n=96, seed=0, side=16):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randint(0, 60, (n, 3, side, side), generator=g, dtype=torch.uint8)
    h = side // 2
    for c in range(4):  # a learnable signal: class c brightens channel c % 3 in one quadrant
        x[y == c, c % 3, (c // 2) * h:(c // 2) * h + h, (c % 2) * h:(c % 2) * h + h] += 150
    return x, y


def test_airnet_family_shapes_parameters_and_frozen_parts():
    wide = build_model("airnet-64-256-256", (3, 32, 32), 10)
    assert isinstance(wide, AirNet)
    assert sum(p.numel() for p in wide.parameters()) == 1_972_792  # airbench94's net: ~1.97 M
    narrow = build_model("airnet-32-128-128", (3, 32, 32), 100)
    assert narrow(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, 100)
    assert not wide.whiten.conv.weight.requires_grad and wide.whiten.conv.bias.requires_grad
    bns = [m for m in wide.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 6 and all(not b.weight.requires_grad and b.bias.requires_grad for b in bns)
    with pytest.raises(DKError, match="takes images"):
        build_model("airnet-8-16-16", (64,), 10)


def test_patch_whitening_whitens_the_training_patches():
    x, _ = tiny_images(200)
    model = build_model("airnet-8-16-16", (3, 16, 16), 4)
    model.calibrate_norm([0.3] * 3, [0.2] * 3)
    model.calibrate_whitening(x)
    with torch.no_grad():
        z = model.whiten.conv(model.norm(x)) - model.whiten.conv.bias.view(1, -1, 1, 1)
    half = z[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    cov = torch.cov(half.T)
    assert torch.allclose(cov, torch.eye(12, dtype=torch.float64), atol=0.05)  # whitened (eps aside)
    torch.testing.assert_close(z[:, 12:], -z[:, :12])  # each filter and its negation


def test_fit_calibrates_whitening_and_the_net_learns():
    x, y = tiny_images(128)
    torch.manual_seed(0)
    model = build_model(AIR.arch, (3, 16, 16), 4)
    hist = fit(model, x, HardLabels(y), replace(AIR, epochs=6), x_test=x, y_test=y, progress=False)
    assert model.whiten.conv.weight.abs().sum() > 0  # calibrated from the data, not left at its init
    assert hist[-1]["test_errors"] < 0.25 * len(y)


def test_bn_shifts_train_faster_and_every_weight_decays_alike():
    model = build_model("airnet-8-16-16", (3, 16, 16), 4)
    groups = param_groups(model, AIR)
    assert [g["lr_scale"] for g in groups] == [1.0, 64.0]
    assert [g["lr"] for g in groups] == [AIR.lr, AIR.lr * 64]
    assert all(abs(g["lr"] * g["weight_decay"] - AIR.lr * AIR.weight_decay) < 1e-12 for g in groups)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert {id(p) for g in groups for p in g["params"]} == trainable
    opt = make_sgd(groups, AIR, torch.device("cpu"))
    assert all(g["nesterov"] for g in opt.param_groups)


def test_label_smoothing_closed_form_matches_autograd():
    torch.manual_seed(0)
    logits = torch.randn(8, 5, requires_grad=True)
    labels = torch.randint(0, 5, (8,))
    obj = HardLabels(labels, 0.2)
    loss = obj(logits, torch.arange(8))
    loss.backward()
    closed_loss, closed_grad = obj.loss_and_grad(logits.detach(), torch.arange(8))
    torch.testing.assert_close(closed_loss, loss.detach())
    torch.testing.assert_close(closed_grad, logits.grad)
    assert loss > F.cross_entropy(logits.detach(), labels) - 1  # smoothing changes the objective


def test_linear_schedule_warms_up_then_falls_to_zero():
    cfg = replace(AIR, epochs=4, lr=1.0, warmup_epochs=1)
    lrs = [lr_at(cfg, s, 10) for s in range(40)]
    assert lrs[9] == pytest.approx(1.0) and lrs[0] == pytest.approx(0.1)
    assert lrs[10] == pytest.approx(1.0) and all(a > b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] == pytest.approx(1.0 / 30)
    with pytest.raises(DKError, match="label_smoothing"):
        replace(AIR, label_smoothing=1.0)
    with pytest.raises(DKError, match="nesterov"):
        replace(AIR, momentum=0.0)


def test_test_time_augmentation_views_and_their_mean():
    x, y = tiny_images(16)
    views = tta_views(x, 2)
    assert len(views) == 6 and sum(w for _, w in views) == pytest.approx(1.0)
    assert torch.equal(views[1][0], x.flip(-1))
    assert torch.equal(views[2][0][..., :-1, :-1], x[..., 1:, 1:])  # content moved up-left by one pixel
    assert torch.equal(views[4][0][..., 1:, 1:], x[..., :-1, :-1])  # and down-right
    model = build_model("airnet-8-16-16", (3, 16, 16), 4).eval()
    with torch.no_grad():
        expected = 0.5 * (model(x) + model(x.flip(-1)))
    torch.testing.assert_close(predict_logits(model, x, tta=1), expected)
    # a mirror-symmetric batch: mirror TTA changes nothing
    sym = torch.cat([x[..., :8], x[..., :8].flip(-1)], -1)
    torch.testing.assert_close(predict_logits(model, sym, tta=1), predict_logits(model, sym))
    with pytest.raises(DKError, match="test-time augmentation level"):
        predict_logits(model, x, tta=3)
    # ensembles take the same views: each member's TTA logits, then the mean
    teacher = Teacher([model, build_model("airnet-8-16-16", (3, 16, 16), 4).eval()])
    r = evaluate_ensemble(teacher, x, y, 4, tta=2)
    assert r["members"][0] == int((predict_logits(model, x, tta=2).argmax(-1) != y).sum())
    assert teacher.cache.misses == 1 and evaluate_ensemble(teacher, x, y, 4)["test_size"] == 16
    assert teacher.cache.misses == 2  # TTA and plain outputs are cached apart


def test_mixed_views_are_cached_under_their_partners_and_weights(tmp_path):
    x, y = tiny_images(40)
    torch.manual_seed(0)
    members = [build_model("airnet-8-16-16", (3, 16, 16), 4).eval() for _ in range(2)]
    teacher = Teacher(members, cache_dir=tmp_path)
    bank = ViewBank.random(len(x), 3, 2, True, 0.0, mixup=1.0)
    assert torch.equal(bank.partners[0], torch.arange(40)) and bool((bank.weights[0] == 1).all())
    assert bool((bank.weights[1:] < 1).all()) and bank.key() != replace(bank, partners=None, weights=None).key()
    torch.manual_seed(123)  # the bank is the seed's alone, whatever the global random state
    assert ViewBank.random(len(x), 3, 2, True, 0.0, mixup=1.0).key() == bank.key()
    logits = teacher.bank_logits(x, bank)
    padded = pad_for_jitter(x, 2)
    n = torch.arange(40)
    for v in range(3):  # every row is the members' output on exactly that mixed image
        p, w = bank.partners[v], bank.weights[v].view(-1, 1, 1, 1)
        a = apply_views(padded, n, bank.codes[v], 2, True).float() / 255
        b = apply_views(padded, p, bank.codes[v, p], 2, True).float() / 255
        with torch.no_grad():
            torch.testing.assert_close(logits[0, v], members[0](w * a + (1 - w) * b), atol=1e-4, rtol=1e-4)
    teacher.bank_logits(x, bank)
    assert (teacher.cache.hits, teacher.cache.misses) == (1, 1)
    other = bank.partners.clone()
    other[1, 0] = (other[1, 0] + 1) % 40  # one view mixed with another partner
    teacher.bank_logits(x, replace(bank, partners=other))
    assert teacher.cache.misses == 2
    weights = bank.weights.clone()
    weights[2, 5] = weights[2, 5] * 0.5  # one view mixed at another weight
    teacher.bank_logits(x, replace(bank, weights=weights))
    assert teacher.cache.misses == 3
    # the student draws a slot and sees exactly the mixed image whose target row it is scored on
    gen = torch.Generator().manual_seed(0)
    xb, rows = bank.draw(padded, n[:10], gen)
    for i, r in enumerate(rows.tolist()):
        torch.testing.assert_close(xb[i], bank.images(padded, r // 40, torch.tensor([r % 40]))[0])


def test_distilling_on_mixed_views_trains_and_refuses_mixup_without_a_bank():
    x, y = tiny_images(96)
    data = Dataset("tiny", x, y, x[:32], y[:32], 4)
    torch.manual_seed(0)
    cfg = replace(AIR, epochs=6)
    teacher_model = build_model(cfg.arch, (3, 16, 16), 4)
    fit(teacher_model, x, HardLabels(y), replace(cfg, epochs=20, label_smoothing=0.0), progress=False)
    teacher = Teacher([teacher_model], archs=[cfg.arch])  # confident enough for a student on its targets alone
    tcfg = TransferConfig(view_bank=4, mixup=0.5)
    _, bank = student_bank(x, cfg, tcfg)
    assert bank.mixed and bank.views == 4
    r = distill("s", data, teacher, replace(cfg, epochs=10), DistillConfig(temperature=1.0, soft_weight=1.0,
                                                                          hard_weight=0.0), tcfg, progress=False)
    assert len(r.history) == 10 and r.history[-1]["loss"] < 0.9 * r.history[0]["loss"]
    assert r.test["errors"] <= 18, r.test  # chance: 24 of 32 (the teacher: 8; a tiny, hard mixup task)
    with pytest.raises(DKError, match="hard_weight 0 with mixup"):  # one hard label is wrong for a mixed image
        distill("s", data, teacher, cfg, DistillConfig(temperature=2.0, hard_weight=0.5), tcfg, progress=False)
    with pytest.raises(DKError, match="mixup"):
        TransferConfig(mixup=0.5)
    with pytest.raises(DKError, match="mixup alpha"):
        ViewBank.random(10, 2, 1, True, 0.0, mixup=-1.0)
    targets = torch.rand(4 * 96, 4)
    SoftTargets(targets, y.repeat(4), DistillConfig(), bank).bank.check(96, cfg.jitter, cfg.flip, 0.0)


def test_alternating_flips_show_each_image_both_ways_every_two_epochs():
    from darkknowledge.views import AlternatingFlips

    x, _ = tiny_images(40)
    padded = pad_for_jitter(x, 0)
    even = AlternatingFlips.for_epoch(0, 40, seed=3, epoch=0, device=torch.device("cpu"))
    odd = AlternatingFlips.for_epoch(0, 40, seed=3, epoch=1, device=torch.device("cpu"))
    assert 10 < int(even.mirrored.sum()) < 30  # a random half, seeded
    torch.testing.assert_close(even.mirrored + odd.mirrored, torch.ones(40, dtype=torch.int64))
    idx = torch.arange(40)
    shown, rows = even.draw(padded, idx, torch.Generator().manual_seed(0))
    assert torch.equal(rows, idx)
    expected = torch.where(even.mirrored.bool().view(-1, 1, 1, 1), x.flip(-1), x)
    assert torch.equal(shown, expected)
    with pytest.raises(DKError, match="alternate_flips needs flip"):
        replace(AIR, flip=False, alternate_flips=True)


def test_lookahead_blends_towards_the_average_and_keeps_it_at_the_end():
    from darkknowledge.training import Lookahead

    model = torch.nn.Linear(3, 2)
    la = Lookahead(model)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    assert not la.update(4, 10)  # only every 5th step
    assert la.update(5, 10)
    decay = 0.95 ** 5 * 0.5 ** 3
    torch.testing.assert_close(model.weight.detach(), start + (1 - decay))
    torch.testing.assert_close(la.average["weight"], model.weight.detach())
    with torch.no_grad():
        model.weight.add_(1.0)
    la.finish()  # decay 1: the model becomes the average
    torch.testing.assert_close(model.weight.detach(), start + (1 - decay))


def test_lookahead_and_alternating_flips_train_and_resume_exactly(tmp_path, monkeypatch):
    import darkknowledge.training as training

    x, y = tiny_images(128)
    cfg = replace(AIR, epochs=3, lookahead=True, alternate_flips=True)
    torch.manual_seed(0)
    straight = build_model(cfg.arch, (3, 16, 16), 4)
    hist = fit(straight, x, HardLabels(y), cfg, x_test=x, y_test=y, progress=False)
    assert hist[-1]["test_errors"] < 0.5 * len(y)
    # The same run cut off after its second epoch's checkpoint, then resumed: the average travels with it.
    saved = []
    real_save = training.save_checkpoint

    def save_then_stop(*args, **kwargs):
        real_save(*args, **kwargs)
        saved.append(1)
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", save_then_stop)
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        fit(build_model(cfg.arch, (3, 16, 16), 4), x, HardLabels(y), cfg, checkpoint=tmp_path / "cut", progress=False)
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    resumed = build_model(cfg.arch, (3, 16, 16), 4)
    fit(resumed, x, HardLabels(y), cfg, checkpoint=tmp_path / "cut", resume=True, progress=False)
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, msg=k)
