"""The one training loop, for hard labels and for distillation alike.

``fit`` reads top to bottom: shuffle, (jitter), forward, objective, backward, SGD step, weight
constraint; evaluate and checkpoint once per epoch. Every source of randomness (shuffling, jitter,
dropout) is reseeded from ``(seed, epoch)`` at the start of each epoch, so a run resumed from an
epoch checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from darkknowledge.checkpoint import OPTIM_PREFIX, load_into, read_checkpoint, save_checkpoint
from darkknowledge.config import DistillConfig, TrainConfig
from darkknowledge.data import apply_views, background_value, channel_stats, gather_views, pad_for_jitter, view_count
from darkknowledge.errors import INTERRUPTED, DKError
from darkknowledge.evaluation import errors_from_logits
from darkknowledge.fused import FusedMLPStep
from darkknowledge.losses import (
    distillation_loss,
    distillation_loss_and_grad,
    logit_matching_loss,
    logit_matching_loss_and_grad,
)
from darkknowledge.models import apply_constraints, build_model
from darkknowledge.teachers import predict_logits


def cpu_supports_bf16() -> bool:
    """Whether this CPU has native bf16 arithmetic (x86 AVX512-BF16 or AMX, Arm BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:  # not Linux: no cheap way to ask, so do not assume it
        return False
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & set(flags))


def resolve_precision(name: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the device computes it natively (and accuracy holds: see the README),
    else ``fp32``; ``fp32`` and ``bf16`` are taken as given."""
    if name != "auto":
        return name
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_supports_bf16() else "fp32"
    return "fp32"


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for an absent CUDA device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DKError(f"device {name!r} requested but CUDA is not available here")
    return torch.device(name)


@dataclass(frozen=True)
class HardLabels:
    """Ordinary cross-entropy with the true labels (the baseline students and the teacher)."""

    labels: torch.Tensor  # [N]

    def to(self, device: torch.device) -> "HardLabels":
        return HardLabels(self.labels.to(device))

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.labels[idx])

    def loss_and_grad(self, logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return distillation_loss_and_grad(logits, None, 1.0, self.labels[idx], soft_weight=0.0, hard_weight=1.0)


@dataclass(frozen=True)
class SoftTargets:
    """The distillation objective (paper section 2) against precomputed teacher soft targets."""

    targets: torch.Tensor  # [N, C] teacher probabilities at config.temperature; [N * views, C] with views
    labels: torch.Tensor  # [N], -1 where unlabelled; repeated per view like the targets
    config: DistillConfig
    # > 1: one target per view of each example, row n * views + code, where code is the view ``fit`` drew for
    # it (``data.gather_views``); ``views`` must be ``data.view_count(jitter, flip)``.
    views: int = 1
    # A bank of augmented views [V, N] (view codes, ``data.apply_views``): ``fit`` shows example n in the view
    # of a random slot v, and its target is row v * N + n (the teacher's on exactly that view).
    bank_codes: torch.Tensor | None = None

    def to(self, device: torch.device) -> "SoftTargets":
        codes = None if self.bank_codes is None else self.bank_codes.to(device)
        return SoftTargets(self.targets.to(device), self.labels.to(device), self.config, self.views, codes)

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        c = self.config
        return distillation_loss(logits, self.targets[idx], c.temperature, self.labels[idx],
                                 soft_weight=c.soft_weight, hard_weight=c.hard_weight)

    def loss_and_grad(self, logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return distillation_loss_and_grad(logits, self.targets[idx], c.temperature, self.labels[idx],
                                          soft_weight=c.soft_weight, hard_weight=c.hard_weight)


@dataclass(frozen=True)
class MatchLogits:
    """Caruana/Ba logit matching: squared error to the teacher's logits (paper section 2.1).

    Divided by the class count N: in the high-temperature limit the T^2-scaled soft-target gradient
    is (z - v) / N, so with this scale logit matching and distillation share a learning rate.
    """

    teacher_logits: torch.Tensor  # [N, C]

    def to(self, device: torch.device) -> "MatchLogits":
        return MatchLogits(self.teacher_logits.to(device))

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logit_matching_loss(logits, self.teacher_logits[idx]) / logits.shape[-1]

    def loss_and_grad(self, logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = logit_matching_loss_and_grad(logits, self.teacher_logits[idx])
        return loss / logits.shape[-1], grad / logits.shape[-1]


Objective = HardLabels | SoftTargets | MatchLogits


class Sampler(Protocol):
    """An epoch's order of examples: ``len(sampler)`` indices, drawn with the epoch's generator."""

    def __len__(self) -> int: ...

    def __call__(self, generator: torch.Generator) -> torch.Tensor: ...


def new_model(cfg: TrainConfig, in_shape: int | tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``cfg.arch`` for inputs of ``in_shape`` with weights initialised from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.arch, in_shape, num_classes)


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63 - 1)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of SGD step ``step``: linear warm-up for ``cfg.warmup_epochs``, then the schedule."""
    total = cfg.epochs * steps_per_epoch
    warmup = min(round(cfg.warmup_epochs * steps_per_epoch), total)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def compiled(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``model`` through torch.compile (same parameters); a backend that cannot build here is a DKError."""
    fn = torch.compile(model)

    def forward(x: torch.Tensor) -> torch.Tensor:
        try:
            return fn(x)
        except torch._dynamo.exc.BackendCompilerFailed as e:
            reason = (str(e.inner_exception).strip().splitlines() or [""])[0]
            raise DKError(f"torch.compile failed on this machine ({type(e.inner_exception).__name__}: {reason}); "
                          "train without --compile") from None

    return forward


def _optim_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{OPTIM_PREFIX}{i}.{k}": v for i, s in opt.state_dict()["state"].items()
            for k, v in s.items() if torch.is_tensor(v)}


def _restore_optim(opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> None:
    state = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, v in extra.items():
        i, k = name[len(OPTIM_PREFIX):].split(".", 1)
        p = params[int(i)]
        if v.shape == p.shape:  # momentum in its parameter's memory layout (channels-last convolutions):
            v = torch.empty_like(p).copy_(v)  # the fused SGD kernel walks both as one flat buffer
        state["state"].setdefault(int(i), {})[k] = v
    opt.load_state_dict(state)


def make_sgd(params, cfg: TrainConfig, device: torch.device) -> torch.optim.SGD:
    """SGD with momentum; PyTorch's fused kernel (one pass per tensor) on CPU and CUDA."""
    params = list(params)
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # older PyTorch: no fused CPU kernel
            pass
    return torch.optim.SGD(params, **kwargs)


def autograd_step(model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
                  objective: "Objective", precision: str, grad_clip: float):
    """The generic step for any ``nn.Module``: autocast forward, autograd backward, SGD, constraints."""
    device_type = next(model.parameters()).device.type
    state: dict[str, torch.Tensor | None] = {"grad_norm": None}

    def step(xb: torch.Tensor, idx: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = objective(forward(xb), idx)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            state["grad_norm"] = nn.utils.clip_grad_norm_(model.parameters(), grad_clip, foreach=True)
        opt.step()
        apply_constraints(model)
        return loss.detach().float()

    step.state = state  # type: ignore[attr-defined]
    return step


# Settings that do not change the trained weights: a run may resume with other values.
_RESUME_FREE = ("device", "eval_every")


def fit(
    model: nn.Module,
    x: torch.Tensor,
    objective: Objective,
    cfg: TrainConfig,
    *,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    x_train_eval: torch.Tensor | None = None,
    y_train_eval: torch.Tensor | None = None,
    checkpoint: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    resume: bool = False,
    desc: str = "train",
    progress: bool = True,
    sampler: "Sampler | None" = None,
) -> list[dict[str, Any]]:
    """Train ``model`` on inputs ``x [N, H, W]`` against ``objective`` for ``cfg.epochs`` epochs.

    An ``MLP`` trains through ``FusedMLPStep`` (explicit matmuls, closed-form logit gradients, fused
    SGD) unless ``cfg.fused`` is off; any other module through autograd. ``cfg.precision`` ``auto``
    picks bf16 where the device computes it natively.

    Args:
        model: the network to train (a registry architecture: ``cfg.arch``).
        x: transfer/training inputs; moved once to ``cfg.device`` and kept there.
        objective: ``HardLabels``, ``SoftTargets`` or ``MatchLogits`` over the same N examples.
        cfg: optimisation settings.
        x_test, y_test: if given, test errors are measured every ``cfg.eval_every`` epochs and after the last.
        x_train_eval, y_train_eval: if given, training-set errors too (on these un-augmented examples), the
            same epochs: ``train_errors`` (how far a run overfits).
        checkpoint: directory written atomically after every epoch (weights, optimiser, history).
        meta: extra JSON fields stored in the checkpoint (data source, teacher, distill config...).
        resume: continue from ``checkpoint`` if it holds an unfinished run of the same config.
        desc, progress: progress-bar label and switch.
        sampler: the order of examples in each epoch (``len(sampler)`` indices into ``x`` from
            ``sampler(generator)``, e.g. the specialists' half-special batches); default: a permutation of all.

    Returns:
        The per-epoch history: ``[{"epoch", "loss", "loss_max", "seconds", "test_errors"?, ...}, ...]``;
        ``loss_max`` is the largest single-batch loss of the epoch (a spike shows there first), and
        with ``grad_clip`` on, ``grad_norm_max``, ``grad_norm_mean`` (before clipping) and ``clipped_steps``
        say how often clipping acted.
    """
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    model.to(device)
    objective = objective.to(device)
    if x_test is not None:
        x_test, y_test = x_test.to(device), y_test.to(device)
    with torch.no_grad():  # eval mode: a one-image probe must not move batch-norm statistics
        was_training = model.training
        probe = x[:1].to(device)
        num_classes = int(model.eval()(probe if probe.dtype == torch.uint8 else probe.float()).shape[-1])
        model.train(was_training)
    opt = make_sgd(model.parameters(), cfg, device)
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in _RESUME_FREE}
    train_cfg["precision"] = precision  # as resolved: "auto" may mean another thing on another machine
    history: list[dict[str, Any]] = []
    start = 0
    background = background_value(x)  # the input shift of a fresh MLP and the fill of jittered views
    if resume and checkpoint is not None and (Path(checkpoint) / "model.json").is_file():
        weights, saved_meta, extra = read_checkpoint(checkpoint, expected_arch=cfg.arch)
        # A setting added after the checkpoint was written counts as its default (old runs resume).
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in _RESUME_FREE}
        saved_cfg = {**defaults, **{k: v for k, v in saved_meta.get("train_config", {}).items()
                                    if k not in _RESUME_FREE}}
        if saved_cfg != train_cfg:
            changed = sorted(k for k in train_cfg.keys() | saved_cfg.keys() if saved_cfg.get(k) != train_cfg.get(k))
            raise DKError(f"cannot resume {checkpoint}: it was trained with different settings ({', '.join(changed)})")
        # The objective's settings too (temperature, transfer set, teacher weights...): JSON-normalised.
        wanted = json.loads(json.dumps(meta or {}))
        changed = sorted(k for k, v in wanted.items() if saved_meta.get(k) != v)
        if changed:
            raise DKError(f"cannot resume {checkpoint}: it was trained with different settings ({', '.join(changed)})")
        load_into(model, weights, str(checkpoint), cfg.arch)
        _restore_optim(opt, {k: v.to(device) for k, v in extra.items()})
        start, history = int(saved_meta["epoch"]), list(saved_meta["history"])
    elif hasattr(model, "calibrate_input"):
        model.calibrate_input(background)  # a fresh start: the input shift is the inputs' background
    elif hasattr(model, "calibrate_norm") and x.dim() == 4:
        model.calibrate_norm(*channel_stats(x))  # images: the training inputs' per-channel statistics

    fused = cfg.fused and not cfg.compile and FusedMLPStep.supports(model)  # --compile asks for autograd
    if fused:
        step_fn = FusedMLPStep(model, opt, torch.bfloat16 if precision == "bf16" else torch.float32, cfg.grad_clip)
        # The inputs live on the device in the compute dtype: half the bytes to gather per batch in bf16.
        x = x.to(device, torch.bfloat16 if precision == "bf16" else torch.float32)

        def step(xb, idx, gen):
            return step_fn(xb, lambda z: objective.loss_and_grad(z, idx), gen)

        def grad_norm():
            return step_fn.last_grad_norm
    else:
        x = x.to(device)
        step = autograd_step(model, compiled(model) if cfg.compile else model, opt, objective, precision,
                             cfg.grad_clip)

        def grad_norm():
            return step.state["grad_norm"]
    views = getattr(objective, "views", 1)
    if views > 1 and views != view_count(cfg.jitter, cfg.flip):
        raise DKError(f"the objective has targets for {views} views, but jitter {cfg.jitter} and flip {cfg.flip} "
                      f"draw {view_count(cfg.jitter, cfg.flip)}")
    bank = getattr(objective, "bank_codes", None)
    if bank is not None and (bank.shape[1] != len(x) or int(bank.max()) >= view_count(cfg.jitter, cfg.flip)):
        raise DKError(f"the objective's view bank {tuple(bank.shape)} does not fit {len(x)} examples with jitter "
                      f"{cfg.jitter} and flip {cfg.flip}")
    # Padded once (with the background level): a batch is then one index_select, jittered or not.
    source = pad_for_jitter(x, cfg.jitter, background)
    n, bs = len(x), cfg.batch_size
    shown = len(sampler) if sampler is not None else n  # examples per epoch
    steps_per_epoch = math.ceil(shown / bs)
    bar = tqdm(range(start, cfg.epochs), desc=desc, initial=start, total=cfg.epochs, disable=not progress,
               unit="epoch", leave=False, mininterval=0.5)
    for epoch in bar:
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout on the autograd path
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch))
        model.train()
        perm = sampler(gen) if sampler is not None else torch.randperm(n, device=device, generator=gen)
        # Running sums stay on the device: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        loss_max = torch.full((), -math.inf, device=device)
        norm_max = torch.zeros((), device=device)
        norm_sum = torch.zeros((), device=device)
        clipped = torch.zeros((), device=device)
        for i, step_index in enumerate(range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)):
            idx = perm[i * bs:(i + 1) * bs]
            if bank is not None:  # a random slot of the bank: the view and its target go together
                slot = torch.randint(0, len(bank), (len(idx),), device=device, generator=gen)
                xb = apply_views(source, idx, bank[slot, idx], cfg.jitter, cfg.flip)
                idx = slot * n + idx
            elif views > 1:  # the objective's row for each example is the view it was drawn in
                xb, code = gather_views(source, idx, cfg.jitter, cfg.flip, gen, return_code=True)
                idx = idx * views + code
            else:
                xb = gather_views(source, idx, cfg.jitter, cfg.flip, gen)
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step_index, steps_per_epoch)
            loss = step(xb, idx, gen)
            loss_sum += loss * len(idx)
            torch.maximum(loss_max, loss, out=loss_max)
            if cfg.grad_clip > 0:
                g = grad_norm()
                torch.maximum(norm_max, g, out=norm_max)
                norm_sum += g
                clipped += g > cfg.grad_clip
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(loss_sum) / shown, "loss_max": float(loss_max)}
        if cfg.grad_clip > 0:
            record.update(grad_norm_max=round(float(norm_max), 4),
                          grad_norm_mean=round(float(norm_sum) / steps_per_epoch, 4), clipped_steps=int(clipped))
        if not math.isfinite(record["loss"]):
            raise DKError(f"{desc}: training diverged (loss {record['loss']}) in epoch {epoch + 1}; "
                          f"lower the learning rate (lr {cfg.lr}) or clip the gradient norm "
                          f"(grad_clip {cfg.grad_clip or 'off'})")
        if x_test is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record["test_errors"] = errors_from_logits(predict_logits(model, x_test), y_test, num_classes)["errors"]
            if x_train_eval is not None:
                record["train_errors"] = errors_from_logits(predict_logits(model, x_train_eval.to(device)),
                                                            y_train_eval.to(device), num_classes)["errors"]
        record["seconds"] = round(time.perf_counter() - t0, 4)
        history.append(record)
        bar.set_postfix({k: v for k, v in record.items() if k in ("loss", "test_errors")}, refresh=False)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, {
                **(meta or {}), "arch": cfg.arch, "in_features": int(x[0].numel()), "in_shape": list(x.shape[1:]),
                "num_classes": num_classes,
                "epoch": epoch + 1, "epochs": cfg.epochs, "train_config": train_cfg, "history": history,
            }, extra=_optim_tensors(opt))
        if INTERRUPTED.is_set():  # a Ctrl-C whose KeyboardInterrupt was swallowed (errors.INTERRUPTED)
            raise KeyboardInterrupt
    bar.close()
    return history
