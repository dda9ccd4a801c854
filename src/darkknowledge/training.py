"""The one training loop, for hard labels and for distillation alike.

``fit`` reads top to bottom: shuffle, draw the batch's views (``views``: a fresh random view, or a view of
the objective's bank with the teacher's target on it), one step (``AutogradStep`` or ``FusedMLPStep``,
the same interface: forward, objective, backward, SGD, weight constraint); evaluate and checkpoint once
per epoch (``checkpoint.resume_state`` says whether a checkpoint may be continued). Every source of randomness (shuffling, jitter,
dropout) is reseeded from ``(seed, epoch)`` at the start of each epoch, so a run resumed from an
epoch checkpoint continues exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from darkknowledge.checkpoint import OPTIM_PREFIX, RESUME_FREE, load_into, resume_state, save_checkpoint
from darkknowledge.config import DistillConfig, TrainConfig
from darkknowledge.data import background_value, channel_stats, pad_for_jitter
from darkknowledge.device import resolve_device, resolve_precision
from darkknowledge.errors import INTERRUPTED, DKError, Diverged
from darkknowledge.evaluation import errors_from_logits, predict_logits
from darkknowledge.fused import FusedMLPStep
from darkknowledge.logs import TensorBoardLog
from darkknowledge.losses import (
    distillation_loss,
    distillation_loss_and_grad,
    logit_matching_loss,
    logit_matching_loss_and_grad,
)
from darkknowledge.models import apply_constraints, build_model
from darkknowledge.views import AlternatingFlips, RandomViews, ViewBank, Views


@dataclass(frozen=True)
class HardLabels:
    """Ordinary cross-entropy with the true labels (the baseline students and the teacher)."""

    labels: torch.Tensor  # [N]
    smoothing: float = 0.0  # label smoothing: the target is (1 - s) x the label + s x uniform
    bank: ClassVar[None] = None  # a fresh random view per step (``views.RandomViews``)

    def to(self, device: torch.device) -> "HardLabels":
        return HardLabels(self.labels.to(device), self.smoothing)

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, self.labels[idx], label_smoothing=self.smoothing)

    def loss_and_grad(self, logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.smoothing:
            return distillation_loss_and_grad(logits, None, 1.0, self.labels[idx], soft_weight=0.0, hard_weight=1.0)
        logits = logits.float()
        target = torch.full_like(logits, self.smoothing / logits.shape[-1])
        target.scatter_add_(1, self.labels[idx][:, None], torch.full_like(logits[:, :1], 1 - self.smoothing))
        log_p = F.log_softmax(logits, -1)
        return -(target * log_p).sum(-1).mean(), (log_p.exp() - target) / len(logits)


@dataclass(frozen=True)
class SoftTargets:
    """The distillation objective (paper section 2) against precomputed teacher soft targets."""

    targets: torch.Tensor  # [N, C] teacher probabilities at config.temperature; [V * N, C] with a bank
    labels: torch.Tensor  # [N] (-1 where unlabelled); [V * N] with a bank, repeated per view like the targets
    config: DistillConfig
    # The views the targets were computed on (``views.ViewBank``): ``fit`` shows each example in a view of the
    # bank and scores it against the teacher's target on exactly that view. None: one target per example.
    bank: ViewBank | None = None

    def to(self, device: torch.device) -> "SoftTargets":
        bank = None if self.bank is None else self.bank.to(device)
        return SoftTargets(self.targets.to(device), self.labels.to(device), self.config, bank)

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
    bank: ClassVar[None] = None

    def to(self, device: torch.device) -> "MatchLogits":
        return MatchLogits(self.teacher_logits.to(device))

    def __call__(self, logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return logit_matching_loss(logits, self.teacher_logits[idx]) / logits.shape[-1]

    def loss_and_grad(self, logits: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, grad = logit_matching_loss_and_grad(logits, self.teacher_logits[idx])
        return loss / logits.shape[-1], grad / logits.shape[-1]


# Every objective: ``to(device)``, ``__call__(logits, rows) -> loss`` (autograd), ``loss_and_grad(logits, rows)``
# (the fused step's closed form) and ``bank``, the views its target rows were computed on (None: one per example).
Objective = HardLabels | SoftTargets | MatchLogits


class Sampler(Protocol):
    """An epoch's order of examples: ``len(sampler)`` indices, drawn with the epoch's generator."""

    def __len__(self) -> int: ...

    def __call__(self, generator: torch.Generator) -> torch.Tensor: ...


def new_model(cfg: TrainConfig, in_shape: int | tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``cfg.arch`` for inputs of ``in_shape`` with weights initialised from ``cfg.seed``."""
    torch.manual_seed(cfg.seed)
    return build_model(cfg.arch, in_shape, num_classes)


@torch.no_grad()
def _output_size(model: nn.Module, probe: torch.Tensor) -> int:
    """The model's number of outputs, from one example in eval mode (batch-norm statistics must not move)."""
    was_training = model.training
    out = model.eval()(probe if probe.dtype == torch.uint8 else probe.float())
    model.train(was_training)
    return int(out.shape[-1])


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
    if cfg.lr_schedule == "linear":
        return cfg.lr * (total - step) / (total - warmup)
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


LOOKAHEAD_PREFIX = f"{OPTIM_PREFIX}lookahead."
LOOKAHEAD_EVERY = 5  # steps between lookahead updates (airbench)


class Lookahead:
    """airbench's lookahead: a running average of the model's floating-point state (weights and BN statistics);
    every ``LOOKAHEAD_EVERY`` steps the average moves towards the model by ``1 - decay`` and the model is set
    to it. The decay ``0.95^5 x progress^3`` grows from 0 (the model leads) to 0.77 at the end of training;
    ``finish`` sets the model to the average."""

    def __init__(self, model: nn.Module) -> None:
        live = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}  # views of the model's tensors
        self.average = {k: v.detach().clone() for k, v in live.items()}
        self.pairs = [(self.average[k], v) for k, v in live.items()]  # built once: no state_dict() per blend

    def update(self, step: int, total: int) -> bool:
        """After SGD step ``step`` (1-based) of ``total``: blend when it is due; whether it blended."""
        if step % LOOKAHEAD_EVERY:
            return False
        self._blend(0.95 ** LOOKAHEAD_EVERY * (step / total) ** 3)
        return True

    def finish(self) -> None:
        self._blend(1.0)

    @torch.no_grad()
    def _blend(self, decay: float) -> None:
        for avg, live in self.pairs:
            avg.lerp_(live, 1 - decay)
            live.copy_(avg)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {LOOKAHEAD_PREFIX + k: v for k, v in self.average.items()}

    def restore(self, extra: dict[str, torch.Tensor]) -> None:
        for k, avg in self.average.items():
            if LOOKAHEAD_PREFIX + k not in extra:
                raise DKError(f"checkpoint lacks the lookahead average of {k}; start afresh without --resume")
            avg.copy_(extra[LOOKAHEAD_PREFIX + k])


def _optim_tensors(opt: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    return {f"{OPTIM_PREFIX}{i}.{k}": v for i, s in opt.state_dict()["state"].items()
            for k, v in s.items() if torch.is_tensor(v)}


def _restore_optim(opt: torch.optim.Optimizer, extra: dict[str, torch.Tensor]) -> None:
    state = opt.state_dict()
    params = [p for g in opt.param_groups for p in g["params"]]
    for name, v in extra.items():
        if name.startswith(LOOKAHEAD_PREFIX):
            continue
        i, k = name[len(OPTIM_PREFIX):].split(".", 1)
        p = params[int(i)]
        if v.shape == p.shape:  # momentum in its parameter's memory layout (channels-last convolutions):
            v = torch.empty_like(p).copy_(v)  # the fused SGD kernel walks both as one flat buffer
        state["state"].setdefault(int(i), {})[k] = v
    opt.load_state_dict(state)


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict[str, Any]]:
    """The model's parameter groups (its own ``param_groups()``, each with an ``lr_scale`` and optionally
    ``decay: False``, or one group of every trainable parameter). A group's weight decay is divided by its
    ``lr_scale``: every weight decays by the same fraction per step."""
    groups = model.param_groups() if hasattr(model, "param_groups") else [
        {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
    return [{**g, "params": list(g["params"]), "lr": cfg.lr * g["lr_scale"],
             "weight_decay": cfg.weight_decay / g["lr_scale"] if g.get("decay", True) else 0.0} for g in groups]


def make_sgd(params, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD with (Nesterov) momentum, or with ``cfg.optimizer`` adamw AdamW (betas (momentum, 0.95)); PyTorch's
    fused kernel (one pass per tensor) on CPU and CUDA. ``params``: parameters, or groups with an ``lr_scale``
    (``param_groups``)."""
    params = list(params)
    if cfg.optimizer == "adamw":
        kw = dict(lr=cfg.lr, betas=(cfg.momentum, 0.95), weight_decay=cfg.weight_decay)
        try:
            return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda"), **kw)
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(params, **kw)
    kwargs = dict(lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=cfg.nesterov)
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.SGD(params, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # older PyTorch: no fused CPU kernel
            pass
    return torch.optim.SGD(params, **kwargs)


class AutogradStep:
    """One SGD step of any ``nn.Module``: ``step(x, objective, rows, generator) -> loss`` (autocast forward,
    autograd backward, SGD, weight constraints); ``fused.FusedMLPStep`` has the same interface."""

    def __init__(self, model: nn.Module, forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer,
                 precision: str, grad_clip: float) -> None:
        self.model, self.forward, self.opt, self.grad_clip = model, forward, opt, grad_clip
        self.bf16 = precision == "bf16"
        self.device_type = next(model.parameters()).device.type
        self.last_grad_norm: torch.Tensor | None = None  # before clipping, when grad_clip is on

    def __call__(self, x: torch.Tensor, objective: "Objective", rows: torch.Tensor,
                 generator: torch.Generator) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16):
            loss = objective(self.forward(x), rows)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.grad_clip > 0:
            self.last_grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip, foreach=True)
        self.opt.step()
        apply_constraints(self.model)
        return loss.detach().float()


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
    calibrate: bool = True,
    tensorboard: "str | Path | TensorBoardLog | None" = None,
    metrics: Callable[[nn.Module], dict[str, float]] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` on inputs ``x [N, H, W]`` against ``objective`` for ``cfg.epochs`` epochs.

    An ``MLP`` trains through ``FusedMLPStep`` (explicit matmuls, closed-form logit gradients, fused
    SGD) unless ``cfg.fused`` is off; any other module through autograd. ``cfg.precision`` ``auto``
    picks bf16 where the device computes it natively.

    Args:
        model: the network to train (a registry architecture: ``cfg.arch``).
        x: transfer/training inputs; moved once to ``cfg.device`` and kept there.
        objective: ``HardLabels``, ``SoftTargets`` or ``MatchLogits`` over the same N examples (any object with
            ``to``, ``__call__(logits, rows)``, ``loss_and_grad`` and ``bank``): its ``bank`` of views (None: a
            fresh random view per step, ``views.RandomViews``) says what each batch shows and which rows it scores.
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
        calibrate: on a fresh start, set the model's input layers from ``x`` (an MLP's input shift, a conv
            net's per-channel normalisation, airnet's patch whitening); off for a model that starts trained.
        tensorboard: if set (a directory, or a ``logs.TensorBoardLog`` made by the caller, e.g. with the teacher's
            cost), every epoch's record is also written there as TensorBoard scalars; closed at the end.
        metrics: if set, called with the model (in eval mode, no gradients) on the epochs test errors are measured
            (every ``cfg.eval_every`` and the last), its values added to the epoch's record (e.g. a language
            model's validation bits per byte).

    Returns:
        The per-epoch history: ``[{"epoch", "loss", "loss_max", "seconds", "test_errors"?, ...}, ...]``;
        ``loss_max`` is the largest single-batch loss of the epoch (a spike shows there first), and
        with ``grad_clip`` on, ``grad_norm_max``, ``grad_norm_mean`` (before clipping) and ``clipped_steps``
        say how often clipping acted.
    """
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    log = tensorboard if isinstance(tensorboard, TensorBoardLog) or tensorboard is None else TensorBoardLog(tensorboard)
    if log is not None:  # first: a missing tensorboard package stops the run before anything is written
        log.sizes(0 if y_test is None else len(y_test), 0 if y_train_eval is None else len(y_train_eval))
    model.to(device)
    if isinstance(objective, HardLabels) and cfg.label_smoothing and not objective.smoothing:
        objective = HardLabels(objective.labels, cfg.label_smoothing)
    objective = objective.to(device)
    if x_test is not None:
        x_test, y_test = x_test.to(device), y_test.to(device)
    num_classes = getattr(model, "output_classes", None) or _output_size(model, x[:1].to(device))
    opt = make_sgd(param_groups(model, cfg), cfg, device)
    train_cfg = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in RESUME_FREE}
    train_cfg["precision"] = precision  # as resolved: "auto" may mean another thing on another machine
    history: list[dict[str, Any]] = []
    start = 0
    background = background_value(x)  # the input shift of a fresh MLP and the fill of jittered views
    saved = None
    if resume and checkpoint is not None:
        defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.name not in RESUME_FREE}
        saved = resume_state(checkpoint, cfg.arch, train_cfg, defaults, meta or {})
    lookahead: Lookahead | None = None
    if saved is not None:
        weights, saved_meta, extra = saved
        load_into(model, weights, str(checkpoint), cfg.arch)
        _restore_optim(opt, {k: v.to(device) for k, v in extra.items()})
        start, history = int(saved_meta["epoch"]), list(saved_meta["history"])
        if cfg.lookahead and start < cfg.epochs:
            lookahead = Lookahead(model)
            lookahead.restore({k: v.to(device) for k, v in extra.items()})
    elif not calibrate:
        pass  # a model that starts trained (a specialist from its generalist) keeps its input layers
    elif hasattr(model, "calibrate_input"):
        model.calibrate_input(background)  # a fresh start: the input shift is the inputs' background
    elif hasattr(model, "calibrate_norm") and x.dim() == 4:
        model.calibrate_norm(*channel_stats(x))  # images: the training inputs' per-channel statistics
        if hasattr(model, "calibrate_whitening"):
            model.calibrate_whitening(x)  # a frozen first layer from the training inputs' patch statistics

    step: FusedMLPStep | AutogradStep
    if cfg.fused and not cfg.compile and cfg.optimizer == "sgd" and FusedMLPStep.supports(model):  # --compile asks for autograd
        step = FusedMLPStep(model, opt, torch.bfloat16 if precision == "bf16" else torch.float32, cfg.grad_clip)
        # The inputs live on the device in the compute dtype: half the bytes to gather per batch in bf16.
        x = x.to(device, torch.bfloat16 if precision == "bf16" else torch.float32)
    else:
        step = AutogradStep(model, compiled(model) if cfg.compile else model, opt, precision, cfg.grad_clip)
        x = x.to(device)
    # What the student sees of each example, and which target row goes with it: the objective's bank of
    # views (the teacher's targets on each), or a fresh random view per step.
    views: Views = objective.bank if objective.bank is not None else RandomViews(cfg.jitter, cfg.flip)
    alternate = cfg.alternate_flips and objective.bank is None
    if cfg.lookahead and lookahead is None:
        lookahead = Lookahead(model)  # after calibration: the average starts from the model as it starts
    if objective.bank is not None:
        objective.bank.check(len(x), cfg.jitter, cfg.flip, background)
    # Padded once (with the background level): a batch is then one index_select, jittered or not.
    source = pad_for_jitter(x, cfg.jitter, background)
    n, bs = len(x), cfg.batch_size
    shown = len(sampler) if sampler is not None else n  # examples per epoch
    steps_per_epoch = math.ceil(shown / bs)
    total_steps = cfg.epochs * steps_per_epoch
    bar = tqdm(range(start, cfg.epochs), desc=desc, initial=start, total=cfg.epochs, disable=not progress,
               unit="epoch", leave=False, mininterval=0.5)
    for epoch in bar:
        t0 = time.perf_counter()
        torch.manual_seed(_epoch_seed(cfg.seed, epoch))  # dropout on the autograd path
        gen = torch.Generator(device=device).manual_seed(_epoch_seed(cfg.seed, epoch))
        model.train()
        perm = sampler(gen) if sampler is not None else torch.randperm(n, device=device, generator=gen)
        if alternate:
            views = AlternatingFlips.for_epoch(cfg.jitter, n, cfg.seed, epoch, device)
        # Running sums stay on the device: no host sync per step.
        loss_sum = torch.zeros((), device=device)
        loss_max = torch.full((), -math.inf, device=device)
        norm_max = torch.zeros((), device=device)
        norm_sum = torch.zeros((), device=device)
        clipped = torch.zeros((), device=device)
        for i, step_index in enumerate(range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)):
            xb, rows = views.draw(source, perm[i * bs:(i + 1) * bs], gen)
            lr = lr_at(cfg, step_index, steps_per_epoch)
            for group in opt.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            loss = step(xb, objective, rows, gen)
            loss_sum += loss * len(rows)
            torch.maximum(loss_max, loss, out=loss_max)
            if cfg.grad_clip > 0:
                g = step.last_grad_norm
                torch.maximum(norm_max, g, out=norm_max)
                norm_sum += g
                clipped += g > cfg.grad_clip
            if lookahead is not None and lookahead.update(step_index + 1, total_steps) and hasattr(step, "refresh"):
                step.refresh()  # the fused MLP step's low-precision copies follow the blended weights
        if lookahead is not None and epoch + 1 == cfg.epochs:
            lookahead.finish()  # the model leaves training as the average
        record: dict[str, Any] = {"epoch": epoch + 1, "loss": float(loss_sum) / shown, "loss_max": float(loss_max),
                                  "lr": lr}
        if cfg.grad_clip > 0:
            record.update(grad_norm_max=round(float(norm_max), 4),
                          grad_norm_mean=round(float(norm_sum) / steps_per_epoch, 4), clipped_steps=int(clipped))
        if not math.isfinite(record["loss"]):
            raise Diverged(f"{desc}: training diverged (loss {record['loss']}) in epoch {epoch + 1}; "
                          f"lower the learning rate (lr {cfg.lr}) or clip the gradient norm "
                          f"(grad_clip {cfg.grad_clip or 'off'})")
        if x_test is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            record["test_errors"] = errors_from_logits(predict_logits(model, x_test), y_test, num_classes)["errors"]
            if x_train_eval is not None:
                record["train_errors"] = errors_from_logits(predict_logits(model, x_train_eval.to(device)),
                                                            y_train_eval.to(device), num_classes)["errors"]
        if metrics is not None and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            was = model.training
            model.eval()
            with torch.no_grad():
                record.update(metrics(model))
            model.train(was)
        record["seconds"] = round(time.perf_counter() - t0, 4)
        history.append(record)
        if log is not None:
            log.epoch(record)
        bar.set_postfix({k: v for k, v in record.items() if k in ("loss", "test_errors")}, refresh=False)
        if checkpoint is not None:
            save_checkpoint(checkpoint, model, {
                **(meta or {}), "arch": cfg.arch, "in_features": int(x[0].numel()), "in_shape": list(x.shape[1:]),
                "num_classes": num_classes,
                "epoch": epoch + 1, "epochs": cfg.epochs, "train_config": train_cfg, "history": history,
            }, extra={**_optim_tensors(opt), **(lookahead.tensors() if lookahead is not None else {})})
        if INTERRUPTED.is_set():  # a Ctrl-C whose KeyboardInterrupt was swallowed (errors.INTERRUPTED)
            raise KeyboardInterrupt
    bar.close()
    if log is not None:
        log.close()
    return history
