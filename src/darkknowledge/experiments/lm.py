"""Token-level distillation of a causal language model: ``dk reproduce lm --data-dir FILE_OR_DIR``.

The paper's loss at T per position (``lm``). On a text corpus split by file (``text.read_corpus``; the
measured one is the CPython standard library's source), a byte-level BPE tokenizer trained on the training
split (``tokenizers``), then per seed s: a teacher (a larger ``gpt-DxL``), a hard-label student of the small
size, and that student distilled three ways: on the teacher's full logits computed on the fly, and on a
sparse cache of the teacher's top-k log-probabilities per token computed once (k = 8 and 32 by default;
``lm.TopKCache``). What to do with the probability mass outside the top k (``renorm``, ``spread``,
``bucket``) and the hard-label weight are chosen on the validation split (seed 0's teacher, the smallest k).
Beyond the top k, the same student on a cache of k draws from the teacher's distribution per token
(``distilled_sample{k}``, ``selection="sample"``: an unbiased estimate, no tail to handle; the chosen hard weight).
Metric: bits per byte on the test split; also the cache's bytes per token and the teacher's cost paid once
(the cache) against on the fly (the full-logit student's extra seconds).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from darkknowledge import lm, text
from darkknowledge.checkpoint import load_checkpoint, read_meta
from darkknowledge.config import TrainConfig, packaged_recipe
from darkknowledge.device import resolve_device
from darkknowledge.errors import DKError
from darkknowledge.experiments.report import Experiment, relative_to, save_figure, values_row
from darkknowledge.experiments.runner import DONE, FAILED, Stage, model_dir
from darkknowledge.models import build_model
from darkknowledge.teachers import model_digest
from darkknowledge.training import fit

TEACHER = packaged_recipe("lm", "teacher")[TrainConfig]
STUDENT = packaged_recipe("lm", "student")[TrainConfig]
ROLES = ("teacher", "student", "distilled_full")  # and distilled_top{k} for each k


@dataclass(frozen=True)
class Scale:
    """How much compute one reproduction spends."""

    teacher: str  # registry arch of the teacher
    student: str  # of the student (hard-label and distilled)
    vocab: int  # BPE vocabulary size
    seq_len: int  # tokens per window
    train_bytes: int  # about this many training bytes of the corpus (0: all), a tenth as many each for val / test
    teacher_epochs: int
    student_epochs: int
    choice_epochs: int  # the students that choose the tail and hard weight (seed 0)
    ks: tuple[int, ...] = (8, 32)
    sample_ks: tuple[int, ...] = (8, 32)  # caches of k draws per token (random-sampling distillation)
    tails: tuple[str, ...] = lm.TAILS
    hard_weights: tuple[float, ...] = (0.0, 0.5, 1.0)
    temperature: float = 1.0
    default_seeds: int = 3
    evals: int = 4  # validation bits per byte this many times per run (the curves)


SCALES: dict[str, Scale] = {
    # About 3 MB of training text (three times the quick scale's), a 4,096-token BPE, windows of 256: a
    # 4.8 M-parameter teacher and a 0.9 M student; one sampled cache (32 draws). About 3 h for 3 seeds on 2 AVX2
    # cores in fp32 with --workers 2 (measured, 2026-12-06: each teacher 2,300 s on one thread); all 14 MB of
    # the standard library would take about 8 h.
    "full": Scale(teacher="gpt-256x4-d10", student="gpt-128x2", vocab=4096, seq_len=256, train_bytes=3_000_000,
                  teacher_epochs=5, student_epochs=4, choice_epochs=2, sample_ks=(32,)),
    # Under 20 minutes on 2 CPU cores with --workers 2 (995 s measured, 2026-12-07): about 0.75 MB of training text,
    # a 2,048-token BPE, windows of 128; one sampled cache, as at full.
    "quick": Scale(teacher="gpt-192x3-d10", student="gpt-64x2", vocab=2048, seq_len=128, train_bytes=750_000,
                   teacher_epochs=5, student_epochs=4, choice_epochs=2, sample_ks=(32,)),
    # Seconds: every stage and the results contract on a sliver.
    "smoke": Scale(teacher="gpt-32x1", student="gpt-16x1", vocab=300, seq_len=32, train_bytes=60_000,
                   teacher_epochs=1, student_epochs=1, choice_epochs=1, ks=(4, 8), sample_ks=(4,), tails=("renorm", "bucket"),
                   hard_weights=(0.0,), default_seeds=1, evals=1),
}

_DATA: dict[tuple[str, str, int], tuple[Any, dict[str, text.Tokens]]] = {}


def _corpus(data_dir: str, sc: Scale) -> text.Corpus:
    return text.read_corpus(data_dir, sc.train_bytes)


def _check_data(data_dir: str, sc: Scale) -> None:
    c = _corpus(data_dir, sc)
    if c.bytes("train") < 20 * sc.seq_len:
        raise DKError(f"{data_dir}: {c.bytes('train')} training bytes are too few for windows of {sc.seq_len} tokens")


def _tokens(p: dict[str, Any]) -> tuple[Any, dict[str, text.Tokens]]:
    """The tokenizer the ``tokenizer`` stage wrote and every split as windows (cached per process)."""
    sc, out = p["scale"], Path(p["out"])
    key = (str(p["data_dir"]), str(out), sc.seq_len)
    if key not in _DATA:
        tok = text.load_tokenizer(out / "tokenizer.json")
        c = _corpus(p["data_dir"], sc)
        _DATA[key] = (tok, {s: text.windows(tok, getattr(c, s), sc.seq_len) for s in ("train", "val", "test")})
    return _DATA[key]


# ---- stages ---------------------------------------------------------------------------------------------

def build_stages(sc: Scale, seeds: int, ctx: dict[str, Any]) -> list[Stage]:
    k0 = min(sc.ks)
    choices = tuple(f"choose/{t}-h{h:g}" for t in sc.tails for h in sc.hard_weights)
    stages = [Stage("tokenizer", "tokenizer", ctx, (), 0.05)]
    for s in range(seeds):
        p = {**ctx, "seed": s}
        stages += [Stage(f"teacher/s{s}", "teacher", p, ("tokenizer",), 4.0 * sc.teacher_epochs),
                   Stage(f"student/s{s}", "student", p, ("tokenizer",), sc.student_epochs)]
        stages += [Stage(f"cache/s{s}/k{k}", "cache", {**p, "k": k}, (f"teacher/s{s}",), 0.5) for k in sc.ks]
        stages += [Stage(f"cache/s{s}/sample{k}", "cache", {**p, "k": k, "selection": "sample"}, (f"teacher/s{s}",),
                         0.5) for k in sc.sample_ks]
        if s == 0:
            stages += [Stage(name, "choose", {**p, "tail": t, "hard_weight": h}, (f"cache/s0/k{k0}",),
                             1.3 * sc.choice_epochs)
                       for name, (t, h) in zip(choices, [(t, h) for t in sc.tails for h in sc.hard_weights])]
        stages.append(Stage(f"distilled_full/s{s}", "distilled", {**p, "source": "full"},
                            (f"teacher/s{s}",) + choices, 2.5 * sc.student_epochs))
        stages += [Stage(f"distilled_top{k}/s{s}", "distilled", {**p, "source": "topk", "k": k},
                         (f"cache/s{s}/k{k}",) + choices, 1.3 * sc.student_epochs) for k in sc.ks]
        stages += [Stage(f"distilled_sample{k}/s{s}", "distilled", {**p, "source": "sample", "k": k},
                         (f"cache/s{s}/sample{k}",) + choices, 1.3 * sc.student_epochs) for k in sc.sample_ks]
    return stages


def _config(recipe: TrainConfig, arch: str, epochs: int, seed: int, device: str, sc: Scale) -> TrainConfig:
    return replace(recipe, arch=arch, epochs=epochs, seed=seed, device=device,
                   eval_every=max(1, epochs // sc.evals), warmup_epochs=min(recipe.warmup_epochs, 0.2 * epochs))


def _train(name: str, p: dict[str, Any], arch: str, recipe: TrainConfig, epochs: int, objective_of,
           digest: str, meta: dict[str, Any] | None = None) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fit a fresh ``arch`` (seeded) to ``objective_of(model)`` on the training windows, checkpointed (resumable)
    under OUT/models/NAME, validation bits per byte on the curve; returns the model and its result."""
    sc, out, seed = p["scale"], Path(p["out"]), p["seed"]
    tok, w = _tokens(p)
    cfg = _config(recipe, arch, epochs, seed, p["device"], sc)
    torch.manual_seed(seed)
    model = build_model(arch, (sc.seq_len,), tok.get_vocab_size())
    va = w["val"]
    ckpt = model_dir(out, name)
    t0 = time.perf_counter()
    history = fit(model, w["train"].inputs, objective_of(model), cfg, checkpoint=ckpt, resume=True,
                  progress=p["progress"], desc=name, meta={"role": name, "tokenizer": digest, **(meta or {})},
                  metrics=lambda m: {"val_bpb": lm.bits_per_byte(m, va.inputs, va.targets, va.bytes)})
    seconds = time.perf_counter() - t0
    te = w["test"]
    result = {"test_bpb": lm.bits_per_byte(model, te.inputs, te.targets, te.bytes),
              "val_bpb": history[-1]["val_bpb"], "epochs": len(history), "seconds": round(seconds, 2),
              "epoch_seconds": [h["seconds"] for h in history],
              "curve": [[h["epoch"], h["val_bpb"]] for h in history if "val_bpb" in h],
              "parameters": sum(t.numel() for t in model.parameters()), "checkpoint": relative_to(out, ckpt)}
    return model, result


def load_teacher(path: str | Path, tokenizer: str, vocab: int, device: torch.device) -> torch.nn.Module:
    """A teacher checkpoint, checked to share the run's tokenizer and vocabulary."""
    meta = read_meta(path)
    if meta.get("tokenizer") != tokenizer:
        raise DKError(f"teacher {path} was trained with another tokenizer than this run's: a student can only "
                      "learn a teacher's targets over the same vocabulary")
    if int(meta["num_classes"]) != vocab:
        raise DKError(f"teacher {path} predicts {meta['num_classes']} tokens but the tokenizer has {vocab}")
    model, _, _ = load_checkpoint(path, device=device)
    return model.eval()


def _chosen(inputs: dict[str, Any]) -> dict[str, Any]:
    """The tail and hard weight whose choice student did best on validation (ties: the listed order)."""
    tried = [(r["val_bpb"], r["tail"], r["hard_weight"]) for k, r in inputs.items() if k.startswith("choose/")]
    if not tried:
        raise DKError("no tail / hard-weight choice finished")
    bpb, tail, h = min(tried, key=lambda t: t[0])
    return {"tail": tail, "hard_weight": h, "val_bpb": bpb}


def run_stage(stage: Stage, inputs: dict[str, Any]) -> dict[str, Any]:
    p = stage.params
    sc, out, seed = p["scale"], Path(p["out"]), p.get("seed", 0)
    dev = resolve_device(p["device"])
    if stage.kind == "tokenizer":
        c = _corpus(p["data_dir"], sc)
        tok = text.train_tokenizer(c, sc.vocab, out / "tokenizer.json")
        _DATA.pop((str(p["data_dir"]), str(out), sc.seq_len), None)
        _, w = _tokens(p)
        return {"vocab": tok.get_vocab_size(), "digest": text.tokenizer_digest(tok), "corpus": c.digest(),
                "documents": {s: len(getattr(c, s)) for s in ("train", "val", "test")},
                "bytes": {s: c.bytes(s) for s in ("train", "val", "test")},
                "windows": {s: len(w[s]) for s in w}, "tokens": {s: int(w[s].targets.numel()) for s in w},
                "bytes_per_token": {s: w[s].bytes / w[s].targets.numel() for s in w}}
    tok, w = _tokens(p)
    digest, vocab = text.tokenizer_digest(tok), tok.get_vocab_size()
    tr = w["train"]
    if stage.kind in ("teacher", "student"):
        arch, recipe, epochs = ((sc.teacher, TEACHER, sc.teacher_epochs) if stage.kind == "teacher"
                                else (sc.student, STUDENT, sc.student_epochs))
        _, result = _train(stage.name, p, arch, recipe, epochs, lambda m: lm.NextTokens(tr.targets, lambda: m.head_weight),
                           digest)
        return result
    if stage.kind == "cache":
        teacher_path = out / inputs[f"teacher/s{seed}"]["checkpoint"]
        teacher = load_teacher(teacher_path, digest, vocab, dev)
        fp = model_digest(teacher, sc.teacher)
        selection = p.get("selection", "top")
        d = out / "cache" / (f"s{seed}-k{p['k']}" if selection == "top" else f"s{seed}-sample{p['k']}")
        cache = lm.TopKCache(d)
        t0 = time.perf_counter()
        meta = cache.meta()
        key = lm.cache_key(fp, tr.digest(), digest, p["k"], sc.temperature, selection)
        if meta is None or meta.get("key") != key or "top_k_mass" not in meta:
            meta = lm.TopKCache.build(d, teacher, tr.inputs, k=p["k"], temperature=sc.temperature,
                                      teacher_fingerprint=fp, tokens_digest=tr.digest(), tokenizer=digest,
                                      selection=selection, seed=seed)
        return {"k": p["k"], "selection": selection, "bytes_per_token": meta["bytes_per_token"], "bytes": meta["bytes"],
                "seconds": round(time.perf_counter() - t0, 2), "top_k_mass": meta["top_k_mass"],
                "teacher_fingerprint": fp, "dir": relative_to(out, d)}
    if stage.kind in ("choose", "distilled"):
        if stage.kind == "choose":
            tail, hw, epochs, source = p["tail"], p["hard_weight"], sc.choice_epochs, "topk"
            k = min(sc.ks)
        else:
            chosen = _chosen(inputs)
            tail, hw, epochs, source, k = chosen["tail"], chosen["hard_weight"], sc.student_epochs, p["source"], p.get("k")
        if source == "full":
            teacher_path = out / inputs[f"teacher/s{seed}"]["checkpoint"]
            teacher = load_teacher(teacher_path, digest, vocab, dev)
            make = lambda m: lm.TokenDistill(tr.targets, lambda: m.head_weight, lm.FullLogits(teacher, tr.inputs),  # noqa: E731
                                             sc.temperature, 1.0, hw)
            meta = {"source": "full", "hard_weight": hw, "teacher": relative_to(out, teacher_path)}
        else:
            selection = "sample" if source == "sample" else "top"
            if selection == "sample":
                tail = "renorm"  # the draws' shares sum to 1: no tail to handle
            c = inputs[f"cache/s{seed}/{'sample' if selection == 'sample' else 'k'}{k}"]
            # the teacher the cache stage measured: a rebuilt cache must match it
            idx, logp = lm.TopKCache(out / c["dir"]).load(teacher_fingerprint=c["teacher_fingerprint"],
                                                          tokens_digest=tr.digest(), tokenizer=digest, k=k,
                                                          temperature=sc.temperature, selection=selection)
            make = lambda m: lm.TokenDistill(tr.targets, lambda: m.head_weight, lm.TopKTargets(idx, logp, tail, selection),  # noqa: E731
                                             sc.temperature, 1.0, hw)
            meta = {"source": f"{selection}{k}", "tail": tail, "hard_weight": hw, "cache": c["dir"]}
        _, result = _train(stage.name, p, sc.student, STUDENT, epochs, make, digest, meta)
        return {**result, **{k_: v for k_, v in meta.items() if k_ != "teacher"}, "tail": tail, "hard_weight": hw}
    raise DKError(f"unknown stage kind {stage.kind!r}")


# ---- results --------------------------------------------------------------------------------------------

def summarise(stages: list[Stage], records: dict[str, dict[str, Any]], sc: Scale, seeds: int) -> dict[str, Any]:
    done = {s.name: records[s.name]["result"] for s in stages if records[s.name]["status"] == DONE}
    errors = {s.name: records[s.name]["error"] for s in stages if records[s.name]["status"] == FAILED}
    secs = {s.name: records[s.name].get("seconds", 0.0) for s in stages}

    def per_seed(prefix: str, value=lambda r: r["test_bpb"]) -> tuple[list[float], float | None, dict[str, str]]:
        names = [f"{prefix}/s{s}" for s in range(seeds)]
        got = [k for k in names if k in done]
        return ([value(done[k]) for k in got], float(np.mean([secs[k] for k in got])) if got else None,
                {k: errors[k] for k in names if k in errors})

    roles = list(ROLES) + [f"distilled_top{k}" for k in sc.ks] + [f"distilled_sample{k}" for k in sc.sample_ks]
    notes = {"teacher": f"{sc.teacher}, {sc.teacher_epochs} epochs, next tokens",
             "student": f"{sc.student}, {sc.student_epochs} epochs, next tokens (hard labels)",
             "distilled_full": f"{sc.student} on the teacher's full logits at T = {sc.temperature:g}, on the fly"}
    notes.update({f"distilled_top{k}": f"{sc.student} on the cached top-{k} log-probabilities at T = "
                                       f"{sc.temperature:g} (tail and hard weight chosen on validation)"
                  for k in sc.ks})
    notes.update({f"distilled_sample{k}": f"{sc.student} on a cache of {k} draws per token from the teacher at T = "
                                          f"{sc.temperature:g} (their shares; the chosen hard weight)"
                  for k in sc.sample_ks})
    rows = []
    for role in roles:
        vals, spent, failed = per_seed(role)
        rows.append(values_row(role, "bits_per_byte", None, vals, seeds, seconds=spent, note=notes[role],
                               failed=failed, digits=4))
    pairs = lambda a, b: [done[f"{a}/s{s}"]["test_bpb"] - done[f"{b}/s{s}"]["test_bpb"]  # noqa: E731
                          for s in range(seeds) if f"{a}/s{s}" in done and f"{b}/s{s}" in done]
    for role in roles[2:]:
        rows.append(values_row(f"{role}_minus_student", "bits_per_byte", None, pairs(role, "student"), seeds,
                               note="per seed; below 0: distillation beat hard labels", digits=4))
    for kind, ks, what in (("top", sc.ks, "top-{k} cache"), ("sample", sc.sample_ks, "cache of {k} draws")):
        for k in ks:
            role, cache = f"distilled_{kind}{k}", f"k{k}" if kind == "top" else f"sample{k}"
            rel = [100 * (done[f"{role}/s{s}"]["test_bpb"] / done[f"distilled_full/s{s}"]["test_bpb"] - 1)
                   for s in range(seeds) if f"{role}/s{s}" in done and f"distilled_full/s{s}" in done]
            rows.append(values_row(f"{kind}{k}_vs_full_percent", "relative_bits_per_byte_percent", None, rel, seeds,
                                   note=f"{what.format(k=k)} against full logits, per seed", digits=3))
            b = [done[f"cache/s{s}/{cache}"]["bytes_per_token"] for s in range(seeds) if f"cache/s{s}/{cache}" in done]
            rows.append(values_row(f"cache_{kind}{k}_bytes_per_token", "bytes_per_token", None, b, seeds,
                                   note="safetensors shards on disk per training token", digits=2))
    cost = _teacher_cost(done, sc, seeds)
    choices = {k.split("/", 1)[1]: {"val_bpb": r["val_bpb"], "tail": r["tail"], "hard_weight": r["hard_weight"]}
               for k, r in done.items() if k.startswith("choose/")}
    chosen = _chosen({f"choose/{k}": v for k, v in choices.items()}) if choices else None
    curves = {k: v["curve"] for k, v in done.items() if k.endswith("/s0") and "curve" in v}
    return {"rows": rows, "choices": choices, "chosen": chosen, "teacher_cost": cost, "curves": curves,
            "corpus": done.get("tokenizer"), "teacher_check": []}


def _teacher_cost(done: dict[str, Any], sc: Scale, seeds: int) -> dict[str, Any]:
    """Seconds the teacher costs its students: the caches (paid once) against the full-logit student's extra
    time per epoch over the hard-label student's (paid every epoch of every student)."""
    once = [done[f"cache/s{s}/k{k}"]["seconds"] for s in range(seeds) for k in sc.ks if f"cache/s{s}/k{k}" in done]
    extra = [np.median(done[f"distilled_full/s{s}"]["epoch_seconds"]) - np.median(done[f"student/s{s}"]["epoch_seconds"])
             for s in range(seeds) if f"distilled_full/s{s}" in done and f"student/s{s}" in done]
    top = [np.median(done[f"distilled_top{k}/s{s}"]["epoch_seconds"]) - np.median(done[f"student/s{s}"]["epoch_seconds"])
           for s in range(seeds) for k in sc.ks if f"distilled_top{k}/s{s}" in done and f"student/s{s}" in done]
    return {"cache_seconds_once": float(np.mean(once)) if once else None,
            "on_the_fly_extra_seconds_per_epoch": float(np.mean(extra)) if extra else None,
            "topk_extra_seconds_per_epoch": float(np.mean(top)) if top else None}


def preface(results: dict[str, Any]) -> list[str]:
    sc = results["scale_config"]
    c = results.get("corpus") or {}
    lines = [f"Teacher {sc['teacher']}, student {sc['student']}, BPE vocabulary {sc['vocab']}, windows of "
             f"{sc['seq_len']} tokens, T = {sc['temperature']}.", ""]
    if c:
        lines += [f"Corpus: {c['documents']['train']} / {c['documents']['val']} / {c['documents']['test']} documents, "
                  f"{c['bytes']['train']:,} / {c['bytes']['val']:,} / {c['bytes']['test']:,} bytes (train / val / "
                  f"test), {c['bytes_per_token']['train']:.2f} bytes per token.", ""]
    lines += ["Not in the paper: its loss at T applied at every token position (the paper's column is empty).", ""]
    return lines


def markdown(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if results["choices"]:
        lines += ["", "Chosen on the validation split (seed 0's teacher, the smallest k's cache, "
                  "validation bits per byte):", "", "| tail | hard weight | validation bpb |", "|---|---|---|"]
        for v in sorted(results["choices"].values(), key=lambda v: v["val_bpb"]):
            lines.append(f"| {v['tail']} | {v['hard_weight']:g} | {v['val_bpb']:.4f} |")
    cost = results["teacher_cost"]
    if cost["cache_seconds_once"] is not None:
        lines += ["", f"Teacher cost: a top-k cache took {cost['cache_seconds_once']:.1f} s once; on the fly the "
                  f"full-logit student spent {cost['on_the_fly_extra_seconds_per_epoch'] or 0:.1f} s more per epoch "
                  "than the hard-label student (every epoch, every student), a cached top-k student "
                  f"{cost['topk_extra_seconds_per_epoch'] or 0:.1f} s."]
    lines += ["", "Plot: `curves.png`, validation bits per byte by epoch (seed 0)."]
    return lines


def plots(results: dict[str, Any], out: Path) -> list[Path]:
    curves = results.get("curves") or {}
    if not curves:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, curve in sorted(curves.items()):
        if curve:
            e, v = zip(*curve)
            ax.plot(e, v, marker="o", label=name.rsplit("/", 1)[0])
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation bits per byte")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return [save_figure(fig, out / "curves.png")]


EXPERIMENT = Experiment(
    name="lm", title="Token-level distillation of a causal language model (beyond the paper)", scales=SCALES,
    check_data=_check_data, stages=build_stages, run_stage=run_stage, summarise=summarise, markdown=markdown,
    plots=plots, precision=TEACHER.precision, preface=preface,
    configs=lambda sc: {"teacher": TEACHER, "student": STUDENT},
    owners={"scale.tails": ("choose", "distilled"), "scale.hard_weights": ("choose", "distilled")})
