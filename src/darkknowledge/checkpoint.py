"""Checkpoints: safetensors weights + a JSON sidecar, written atomically, loaded without unpickling.

A checkpoint is a directory holding ``model.safetensors`` and ``model.json``. The JSON names the
architecture, the input and output sizes, the training config and progress, and the SHA-256 of the
weights file, so a torn pair (weights from one run, JSON from another) is detected on load. Tensors
whose names start with ``optim.`` are optimiser state kept for resuming, not model weights.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save
from torch import nn

from darkknowledge.errors import DKError
from darkknowledge.models import build_model

WEIGHTS, META = "model.safetensors", "model.json"
_UMASK = os.umask(0)
os.umask(_UMASK)
OPTIM_PREFIX = "optim."


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def checkpoint_dir(path: str | Path) -> Path:
    """Accept the checkpoint directory or either of its two files."""
    path = Path(path)
    return path.parent if path.name in (WEIGHTS, META) else path


def save_checkpoint(path: str | Path, model: nn.Module, meta: dict[str, Any],
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write weights (plus ``extra`` tensors, e.g. optimiser state) and ``meta`` atomically.

    ``meta`` must carry ``arch``, ``in_features`` and ``num_classes`` so the model can be rebuilt.
    The weights file is replaced first; the JSON, which records its hash, second.
    """
    for key in ("arch", "in_features", "num_classes"):
        if key not in meta:
            raise ValueError(f"checkpoint meta needs {key!r}")
    d = checkpoint_dir(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors.update({k: v.detach().cpu().contiguous() for k, v in (extra or {}).items()})
    blob = st_save(tensors, metadata={"arch": str(meta["arch"])})
    atomic_write_bytes(d / WEIGHTS, blob)
    atomic_write_json(d / META, {**meta, "weights_sha256": hashlib.sha256(blob).hexdigest()})
    return d


def read_meta(path: str | Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint, checked for the keys needed to rebuild the model."""
    d = checkpoint_dir(path)
    if not (d / META).is_file():
        raise DKError(f"no checkpoint at {d} ({META} not found)")
    try:
        meta = json.loads((d / META).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DKError(f"corrupt checkpoint metadata {d / META}: {e}") from None
    missing = [k for k in ("arch", "in_features", "num_classes", "weights_sha256") if k not in meta]
    if not isinstance(meta, dict) or missing:
        raise DKError(f"corrupt checkpoint metadata {d / META}: missing {missing}")
    return meta


def read_checkpoint(path: str | Path, expected_arch: str | None = None
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]]:
    """``(weights, meta, extra)`` of a checkpoint, checked (hash, architecture), without building a model:
    how a user's own module (``custom:NAME``) resumes. ``extra`` holds the optimiser state."""
    d = checkpoint_dir(path)
    meta = read_meta(d)
    if expected_arch is not None and meta["arch"] != expected_arch:
        raise DKError(f"checkpoint {d} is a {meta['arch']!r} model, expected {expected_arch!r}")
    try:
        blob = (d / WEIGHTS).read_bytes()
    except OSError as e:
        raise DKError(f"cannot read checkpoint weights {d / WEIGHTS}: {e}") from None
    if hashlib.sha256(blob).hexdigest() != meta["weights_sha256"]:
        raise DKError(f"checkpoint {d}: {WEIGHTS} does not match {META} (hash differs; torn or edited checkpoint)")
    try:
        tensors = st_load(blob)
    except (SafetensorError, ValueError) as e:
        raise DKError(f"corrupt checkpoint weights {d / WEIGHTS}: {e}") from None
    weights = {k: v for k, v in tensors.items() if not k.startswith(OPTIM_PREFIX)}
    extra = {k: v for k, v in tensors.items() if k.startswith(OPTIM_PREFIX)}
    return weights, meta, extra


def load_into(model: nn.Module, weights: dict[str, torch.Tensor], where: str, arch: str) -> nn.Module:
    """Load checkpoint ``weights`` into ``model``; a mismatch is a DKError naming the checkpoint."""
    if "input_shift" in model.state_dict() and "input_shift" not in weights:
        weights = {**weights, "input_shift": torch.zeros(())}  # saved before MLPs had an input shift: they had none
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise DKError(f"checkpoint {where} does not fit architecture {arch!r}: {first}") from None
    return model


def load_checkpoint(path: str | Path, expected_arch: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any], dict[str, torch.Tensor]]:
    """Rebuild the model of a checkpoint and load its weights.

    Returns ``(model, meta, extra)`` where ``extra`` holds the non-model tensors (optimiser state).
    Raises DKError if the checkpoint is missing, corrupt, torn, or of another architecture.
    """
    weights, meta, extra = read_checkpoint(path, expected_arch)
    model = build_model(meta["arch"], meta.get("in_shape") or int(meta["in_features"]), int(meta["num_classes"]))
    return load_into(model, weights, str(checkpoint_dir(path)), meta["arch"]).to(device), meta, extra


# Settings that do not change the trained weights: a run may resume with other values.
RESUME_FREE = ("device", "eval_every")


# Meta keys added after checkpoints were first written, with the value an older checkpoint had: a run
# written before ``val_size`` was recorded trained on every training image.
META_DEFAULTS: dict[str, Any] = {"val_size": 0}


def resume_state(path: str | Path, arch: str, train_config: dict[str, Any], defaults: dict[str, Any],
                 meta: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any], dict[str, torch.Tensor]] | None:
    """``(weights, meta, extra)`` of the unfinished run in ``path`` to continue, or None where there is none.

    The run must have been trained with the same settings: ``train_config`` (the ``TrainConfig`` as a dict,
    its ``RESUME_FREE`` keys left out; a key added after the checkpoint was written counts as its entry in
    ``defaults``, so old runs resume) and every key of ``meta`` (the objective's settings: temperature,
    transfer set, teacher...), compared JSON-normalised. Anything else is a DKError naming what changed.
    """
    if not (Path(path) / META).is_file():
        return None
    weights, saved_meta, extra = read_checkpoint(path, expected_arch=arch)
    saved = {**defaults, **{k: v for k, v in saved_meta.get("train_config", {}).items() if k not in RESUME_FREE}}
    changed = sorted(k for k in train_config.keys() | saved.keys() if saved.get(k) != train_config.get(k))
    wanted = json.loads(json.dumps(meta))
    changed += sorted(k for k, v in wanted.items() if saved_meta.get(k, META_DEFAULTS.get(k)) != v)
    if changed:
        raise DKError(f"cannot resume {path}: it was trained with different settings ({', '.join(changed)})")
    return weights, saved_meta, extra
