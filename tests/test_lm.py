"""Token-level distillation: the chunked loss against the dense one, the sparse tails, the top-k cache and its
checks, the tokenizer, a Hugging Face causal LM, and ``dk reproduce lm`` end to end at smoke scale."""

import json
import sysconfig

import pytest
import torch
import torch.nn.functional as F
from conftest import dk

from darkknowledge import lm, text
from darkknowledge.config import TrainConfig
from darkknowledge.errors import DKError
from darkknowledge.losses import distillation_loss
from darkknowledge.training import fit

STDLIB = sysconfig.get_paths()["stdlib"]


def test_chunked_loss_matches_the_dense_loss_and_its_gradients():
    torch.manual_seed(0)
    h = torch.randn(3, 10, 8, requires_grad=True)
    w = torch.randn(50, 8, requires_grad=True)
    t = torch.randn(3, 10, 50)
    y = torch.randint(0, 50, (3, 10))

    def chunk(logits, labels, tl):
        return 4 * lm.dense_soft_loss(logits, tl, 2.0) + 0.3 * F.cross_entropy(logits, labels, reduction="sum")

    a = lm.chunked_loss(h, w, chunk, (y, t), chunk=7)  # chunks that cut windows apart
    ga = torch.autograd.grad(a, (h, w))
    z = (h @ w.t()).reshape(-1, 50)
    b = distillation_loss(z, F.softmax(t.reshape(-1, 50) / 2, -1), 2.0, y.reshape(-1), soft_weight=1.0,
                          hard_weight=0.3)  # the paper's loss: T^2 KL + hard CE, batch mean
    gb = torch.autograd.grad(b, (h, w))
    torch.testing.assert_close(a, b)
    for x1, x2 in zip(ga, gb):
        torch.testing.assert_close(x1, x2)


def test_chunked_loss_gradients_on_both_paths_match_autograd_on_the_dense_loss():
    """Extras that need gradients take the checkpointed path, the rest the path that takes each chunk's gradients
    as it goes; a frozen head or frozen hidden states get none; both agree with autograd through the dense loss."""
    torch.manual_seed(2)
    h = torch.randn(2, 9, 6, requires_grad=True)
    w = torch.randn(40, 6, requires_grad=True)
    t = torch.randn(2, 9, 40, requires_grad=True)  # a teacher trained jointly: its logits want gradients too

    def chunk(logits, tl):
        return lm.dense_soft_loss(logits, tl, 3.0)

    dense = lm.dense_soft_loss((h @ w.t()).reshape(-1, 40), t.reshape(-1, 40), 3.0) / 18
    want = torch.autograd.grad(dense, (h, w, t))
    got = torch.autograd.grad(lm.chunked_loss(h, w, chunk, (t,), chunk=4), (h, w, t))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)
    frozen = w.detach()
    loss = lm.chunked_loss(h, frozen, chunk, (t.detach(),), chunk=4)
    torch.testing.assert_close(torch.autograd.grad(loss, h)[0],
                               torch.autograd.grad(lm.dense_soft_loss((h @ frozen.t()).reshape(-1, 40),
                                                                      t.detach().reshape(-1, 40), 3.0) / 18, h)[0])
    assert lm.chunked_loss(h.detach(), w, chunk, (t.detach(),), chunk=4).grad_fn is not None
    with torch.no_grad():
        torch.testing.assert_close(lm.chunked_loss(h, w, chunk, (t,), chunk=4), dense.detach())


def test_chunked_loss_under_bf16_autocast_matches_its_checkpointed_form():
    torch.manual_seed(3)
    h = torch.randn(4, 8, 16, requires_grad=True)
    w = torch.randn(64, 16, requires_grad=True)
    y = torch.randint(0, 64, (4, 8))
    grads = []
    for recompute in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16):  # a model under autocast hands on bf16 hidden states
            loss = lm.chunked_loss(h.to(torch.bfloat16), w, lm._hard, (y,), chunk=5, recompute=recompute)
        grads.append(torch.autograd.grad(loss, (h, w)) + (loss.detach(),))
    assert grads[0][0].dtype == torch.float32 and grads[0][1].dtype == torch.float32
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("tail", lm.TAILS)
def test_every_tail_is_the_full_kl_when_the_top_k_leaves_no_doubt(tail):
    torch.manual_seed(1)
    s, t = torch.randn(6, 30), 3 * torch.randn(6, 30)
    lp = F.log_softmax(t / 2, -1)
    # spread and bucket are exact with one token left out (the tail is that token); renorm, which drops the
    # tail, only with none left out
    top, ids = lp.topk(30 if tail == "renorm" else 29, -1)
    torch.testing.assert_close(lm.sparse_soft_loss(s, ids, top, 2.0, tail), lm.dense_soft_loss(s, t, 2.0),
                               rtol=1e-4, atol=1e-4)


def test_a_cache_of_draws_takes_no_tail_but_renorm():
    idx, logp = torch.zeros(2, 4, 3, dtype=torch.int16), torch.full((2, 4, 3), -1.1)
    assert lm.TopKTargets(idx, logp, "renorm", "sample").selection == "sample"
    for tail in ("spread", "bucket"):
        lm.TopKTargets(idx, logp, tail)  # a top-k cache takes every tail
        with pytest.raises(DKError, match=f"tail '{tail}' does not apply"):
            lm.TopKTargets(idx, logp, tail, "sample")


def test_tails_differ_as_designed_on_a_short_top_k():
    torch.manual_seed(2)
    s, t = torch.randn(4, 40), torch.randn(4, 40)
    lp = F.log_softmax(t, -1)
    top, ids = lp.topk(3, -1)
    vals = {tail: float(lm.sparse_soft_loss(s, ids, top, 1.0, tail)) for tail in lm.TAILS}
    assert all(v >= 0 for v in vals.values()) and len(set(vals.values())) == 3


def test_sampled_shares_are_an_unbiased_estimate_and_so_is_the_gradient():
    # Random-sampling distillation: the shares of k draws average to the teacher's distribution, and the loss on
    # them (the renorm formula; unused slots weigh 0) has, on average over draws, the full KL's gradient.
    torch.manual_seed(3)
    s, t = torch.randn(4, 25, requires_grad=True), torch.randn(4, 25)  # a flat teacher: its top 8 hold ~75%
    g = torch.Generator().manual_seed(0)
    ids, ls = lm.sampled_slots(t, 8, g)
    assert torch.allclose(ls.exp().sum(-1), torch.ones(4)) and (ls.exp() > 0).sum(-1).le(8).all()
    shares, grads = torch.zeros(4, 25), torch.zeros(4, 25)
    draws = 3000
    for _ in range(draws):
        ids, ls = lm.sampled_slots(t, 8, g)
        shares.scatter_add_(1, ids, ls.exp())
        grads += torch.autograd.grad(lm.sparse_soft_loss(s, ids, ls, 1.0, "renorm"), s)[0]
    torch.testing.assert_close(shares / draws, F.softmax(t, -1), atol=0.01, rtol=0)
    dense = torch.autograd.grad(lm.dense_soft_loss(s, t, 1.0), s)[0]
    torch.testing.assert_close(grads / draws, dense, atol=0.01, rtol=0)
    # the top k of the same size is biased: its renormalised gradient misses the tail
    top, tid = F.log_softmax(t, -1).topk(8, -1)
    biased = torch.autograd.grad(lm.sparse_soft_loss(s, tid, top, 1.0, "renorm"), s)[0]
    assert (biased - dense).abs().max() > 0.05


def test_top_k_cache_round_trip_and_its_checks(tmp_path):
    torch.manual_seed(0)
    teacher = lm.TinyGPT(60, 16, 1, 12).eval()
    x = torch.randint(0, 60, (37, 12))
    meta = lm.TopKCache.build(tmp_path / "c", teacher, x, k=5, temperature=2.0, teacher_fingerprint="T",
                              tokens_digest="D", tokenizer="Z", batch_size=8, shard_windows=16)
    assert [s["windows"] for s in meta["shards"]] == [16, 16, 5] and meta["bytes_per_token"] < 5 * 4 + 1
    idx, logp = lm.TopKCache(tmp_path / "c").load(teacher_fingerprint="T", tokens_digest="D", tokenizer="Z", k=5,
                                                  temperature=2.0)
    with torch.no_grad():
        ref = F.log_softmax(teacher(x) @ teacher.head_weight.t() / 2, -1).topk(5, -1)
    assert torch.equal(idx.long(), ref.indices)
    torch.testing.assert_close(logp.float(), ref.values, atol=2e-3, rtol=1e-3)
    for kw, what in ((dict(teacher_fingerprint="other"), "another teacher"), (dict(tokens_digest="x"), "another corpus"),
                     (dict(tokenizer="x"), "another tokenizer"), (dict(k=8), "another k")):
        args = {**dict(teacher_fingerprint="T", tokens_digest="D", tokenizer="Z", k=5, temperature=2.0), **kw}
        with pytest.raises(DKError, match=what):
            lm.TopKCache(tmp_path / "c").load(**args)
    with pytest.raises(DKError, match="another selection"):
        lm.TopKCache(tmp_path / "c").load(teacher_fingerprint="T", tokens_digest="D", tokenizer="Z", k=5,
                                          temperature=2.0, selection="sample")
    # a cache of draws: per token the distinct tokens drawn and their shares, summing to 1; reproducible by seed
    kw = dict(k=5, temperature=2.0, teacher_fingerprint="T", tokens_digest="D", tokenizer="Z", selection="sample")
    lm.TopKCache.build(tmp_path / "s", teacher, x, **kw)
    sid, sl = lm.TopKCache(tmp_path / "s").load(**{k: v for k, v in kw.items()})
    torch.testing.assert_close(sl.float().exp().sum(-1), torch.ones(37, 12), atol=2e-3, rtol=0)
    assert sid.shape == (37, 12, 5) and int(sid.max()) < 60
    lm.TopKCache.build(tmp_path / "s2", teacher, x, **kw)
    assert torch.equal(lm.TopKCache(tmp_path / "s2").load(**kw)[0], sid)
    (tmp_path / "c" / "shard-00001.safetensors").write_bytes(b"garbage")
    with pytest.raises(DKError, match="unreadable"):
        lm.TopKCache(tmp_path / "c").load(teacher_fingerprint="T", tokens_digest="D", tokenizer="Z", k=5,
                                          temperature=2.0)


def test_corpus_tokenizer_and_windows(tmp_path):
    c = text.read_corpus(STDLIB, limit_bytes=40_000)
    assert c.train and c.val and c.test and c.bytes("train") >= 40_000
    tok = text.train_tokenizer(c, 400, tmp_path / "tok.json")
    assert text.tokenizer_digest(text.load_tokenizer(tmp_path / "tok.json")) == text.tokenizer_digest(tok)
    w = text.windows(tok, c.val, 16)
    assert torch.equal(w.inputs[1:, 0], w.targets[:-1, -1])  # consecutive windows continue the stream
    decoded = tok.decode(w.targets[0].tolist())
    assert w.bytes > 0 and len(decoded.encode()) == int(text.token_bytes(tok)[w.targets[0]].sum())
    with pytest.raises(DKError, match="neither a text file nor a directory"):
        text.read_corpus(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DKError, match="no train/val/test documents"):
        text.read_corpus(tmp_path / "empty")


def test_a_hugging_face_causal_lm_trains_on_the_chunked_loss():
    transformers = pytest.importorskip("transformers", reason="transformers is in the test extra")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=16, n_layer=1,
                                                              n_head=2, bos_token_id=0, eos_token_id=0))
    model = lm.as_causal_lm(hf)
    x = torch.randint(0, 40, (64, 16))
    y = torch.roll(x, -1, 1)
    before = lm.bits_per_byte(model, x, y, x.numel())
    cfg = TrainConfig(arch="custom:gpt2", epochs=3, batch_size=16, lr=3e-3, optimizer="adamw", device="cpu",
                      precision="fp32")
    fit(model, x, lm.NextTokens(y, lambda: model.head_weight), cfg, progress=False)
    assert lm.bits_per_byte(model, x, y, x.numel()) < before
    model.eval()
    with torch.no_grad():  # its hidden states through its own head are its logits
        torch.testing.assert_close(model(x[:2]) @ model.head_weight.t(), hf(input_ids=x[:2]).logits)


def test_reproduce_lm_at_smoke_scale(tmp_path):
    out = tmp_path / "lm"
    r = dk("reproduce", "lm", "--data", STDLIB, "--scale", "smoke", "--device", "cpu", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    res = json.loads((out / "results.json").read_text())
    rows = {row["experiment"]: row for row in res["rows"]}
    for name in ("teacher", "student", "distilled_full", "distilled_top4", "distilled_top8", "distilled_sample4"):
        assert rows[name]["status"] == "done" and rows[name]["metric"] == "bits_per_byte"
        assert 0 < rows[name]["mean"] < 9
    assert rows["cache_top8_bytes_per_token"]["mean"] == pytest.approx(32, abs=0.1)  # fp16 + int16 per slot
    assert rows["cache_sample4_bytes_per_token"]["mean"] == pytest.approx(16, abs=0.1)
    assert "sample4_vs_full_percent" in rows
    assert res["chosen"]["tail"] in lm.TAILS and (out / "curves.png").is_file()
    # a teacher trained with another tokenizer is refused by name
    from darkknowledge.experiments.lm import load_teacher

    with pytest.raises(DKError, match="another tokenizer"):
        load_teacher(out / "models" / "teacher__s0", "not-this-tokenizer", 300, torch.device("cpu"))
    # every checkpoint belongs to its stage, so a setting that makes stages stale forgets their checkpoints too
    from darkknowledge.experiments import lm as lm_exp
    from darkknowledge.experiments.report import forget_stages, stale_stages
    from darkknowledge.experiments.runner import model_dir

    stages = lm_exp.build_stages(lm_exp.SCALES["smoke"], 1, {})
    owned = {model_dir(out, s.name) for s in stages}
    assert set((out / "models").iterdir()) <= owned
    stale = stale_stages(stages, {"choose", "distilled"})
    forget_stages(out, stale)
    assert not (out / "models" / "distilled_full__s0").exists() and (out / "models" / "teacher__s0").is_dir()


def test_reproduce_lm_needs_text(tmp_path):
    r = dk("reproduce", "lm", "--data", tmp_path / "nothing", "--scale", "smoke", "--out", tmp_path / "o")
    assert r.returncode == 2 and "neither a text file nor a directory" in r.stderr
