"""Token-level distillation of causal language models: the paper's loss at T at every position.

A causal LM here is any module whose ``forward(tokens [B, S])`` gives hidden states ``[B, S, D]`` and whose
``head_weight`` ``[V, D]`` maps them to logits: the registry's ``gpt-{D}x{L}`` (``TinyGPT``), or a Hugging
Face causal LM behind ``HFCausalLM``. The loss never builds the ``[B, S, V]`` logits: ``chunked_loss`` walks
the positions in chunks, taking each chunk's gradients as it goes and freeing its logits before the next, so
its peak memory beyond the hidden states and the head is one chunk's logits, whatever the vocabulary
(``benchmarks/lm_loss_memory.py``).

The teacher's targets come either on the fly (``FullLogits``: the teacher runs on every batch, every logit
used) or from a sparse cache computed once (``TopKCache``: per token the k largest of the teacher's
log-probabilities at T and their token ids, in safetensors shards; fp16 values and int16/int32 ids, 4 bytes a
slot where the vocabulary fits int16). The mass outside the top k is handled by ``tail``:

- ``renorm``: dropped, the top k renormalised (what most offline caches do);
- ``spread``: spread evenly over the other V - k tokens (the teacher's tail as a uniform floor);
- ``bucket``: one extra category, the student's own mass outside the teacher's top k against the teacher's.

Or the cache holds k *draws* from the teacher's distribution at T instead of its top k (``selection="sample"``,
random-sampling distillation, Anshumann et al. 2025): per token the distinct tokens drawn and their share of
the k draws. The student's loss against that empirical distribution has, in expectation over the draws, the
gradient of the full KL: nothing is cut off, so no tail needs handling, at the same bytes per slot.

Every objective is ``T^2 * KL(p_T || q_T)`` per position (the constant teacher entropy included, so the value
is a KL) weighted by ``soft_weight``, plus ``hard_weight`` times the next-token cross-entropy at T = 1,
averaged over positions: ``losses.distillation_loss`` applied per token.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch
import torch.nn.functional as F
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

from darkknowledge.checkpoint import atomic_write_bytes, atomic_write_json
from darkknowledge.errors import DKError

TAILS = ("renorm", "spread", "bucket")
SELECTIONS = ("top", "sample")  # what a cache keeps of each token's distribution: its top k, or k draws
CHUNK = 1024  # positions per loss chunk: [CHUNK, V] logits at a time


# ---- models -----------------------------------------------------------------------------------------------

class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention (PyTorch's fused attention) and a 4x GELU MLP."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc, self.out = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.proj(a.transpose(1, 2).reshape(b, s, d)))
        return x + self.drop(self.out(F.gelu(self.fc(self.norm2(x)))))


class TinyGPT(nn.Module):
    """A small decoder-only transformer: learned token and position embeddings, ``layers`` pre-norm blocks,
    a final norm, the output head tied to the token embedding (GPT-2's shape, written here)."""

    def __init__(self, vocab: int, dim: int, layers: int, max_len: int, heads: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        heads = heads or max(1, dim // 64)
        if dim % heads:
            raise DKError(f"width {dim} is not a multiple of its {heads} heads")
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.output_classes = vocab
        self.max_len = max_len
        for name, p in self.named_parameters():
            if p.dim() > 1:
                std = 0.02 / math.sqrt(2 * layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    @property
    def head_weight(self) -> torch.Tensor:
        return self.tok.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] > self.max_len:
            raise DKError(f"sequences of {x.shape[1]} tokens exceed this model's {self.max_len}")
        h = self.drop(self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device)))
        for block in self.blocks:
            h = block(h)
        return self.norm(h)

    def param_groups(self) -> list[dict[str, Any]]:
        """Matrices decay; embeddings, norms and biases do not (``training.param_groups``)."""
        decay = [p for n, p in self.named_parameters() if p.dim() > 1 and not n.startswith(("tok.", "pos."))]
        rest = [p for n, p in self.named_parameters() if not (p.dim() > 1 and not n.startswith(("tok.", "pos.")))]
        return [{"params": decay, "lr_scale": 1.0}, {"params": rest, "lr_scale": 1.0, "decay": False}]


class HFCausalLM(nn.Module):
    """A Hugging Face causal LM as the loss expects one: hidden states out (its last layer's, after the final
    norm, computing only the last position's logits where the model supports ``logits_to_keep``) and its
    output embedding as ``head_weight``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        head = model.get_output_embeddings()
        if head is None or getattr(head, "bias", None) is not None:
            raise DKError(f"{type(model).__name__} has no bias-free output embedding to distil through")
        self.model = model
        self.output_classes = int(head.weight.shape[0])

    @property
    def head_weight(self) -> torch.Tensor:
        return self.model.get_output_embeddings().weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self.model(input_ids=x, output_hidden_states=True, logits_to_keep=1)
        except TypeError:  # an older model without logits_to_keep
            out = self.model(input_ids=x, output_hidden_states=True)
        return out.hidden_states[-1]


def as_causal_lm(model: nn.Module) -> nn.Module:
    """``model`` if it already gives hidden states and a ``head_weight``, else a Hugging Face model wrapped."""
    if hasattr(model, "head_weight"):
        return model
    if hasattr(model, "get_output_embeddings"):
        return HFCausalLM(model)
    raise DKError(f"{type(model).__name__} is not a causal LM here: give forward(tokens) -> hidden states with a "
                  "head_weight (like gpt-DxL), or a Hugging Face causal LM")


# ---- the chunked loss ---------------------------------------------------------------------------------------

class _ChunkGrads(torch.autograd.Function):
    """The chunked loss's autograd node: ``forward`` walks the chunks, taking each chunk's loss and its
    gradients for the hidden states and the head at once (one forward and one backward of the chunk, its
    logits freed before the next), and keeps only those gradients, the size of ``h`` and ``w``; ``backward``
    scales them by the incoming gradient. Nothing is recomputed, unlike checkpointing each chunk."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, w: torch.Tensor, chunk_loss: Callable[..., torch.Tensor], chunk: int,
                *ex: torch.Tensor) -> torch.Tensor:
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        gh = torch.zeros_like(h) if need_h else None
        wl = w.detach().requires_grad_(need_w)
        gw = torch.zeros_like(w, dtype=torch.float32) if need_w else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.enable_grad():
            for i in range(0, h.shape[0], chunk):
                hc = h[i:i + chunk].detach().requires_grad_(need_h)
                loss = chunk_loss((hc @ wl.t()).float(), *(e[i:i + chunk] for e in ex))
                wants = [x for x, need in ((hc, need_h), (wl, need_w)) if need]
                grads = iter(torch.autograd.grad(loss, wants))
                if need_h:
                    gh[i:i + chunk] = next(grads)
                if need_w:
                    gw += next(grads)
                total += loss.detach()
        n = h.shape[0]
        ctx.save_for_backward(gh.div_(n) if need_h else None, gw.div_(n).to(w.dtype) if need_w else None)
        return total / n

    @staticmethod
    @once_differentiable  # the saved gradients are constants: a second derivative through them is an error
    def backward(ctx, grad: torch.Tensor):
        gh, gw = ctx.saved_tensors
        return (gh * grad if gh is not None else None, gw * grad if gw is not None else None, None, None,
                *([None] * (len(ctx.needs_input_grad) - 4)))


def chunked_loss(hidden: torch.Tensor, head: torch.Tensor, chunk_loss: Callable[..., torch.Tensor],
                 extras: tuple[torch.Tensor, ...], chunk: int = CHUNK, recompute: bool = False) -> torch.Tensor:
    """Mean over positions of ``chunk_loss(logits [c, V], *extras_chunk) -> summed loss``, where the logits are
    ``hidden @ head.T`` for ``c`` positions at a time: the full ``[P, V]`` logits never exist. With gradients,
    each chunk's gradients are taken as it is computed (``_ChunkGrads``), so the backward pass recomputes
    nothing; with ``recompute`` (taken anyway where an extra needs gradients itself) each chunk is
    checkpointed instead, run again in the backward pass (``torch.utils.checkpoint``: slower, and the only
    path that supports a second derivative; the other refuses one). ``hidden [..., D]`` and each extra ``[..., *]`` are flattened over
    their leading positions."""
    d = hidden.shape[-1]
    h = hidden.reshape(-1, d)
    ex = [e.reshape(h.shape[0], *e.shape[hidden.dim() - 1:]) for e in extras]
    extras_need_grad = any(e.requires_grad for e in ex)
    grad = torch.is_grad_enabled() and (hidden.requires_grad or head.requires_grad or extras_need_grad)
    if grad and not recompute and not extras_need_grad:
        return _ChunkGrads.apply(h, head, chunk_loss, chunk, *ex)

    def part(hc: torch.Tensor, w: torch.Tensor, *ec: torch.Tensor) -> torch.Tensor:
        return chunk_loss((hc @ w.t()).float(), *ec)

    total = hidden.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        args = (h[i:i + chunk], head, *(e[i:i + chunk] for e in ex))
        total = total + (checkpoint(part, *args, use_reentrant=False) if grad else part(*args))
    return total / h.shape[0]


def _hard(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels, reduction="sum")


def sparse_soft_loss(logits: torch.Tensor, idx: torch.Tensor, logp_t: torch.Tensor, temperature: float,
                     tail: str) -> torch.Tensor:
    """Summed ``KL(p_T || q_T)`` of the student's ``logits [c, V]`` against the teacher's top-k ``logp_t
    [c, k]`` (log-probabilities at T of tokens ``idx [c, k]``) with the tail handled by ``tail``."""
    log_q = F.log_softmax(logits / temperature, -1)
    lq_top = log_q.gather(1, idx)
    lp = logp_t.float().clamp_min(-1e4)  # a sampled cache's unused slots are -inf: weight 0, and 0 * (lp - lq) = 0
    if tail == "renorm":
        lp = lp - torch.logsumexp(lp, 1, keepdim=True)
        return (lp.exp() * (lp - lq_top)).sum()
    p = lp.exp()
    p_tail = (1 - p.sum(1)).clamp_min(0)
    kl = (p * (lp - lq_top)).sum()
    rest = logits.shape[1] - idx.shape[1]
    if tail == "spread":  # p_tail / rest on each of the others
        lq_rest_sum = log_q.sum(1) - lq_top.sum(1)
        each = p_tail / rest
        return kl + (p_tail * torch.log(each.clamp_min(1e-30)) - each * lq_rest_sum).sum()
    masked = log_q.scatter(1, idx, float("-inf"))
    lq_tail = torch.logsumexp(masked, 1)
    return kl + (p_tail * (torch.log(p_tail.clamp_min(1e-30)) - lq_tail)).sum()


def sampled_slots(logits: torch.Tensor, k: int, generator: torch.Generator | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """k draws with replacement from ``softmax(logits [P, V])`` per row, as ``(ids [P, k], log_share [P, k])``: the
    draws sorted, each distinct token once with the log of its share of the k draws, repeats ``-inf`` (weight 0).
    The shares are an unbiased estimate of the distribution: ``E[share_j] = p_j``."""
    draws = torch.multinomial(F.softmax(logits.float(), -1), k, replacement=True, generator=generator).sort(-1).values
    first = torch.ones_like(draws, dtype=torch.bool)
    first[:, 1:] = draws[:, 1:] != draws[:, :-1]
    counts = (draws[:, :, None] == draws[:, None, :]).sum(-1).float()  # [P, k, k]: k is small
    return draws, torch.where(first, torch.log(counts / k), torch.full_like(counts, float("-inf")))


def dense_soft_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Summed ``KL(p_T || q_T)`` against the teacher's full ``teacher_logits [c, V]``."""
    lp = F.log_softmax(teacher_logits.float() / temperature, -1)
    return (lp.exp() * (lp - F.log_softmax(logits / temperature, -1))).sum()


# ---- objectives (``training.fit``'s interface) --------------------------------------------------------------

@dataclass(frozen=True)
class NextTokens:
    """Next-token cross-entropy (the hard-label LM loss); ``fit`` passes the model's hidden states."""

    targets: torch.Tensor  # [N, S]
    head: Callable[[], torch.Tensor]  # the student's head_weight, read at every step
    bank: ClassVar[None] = None

    def to(self, device: torch.device) -> "NextTokens":
        return NextTokens(self.targets.to(device), self.head)

    def __call__(self, hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return chunked_loss(hidden, self.head(), _hard, (self.targets[idx],))


@dataclass(frozen=True)
class TokenDistill:
    """``soft_weight * T^2 * KL(p_T || q_T) + hard_weight * CE`` per position, the teacher's targets from
    ``source`` (``FullLogits`` or ``TopKTargets``)."""

    targets: torch.Tensor  # [N, S] next tokens
    head: Callable[[], torch.Tensor]
    source: Any
    temperature: float
    soft_weight: float = 1.0
    hard_weight: float = 0.0
    bank: ClassVar[None] = None

    def to(self, device: torch.device) -> "TokenDistill":
        return TokenDistill(self.targets.to(device), self.head, self.source.to(device), self.temperature,
                            self.soft_weight, self.hard_weight)

    def __call__(self, hidden: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        t, sw, hw = self.temperature, self.soft_weight, self.hard_weight
        extras, soft = self.source.extras(idx)

        def loss(logits: torch.Tensor, labels: torch.Tensor, *ex: torch.Tensor) -> torch.Tensor:
            out = sw * t * t * soft(logits, *ex, t)
            return out + hw * _hard(logits, labels) if hw else out

        return chunked_loss(hidden, self.head(), loss, (self.targets[idx], *extras))


@dataclass(frozen=True)
class FullLogits:
    """The teacher on the fly: its hidden states on each batch, every logit used (chunk by chunk)."""

    teacher: nn.Module
    inputs: torch.Tensor  # [N, S]

    def to(self, device: torch.device) -> "FullLogits":
        return FullLogits(self.teacher.to(device), self.inputs.to(device))

    def extras(self, idx: torch.Tensor):
        self.teacher.eval()
        with torch.no_grad():
            h = self.teacher(self.inputs[idx])
        w = self.teacher.head_weight.detach()
        return (h,), lambda logits, ht, t: dense_soft_loss(logits, ht @ w.t().to(ht.dtype), t)


@dataclass(frozen=True)
class TopKTargets:
    """The teacher's cached top-k log-probabilities at T (``TopKCache.load``), tail by ``tail``."""

    idx: torch.Tensor  # [N, S, k] token ids
    logp: torch.Tensor  # [N, S, k] log-probabilities at the cache's temperature
    tail: str
    selection: str = "top"  # the cache's: a cache of draws repeats ids and has no tail, so it takes renorm only

    def __post_init__(self) -> None:
        if self.tail not in TAILS:
            raise DKError(f"unknown tail {self.tail!r}; allowed: {', '.join(TAILS)}")
        if self.selection == "sample" and self.tail != "renorm":
            raise DKError(f"a cache of draws holds the whole distribution (its shares sum to 1): tail {self.tail!r} "
                          "does not apply to it; use renorm")

    def to(self, device: torch.device) -> "TopKTargets":
        return TopKTargets(self.idx.to(device), self.logp.to(device), self.tail, self.selection)

    def extras(self, rows: torch.Tensor):
        return (self.idx[rows].long(), self.logp[rows]), (
            lambda logits, i, lp, t: sparse_soft_loss(logits, i, lp, t, self.tail))


# ---- the sparse teacher cache -------------------------------------------------------------------------------

CACHE_META = "cache.json"


def cache_key(teacher_fingerprint: str, tokens_digest: str, tokenizer: str, k: int, temperature: float,
              selection: str = "top") -> str:
    fields = [teacher_fingerprint, tokens_digest, tokenizer, k, temperature] + ([selection] if selection != "top" else [])
    return hashlib.sha256(json.dumps(fields).encode()).hexdigest()


class TopKCache:
    """A teacher's top-k log-probabilities at T on every position of a split (or, ``selection="sample"``, the
    shares of k draws from its distribution at T), in safetensors shards under one directory; ``cache.json``
    (written last) names the teacher, tokens, tokenizer, k, T and selection it holds."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    @staticmethod
    def build(directory: str | Path, teacher: nn.Module, inputs: torch.Tensor, *, k: int, temperature: float,
              teacher_fingerprint: str, tokens_digest: str, tokenizer: str, batch_size: int = 64,
              shard_windows: int = 4096, progress: Callable[[int, int], None] | None = None,
              selection: str = "top", seed: int = 0) -> dict[str, Any]:
        """Run ``teacher`` once over ``inputs [N, S]`` and write the cache; returns its ``cache.json``. ``sample``
        draws are seeded by ``seed``."""
        d = Path(directory)
        vocab = int(teacher.head_weight.shape[0])
        if not 0 < k < vocab:
            raise DKError(f"k must be in (0, {vocab}), got {k}")
        if selection not in SELECTIONS:
            raise DKError(f"unknown selection {selection!r}; allowed: {', '.join(SELECTIONS)}")
        gen = torch.Generator(device=teacher.head_weight.device).manual_seed(seed)
        id_dtype = torch.int16 if vocab <= 2 ** 15 else torch.int32
        w = teacher.head_weight.detach()
        device = w.device
        teacher.eval()
        shards, mass = [], 0.0
        step = max(1, CHUNK // batch_size)  # positions per chunk: [batch, step, V] logits at a time
        for s0 in range(0, len(inputs), shard_windows):
            s1 = min(s0 + shard_windows, len(inputs))
            idx_parts, lp_parts = [], []
            for b0 in range(s0, s1, batch_size):
                x = inputs[b0:min(b0 + batch_size, s1)].to(device)
                ids_b, lps_b = [], []
                with torch.no_grad():
                    h = teacher(x).float()
                    for c0 in range(0, h.shape[1], step):
                        z = (h[:, c0:c0 + step] @ w.float().t()) / temperature
                        if selection == "top":
                            top, ids = z.topk(k, -1)
                            lp = top - torch.logsumexp(z, -1, keepdim=True)
                        else:
                            ids, lp = sampled_slots(z.reshape(-1, vocab), k, gen)
                            ids, lp = ids.view(*z.shape[:2], k), lp.view(*z.shape[:2], k)
                        lps_b.append(lp.half().cpu())
                        ids_b.append(ids.to(id_dtype).cpu())
                idx_parts.append(torch.cat(ids_b, 1))
                lp_parts.append(torch.cat(lps_b, 1))
                if progress is not None:
                    progress(min(b0 + batch_size, s1), len(inputs))
            ids, lps = torch.cat(idx_parts), torch.cat(lp_parts)
            mass += float(lps.float().exp().sum(-1).sum())
            name = f"shard-{len(shards):05d}.safetensors"
            atomic_write_bytes(d / name, st_save({"idx": ids.contiguous(), "logp": lps.contiguous()}))
            shards.append({"file": name, "windows": s1 - s0})
        slots = len(inputs) * inputs.shape[1]
        size = sum((d / s["file"]).stat().st_size for s in shards)
        meta = {"key": cache_key(teacher_fingerprint, tokens_digest, tokenizer, k, temperature, selection), "k": k,
                "temperature": temperature, "selection": selection, "vocab": vocab, "windows": len(inputs), "seq_len": inputs.shape[1],
                "teacher": teacher_fingerprint, "tokens": tokens_digest, "tokenizer": tokenizer, "shards": shards,
                "bytes": size, "bytes_per_token": size / slots,
                "top_k_mass": mass / slots}  # the teacher's mean probability inside its top k (a sample: 1)
        atomic_write_json(d / CACHE_META, meta)
        return meta

    def meta(self) -> dict[str, Any] | None:
        path = self.dir / CACHE_META
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DKError(f"corrupt teacher cache {path}: {e}") from None

    def load(self, *, teacher_fingerprint: str, tokens_digest: str, tokenizer: str, k: int,
             temperature: float, selection: str = "top") -> tuple[torch.Tensor, torch.Tensor]:
        """``(idx [N, S, k], logp [N, S, k])``; a cache of another teacher, corpus, tokenizer, k, T or selection is
        a DKError naming what differs."""
        meta = self.meta()
        if meta is None:
            raise DKError(f"no teacher cache at {self.dir} ({CACHE_META} not found)")
        wanted = {"teacher": teacher_fingerprint, "tokens": tokens_digest, "tokenizer": tokenizer, "k": k,
                  "temperature": temperature, "selection": selection}
        names = {"teacher": "another teacher", "tokens": "another corpus or split",
                 "tokenizer": "another tokenizer", "k": "another k", "temperature": "another temperature",
                 "selection": "another selection (top k or draws)"}
        differ = [names[key] for key, v in wanted.items() if meta.get(key, "top" if key == "selection" else None) != v]
        if differ:
            raise DKError(f"teacher cache {self.dir} is of {', '.join(differ)}: build it again for this run")
        parts = []
        for s in meta["shards"]:
            try:
                t = st_load((self.dir / s["file"]).read_bytes())
            except Exception as e:  # a missing or damaged shard
                raise DKError(f"teacher cache shard {self.dir / s['file']} is unreadable: {e}") from None
            parts.append((t["idx"], t["logp"]))
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


# ---- evaluation -----------------------------------------------------------------------------------------------

@torch.no_grad()
def bits_per_byte(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, n_bytes: int,
                  batch_size: int = 64) -> float:
    """Summed next-token cross-entropy over every window, in bits, per UTF-8 byte the targets spell."""
    was = model.training
    model.eval()
    device = model.head_weight.device
    try:
        total = 0.0
        for i in range(0, len(inputs), batch_size):
            h = model(inputs[i:i + batch_size].to(device))
            total += float(chunked_loss(h.float(), model.head_weight.float(), _hard,
                                        (targets[i:i + batch_size].to(device),))) * h.shape[0] * h.shape[1]
    finally:
        model.train(was)
    return total / math.log(2) / n_bytes
