"""Text for the language models: a corpus split by file, a byte-level BPE tokenizer trained on its training
split (the ``tokenizers`` package), and token windows.

A corpus is one text file (split into contiguous 90/5/5% parts by lines) or a directory of text files
(``.py``, ``.txt``, ``.md``, ``.rst``; each file goes whole to train, validation or test by the SHA-256 of its
relative path: 1 in 20 to test, 1 in 20 to validation). The CPython standard library's own source, which every
machine with Python has (``sysconfig.get_paths()["stdlib"]``), is the corpus the reproduction is measured on.
Bits per byte divide the summed cross-entropy of the predicted tokens by the UTF-8 bytes those tokens spell
(``Tokens.token_bytes``: a byte-level token's characters each stand for one byte; special tokens spell none).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from darkknowledge.errors import DKError

SUFFIXES = (".py", ".txt", ".md", ".rst")
SEPARATOR = "<|endoftext|>"  # between files; the only special token
SKIP_DIRS = ("site-packages", "__pycache__", "test", "tests", "idle_test")


@dataclass(frozen=True)
class Corpus:
    """Documents of each split (a document: one file's text, or the single file's part)."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]

    def bytes(self, split: str) -> int:
        return sum(len(d.encode()) for d in getattr(self, split))

    def digest(self) -> str:
        h = hashlib.sha256()
        for split in ("train", "val", "test"):
            for d in getattr(self, split):
                h.update(hashlib.sha256(d.encode()).digest())
            h.update(split.encode())
        return h.hexdigest()


def _split_of(rel: str) -> str:
    bucket = int(hashlib.sha256(rel.encode()).hexdigest(), 16) % 20
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


def read_corpus(path: str | Path, limit_bytes: int = 0) -> Corpus:
    """The corpus at ``path`` (module docstring); ``limit_bytes`` > 0 keeps, in a fixed order, about that many
    training bytes and a tenth as many for validation and for test each."""
    path = Path(path)
    if path.is_file():
        try:
            lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        except (OSError, UnicodeDecodeError) as e:
            raise DKError(f"cannot read text file {path}: {e}") from None
        n = len(lines)
        if n < 20:
            raise DKError(f"{path} has {n} lines; a corpus needs at least 20 to split 90/5/5")
        a, b = int(0.9 * n), int(0.95 * n)
        splits = {"train": ["".join(lines[:a])], "val": ["".join(lines[a:b])], "test": ["".join(lines[b:])]}
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file()
                       and not any(part in SKIP_DIRS for part in p.relative_to(path).parts[:-1]))
        # a fixed order that mixes directories, so a byte limit takes files from everywhere
        files.sort(key=lambda p: hashlib.sha256(str(p.relative_to(path)).encode()).hexdigest())
        splits = {"train": [], "val": [], "test": []}
        used = {"train": 0, "val": 0, "test": 0}
        for p in files:
            split = _split_of(str(p.relative_to(path)))
            cap = limit_bytes if split == "train" else limit_bytes // 10
            if limit_bytes and used[split] >= cap:
                continue
            try:
                text = p.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError):
                continue  # a file that is not UTF-8 text is not part of the corpus
            if text.strip():
                splits[split].append(text)
                used[split] += len(text.encode())
        if not all(splits.values()):
            empty = [k for k, v in splits.items() if not v]
            raise DKError(f"{path}: no {'/'.join(empty)} documents among its {len(files)} text files "
                          f"({', '.join(SUFFIXES)}); a corpus needs files in every split")
    else:
        raise DKError(f"corpus {path} is neither a text file nor a directory")
    return Corpus(path.name, tuple(splits["train"]), tuple(splits["val"]), tuple(splits["test"]))


def train_tokenizer(corpus: Corpus, vocab_size: int, out: str | Path | None = None):
    """A byte-level BPE tokenizer (``tokenizers``) of ``vocab_size`` tokens trained on the training split only,
    written to ``out`` (``tokenizer.json``) if given."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[SEPARATOR], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus.train, trainer=trainer)
    if out is not None:
        from darkknowledge.checkpoint import atomic_write_bytes

        atomic_write_bytes(Path(out), tok.to_str().encode())
    return tok


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # tokenizers raises its own exception types
        raise DKError(f"cannot read tokenizer {path}: {e}") from None


def tokenizer_digest(tok) -> str:
    """SHA-256 of the tokenizer's vocabulary and merges: what teacher, student and cache must share."""
    model = json.loads(tok.to_str())["model"]
    return hashlib.sha256(json.dumps([model.get("vocab"), model.get("merges")], sort_keys=True).encode()).hexdigest()


def token_bytes(tok) -> torch.Tensor:
    """``[V]`` UTF-8 bytes each token spells (byte-level: one per character; the separator: 0)."""
    vocab = tok.get_vocab()
    out = torch.zeros(tok.get_vocab_size(), dtype=torch.int64)
    for token, i in vocab.items():
        out[i] = 0 if token == SEPARATOR else len(token)
    return out


@dataclass(frozen=True)
class Tokens:
    """One split as windows: ``inputs [N, S]`` and ``targets [N, S]`` (the next token of each), int64."""

    inputs: torch.Tensor
    targets: torch.Tensor
    bytes: int  # UTF-8 bytes the target tokens spell

    def __len__(self) -> int:
        return len(self.inputs)

    def digest(self) -> str:
        h = hashlib.sha256()
        for t in (self.inputs, self.targets):
            h.update(t.numpy().astype(np.int32).tobytes())
        return h.hexdigest()


def windows(tok, docs: tuple[str, ...], seq_len: int) -> Tokens:
    """The documents encoded, joined by the separator, cut into non-overlapping windows of ``seq_len`` + 1
    tokens (inputs: the first ``seq_len``, targets: the last ``seq_len``)."""
    sep = tok.token_to_id(SEPARATOR)
    ids: list[int] = []
    for enc in tok.encode_batch(list(docs)):
        ids.extend(enc.ids)
        ids.append(sep)
    stream = torch.tensor(ids, dtype=torch.int64)
    n = (len(stream) - 1) // seq_len
    if n < 1:
        raise DKError(f"{len(stream)} tokens make no window of {seq_len + 1}")
    idx = torch.arange(n)[:, None] * seq_len + torch.arange(seq_len + 1)[None]
    w = stream[idx]
    targets = w[:, 1:].contiguous()
    return Tokens(w[:, :-1].contiguous(), targets, int(token_bytes(tok)[targets].sum()))
