"""Specialists (paper section 5): a generalist, clusters of classes it confuses, one specialist per cluster,
and their combination at inference by minimising a sum of KL divergences (``combine``).

- ``prediction_covariance`` / ``cluster_classes`` (section 5.3): the covariance of the generalist's
  predicted probabilities over a validation split; classes clustered with scikit-learn's
  ``MiniBatchKMeans`` (several runs with different cluster counts), the candidate clusters of bounded
  size ranked by how much their classes are confused with each other, the best K kept. Subsets may
  overlap, so classes end up covered by 0, 1, 2 or more specialists.
- ``specialist_model`` / ``specialist_task`` (section 5.2): the generalist's architecture and weights
  with a new head over the special classes plus one dustbin class; each epoch shows every special example
  once and as many random others (``HalfAndHalf``: every batch half special, half the rest), then
  log(oversampling factor) is added to the dustbin logit. Optionally (section 6.1) the generalist's soft
  targets, on the same augmented views, as an extra term against over-fitting.
- ``specialist_probs`` and ``combine`` (section 5.4) at inference; ``evaluate`` scores the combination
  against the generalist by how many specialists cover each test example's true class (table 4).

Specialists are independent ``specialist_task`` calls: any executor (``executors.run_tasks``: local,
process pool, Ray) runs them, each resuming from its epoch checkpoint when retried.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from darkknowledge.checkpoint import atomic_write_json, load_checkpoint
from darkknowledge.combine import active_specialists, combine, membership
from darkknowledge.config import ClusterConfig, DistillConfig, SpecialistConfig, TrainConfig
from darkknowledge.data import load_split, pad_for_jitter
from darkknowledge.device import resolve_device
from darkknowledge.errors import DKError
from darkknowledge.evaluation import predict_logits
from darkknowledge.teachers import (OutputCache, Teacher, bank_logits_of, check_model_fits, model_digest, output_key,
                                    output_size)
from darkknowledge.training import HardLabels, SoftTargets, fit
from darkknowledge.views import ViewBank

__all__ = ["combine", "active_specialists", "prediction_covariance", "cluster_classes", "coverage", "Clusters",
           "cluster_from_generalist", "superclass_agreement", "plot_clusters", "specialist_model", "HalfAndHalf",
           "SpecialistTask", "specialist_task", "load_specialist", "specialist_checkpoints", "specialist_probs",
           "active_probs", "combined_probs", "CombinedTeacher", "evaluate", "evaluate_teacher", "pool_coverage",
           "load_clusters", "save_clusters"]


# ---- clustering (section 5.3) ----------------------------------------------------------------------------

def prediction_covariance(probs: torch.Tensor) -> np.ndarray:
    """``[C, C]`` covariance of the predicted class probabilities ``probs [N, C]`` over examples."""
    return np.cov(probs.double().cpu().numpy(), rowvar=False)


def correlation(cov: np.ndarray) -> np.ndarray:
    """The correlation matrix of a covariance matrix (variances floored at 1e-30)."""
    sd = np.sqrt(np.clip(np.diag(cov), 1e-30, None))
    return cov / sd[:, None] / sd[None, :]


def cluster_classes(cov: np.ndarray, specialists: int, max_size: int, *, min_size: int = 2,
                    cluster_counts: Sequence[int] | None = None, join_ratio: float = 0.5,
                    seed: int = 0) -> list[list[int]]:
    """``specialists`` subsets of 2..``max_size`` classes that the covariance ``cov`` says are confused.

    Each class is described by its row of the correlation matrix (who it is predicted together with);
    ``MiniBatchKMeans`` clusters the rows once per entry of ``cluster_counts`` (default: C/max_size, 1.5x and
    2x that, so clusters of several granularities overlap); a cluster larger than ``max_size`` keeps the
    ``max_size`` classes nearest its centre. Candidates are ranked by the mean correlation between their
    classes; the ``specialists`` best are returned, classes sorted, skipping (while others remain) any that
    shares more than half its classes with one already chosen. Then (``join_ratio`` > 0) classes also join
    the subsets they are nearly as confused with as the subsets' own classes (``_join_neighbours``), so
    some classes are covered by two or more specialists.
    """
    from sklearn.cluster import MiniBatchKMeans

    c = cov.shape[0]
    if cov.shape != (c, c):
        raise DKError(f"the covariance matrix must be square, got {cov.shape}")
    if not 2 <= min_size <= max_size < c:
        raise DKError(f"cluster sizes must satisfy 2 <= min_size ({min_size}) <= max_size ({max_size}) < {c} classes")
    if specialists < 1:
        raise DKError(f"specialists must be >= 1, got {specialists}")
    corr = correlation(cov)
    base = max(2, math.ceil(c / max_size))
    counts = list(cluster_counts) if cluster_counts else [base, round(base * 1.5), base * 2]
    candidates: dict[tuple[int, ...], float] = {}
    for r, k in enumerate(counts):
        if not 2 <= k < c:
            raise DKError(f"cluster counts must be in 2..{c - 1}, got {k}")
        km = MiniBatchKMeans(n_clusters=k, random_state=seed * 1000 + r, n_init=10, batch_size=max(256, c))
        labels = km.fit_predict(corr)
        for j in range(k):
            members = np.flatnonzero(labels == j)
            if len(members) > max_size:  # keep the classes nearest the centre
                dist = ((corr[members] - km.cluster_centers_[j]) ** 2).sum(1)
                members = members[np.argsort(dist, kind="stable")[:max_size]]
            if len(members) < min_size:
                continue
            key = tuple(sorted(int(i) for i in members))
            block = corr[np.ix_(key, key)]
            candidates[key] = float((block.sum() - np.trace(block)) / (len(key) * (len(key) - 1)))
    ranked = [list(key) for key, _ in sorted(candidates.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(ranked) < specialists:
        raise DKError(f"clustering found {len(ranked)} distinct clusters of {min_size}..{max_size} classes, "
                      f"fewer than the {specialists} specialists asked for; raise max_size or the cluster counts")
    # Best first, but a candidate sharing more than half its classes with one already chosen waits until the
    # distinct ones run out: overlaps stay (classes covered twice or more) without near-duplicate specialists.
    chosen: list[list[int]] = []
    for cand in ranked:
        if len(chosen) < specialists and all(len(set(cand) & set(s)) * 2 <= len(cand) for s in chosen):
            chosen.append(cand)
    chosen += [cand for cand in ranked if cand not in chosen][:specialists - len(chosen)]
    if join_ratio > 0:
        chosen = _join_neighbours(corr, chosen, max_size, join_ratio)
    return [sorted(s) for s in chosen]


def _join_neighbours(corr: np.ndarray, subsets: list[list[int]], max_size: int, ratio: float) -> list[list[int]]:
    """Each class outside a subset joins it too when its mean correlation with the subset's classes is at
    least ``ratio`` times the subset's own mean internal correlation (strongest first, up to ``max_size``):
    the next-nearest cluster of a class confused with two groups covers it as well."""
    out = [list(s) for s in subsets]
    offers = []
    for m, s in enumerate(subsets):
        block = corr[np.ix_(s, s)]
        inner = (block.sum() - np.trace(block)) / (len(s) * (len(s) - 1))
        if inner <= 0:
            continue
        affinity = corr[:, s].mean(1)
        offers += [(float(affinity[i] / inner), m, int(i)) for i in range(len(corr))
                   if i not in s and affinity[i] >= ratio * inner]
    for _, m, i in sorted(offers, key=lambda o: (-o[0], o[1], o[2])):
        if len(out[m]) < max_size and i not in out[m]:
            out[m].append(i)
    return out


def coverage(subsets: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
    """``[C]`` how many subsets hold each class."""
    return membership(subsets, num_classes).sum(0).numpy()


def save_clusters(path: str | Path, subsets: Sequence[Sequence[int]], num_classes: int,
                  class_names: Sequence[str] = (), extra: dict[str, Any] | None = None) -> None:
    """The subsets with their class names and the coverage counts, as JSON (``load_clusters`` reads it)."""
    names = list(class_names) or [str(i) for i in range(num_classes)]
    cov = coverage(subsets, len(names))
    atomic_write_json(Path(path), {
        "num_classes": len(names), "class_names": names,
        "subsets": [{"classes": list(map(int, s)), "names": [names[i] for i in s]} for s in subsets],
        "coverage": {str(k): int((cov == k).sum()) for k in range(int(cov.max()) + 1)}, **(extra or {})})


def load_clusters(path: str | Path) -> tuple[list[list[int]], dict[str, Any]]:
    """``(subsets, the whole JSON)`` of a clusters file written by ``save_clusters``."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
        subsets = [list(map(int, s["classes"])) for s in doc["subsets"]]
        c = int(doc["num_classes"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DKError(f"cannot read clusters file {path}: {e}") from None
    for m, s in enumerate(subsets):
        if not s or len(set(s)) != len(s) or not all(0 <= k < c for k in s) or len(s) >= c:
            raise DKError(f"clusters file {path}: subset {m} is not a set of 1..{c - 1} classes in 0..{c - 1}")
    return subsets, doc


@dataclass(frozen=True)
class Clusters:
    """Specialist subsets chosen from a generalist's confusions, with what they were chosen from."""

    subsets: list[list[int]]
    covariance: np.ndarray  # [C, C] of the generalist's predicted probabilities on the validation split
    num_classes: int

    def coverage_counts(self) -> list[int]:
        """How many classes 0, 1, 2, ... subsets cover."""
        return np.bincount(coverage(self.subsets, self.num_classes)).tolist()


def cluster_from_generalist(generalist: nn.Module, x_val: torch.Tensor, cfg: ClusterConfig) -> Clusters:
    """Section 5.3 end to end: the generalist's predicted probabilities on validation inputs ``x_val``, their
    covariance, and ``cfg.specialists`` overlapping subsets of confusable classes (``cluster_classes``)."""
    probs = torch.softmax(predict_logits(generalist, x_val), -1).cpu()
    cov = prediction_covariance(probs)
    subsets = cluster_classes(cov, cfg.specialists, cfg.max_classes, min_size=cfg.min_classes, seed=cfg.cluster_seed)
    return Clusters(subsets, cov, probs.shape[1])


def superclass_agreement(clusters: Clusters, coarse_of_class: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """How well clusters of the generalist's confusions match known superclasses (CIFAR-100's 20): the adjusted
    Rand index of a MiniBatchKMeans partition of the correlation rows into as many clusters as superclasses
    (0: chance, 1: identical), and the share of class pairs within a subset that share a superclass, vs chance."""
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.metrics import adjusted_rand_score

    coarse = np.array(coarse_of_class)
    c, k = len(coarse), len(set(coarse.tolist()))
    labels = MiniBatchKMeans(k, random_state=seed, n_init=10, batch_size=256).fit_predict(
        correlation(clusters.covariance))
    same = [coarse[a] == coarse[b] for s in clusters.subsets for i, a in enumerate(s) for b in s[i + 1:]]
    chance = sum((coarse == g).sum() * ((coarse == g).sum() - 1) for g in range(k)) / (c * (c - 1))
    return {"ari_superclasses": float(adjusted_rand_score(coarse, labels)), "partition_clusters": k,
            "same_superclass_pairs": float(np.mean(same)), "same_superclass_chance": float(chance)}


def plot_clusters(clusters: Clusters, path: Path) -> Path:
    """The covariance matrix (as correlations) with classes reordered so that each subset is contiguous."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from darkknowledge.experiments.report import save_figure

    order: list[int] = []
    for s in clusters.subsets:
        order += [k for k in s if k not in order]
    order += [k for k in range(clusters.num_classes) if k not in order]
    corr = correlation(clusters.covariance)[np.ix_(order, order)]
    fig, ax = plt.subplots(figsize=(7.5, 7))
    im = ax.imshow(corr, cmap="RdBu_r", vmin=-0.3, vmax=0.3)
    start = 0
    seen: set[int] = set()
    for s in clusters.subsets:
        new = [k for k in s if k not in seen]
        seen.update(s)
        if new:
            ax.add_patch(plt.Rectangle((start - 0.5, start - 0.5), len(new), len(new), fill=False, lw=1, ec="k"))
            start += len(new)
    ax.set(title="Generalist's prediction correlations on the validation split,\n"
                 "classes reordered by specialist subset (boxes)", xlabel="class", ylabel="class")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save_figure(fig, path)


# ---- specialist models and their training (section 5.2) ----------------------------------------------------

def _head_name(model: nn.Module) -> str:
    """The name of the model's last ``nn.Linear`` (its classifier)."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise DKError("a specialist needs a generalist whose output layer is an nn.Linear")
    return names[-1]


def specialist_model(generalist: nn.Module, build: Any, subset: Sequence[int]) -> nn.Module:
    """A copy of ``generalist`` whose head predicts ``subset`` + a dustbin, built by ``build(num_outputs)``.

    Every weight but the head's is the generalist's. The head starts as the generalist's rows for the
    special classes, and for the dustbin the mean of the other rows with bias + log(their count): roughly
    the log of the summed probability of the other classes, so training starts from the generalist's view.
    A head without a bias (airnet's) starts its dustbin at the mean of the other rows, without that offset.
    """
    subset = list(subset)
    model = build(len(subset) + 1)
    head = _head_name(model)
    state = generalist.state_dict()
    w, b = state[f"{head}.weight"], state.get(f"{head}.bias")
    if w.shape[0] <= max(subset):
        raise DKError(f"subset classes up to {max(subset)} but the generalist predicts {w.shape[0]} classes")
    rest = [i for i in range(w.shape[0]) if i not in set(subset)]
    new = {k: v for k, v in state.items() if not k.startswith(f"{head}.")}
    new[f"{head}.weight"] = torch.cat([w[subset], w[rest].mean(0, keepdim=True)])
    if b is not None:
        new[f"{head}.bias"] = torch.cat([b[subset], (b[rest].mean() + math.log(len(rest))).reshape(1)])
    model.load_state_dict(new, strict=True)
    return model


def special_labels(y: torch.Tensor, subset: Sequence[int], num_classes: int) -> torch.Tensor:
    """Labels in the specialist's outputs: position in ``subset``, or ``len(subset)`` (the dustbin)."""
    table = torch.full((num_classes,), len(subset), dtype=torch.long)
    table[list(subset)] = torch.arange(len(subset))
    return table.to(y.device)[y]


def aggregate(probs: torch.Tensor, subset: Sequence[int]) -> torch.Tensor:
    """``[N, |S| + 1]``: the special classes' probabilities and, last, the sum of all the others."""
    special = probs[:, list(subset)]
    return torch.cat([special, (1 - special.sum(1, keepdim=True)).clamp_min(0)], dim=1)


class HalfAndHalf:
    """An epoch of every special example once and as many random other examples, in batches of ``batch_size``
    that are each half special, half other (section 5.2); the other half is redrawn every epoch."""

    def __init__(self, special: torch.Tensor, rest: torch.Tensor, batch_size: int) -> None:
        if len(special) == 0 or len(rest) == 0:
            raise DKError(f"a specialist needs examples of its classes and of others "
                          f"({len(special)} special, {len(rest)} other)")
        if batch_size < 2 or batch_size % 2:
            raise DKError(f"a specialist's batches are half special, half other examples: give an even batch_size, "
                          f"not {batch_size}")
        self.special, self.rest, self.batch_size = special, rest, batch_size

    def __len__(self) -> int:
        return 2 * len(self.special)

    def __call__(self, generator: torch.Generator) -> torch.Tensor:
        device = generator.device
        n = len(self.special)
        special = self.special.to(device)[torch.randperm(n, device=device, generator=generator)]
        # Others: a random draw without replacement (with, if there are fewer others than special examples).
        if len(self.rest) >= n:
            pick = torch.randperm(len(self.rest), device=device, generator=generator)[:n]
        else:
            pick = torch.randint(0, len(self.rest), (n,), device=device, generator=generator)
        rest = self.rest.to(device)[pick]
        half = self.batch_size // 2
        chunks = [torch.cat([special[i:i + half], rest[i:i + half]]) for i in range(0, n, half)]
        return torch.cat(chunks)


def dustbin_offset(y: torch.Tensor, subset: Sequence[int]) -> float:
    """log(oversampling factor): the special classes are shown half the time instead of their share f of
    the data, the dustbin half instead of 1 - f; adding log((1 - f) / f) to the dustbin logit undoes it."""
    special = int(torch.isin(y, torch.tensor(list(subset), device=y.device)).sum())
    return math.log((len(y) - special) / special)


@dataclass(frozen=True)
class SpecialistTask:
    """One specialist to train (or resume): what ``specialist_task`` reads; any executor can carry it."""

    data: str  # a ``data.load_data`` source, split as the generalist's was (``val_size``, ``limit``)
    generalist: str  # its checkpoint directory
    subset: tuple[int, ...]  # the special classes
    name: str
    out: str  # the specialist's checkpoint directory
    config: TrainConfig
    specialist: SpecialistConfig = SpecialistConfig()
    val_size: int = 0
    limit: int = 0
    cache_dir: str | None = None  # for the generalist's soft targets (``specialist.soft_weight`` > 0)
    progress: bool = False


def specialist_task(task: SpecialistTask) -> dict[str, Any]:
    """Train (or resume) one specialist into ``task.out``; top-level, so any executor can run it.

    Hard labels over the subset + a dustbin on half-special batches; with ``task.specialist.soft_weight`` > 0,
    plus that weight times the generalist's soft targets at its temperature on a bank of augmented views.
    """
    from darkknowledge.models import build_model

    out = Path(task.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "worker.json", {"pid": os.getpid(), "host": socket.gethostname()})
    cfg, spec = task.config, task.specialist
    device = resolve_device(cfg.device)
    data, _ = load_split(task.data, task.val_size, task.limit)
    subset = [int(k) for k in task.subset]
    generalist, gmeta, _ = load_checkpoint(task.generalist, device=device)
    if gmeta["num_classes"] != data.num_classes:
        raise DKError(f"generalist {task.generalist} predicts {gmeta['num_classes']} classes, "
                      f"the data has {data.num_classes}")
    if cfg.arch != gmeta["arch"]:
        raise DKError(f"a specialist has its generalist's architecture ({gmeta['arch']}), not {cfg.arch}")
    torch.manual_seed(cfg.seed)
    model = specialist_model(generalist, lambda k: build_model(gmeta["arch"], data.in_shape, k), subset)
    x, y = data.x_train.to(device), data.y_train.to(device)
    labels = special_labels(y, subset, data.num_classes)
    is_special = labels < len(subset)
    sampler = HalfAndHalf(torch.nonzero(is_special).squeeze(1), torch.nonzero(~is_special).squeeze(1),
                          cfg.batch_size)
    soft_weight = spec.soft_weight
    teacher = Teacher([generalist], archs=[gmeta["arch"]], cache_dir=task.cache_dir)
    meta = {"role": "specialist", "subset": subset, "data": data.name, "generalist": str(task.generalist),
            "generalist_fingerprint": teacher.fingerprint(), "soft_weight": soft_weight}
    if soft_weight > 0:  # section 6.1: the generalist's soft targets, on the very views the specialist sees
        views, temperature = spec.views, spec.temperature
        bank = ViewBank.for_student(x, cfg.jitter, cfg.flip, views)
        logits = teacher.bank_logits(x, bank)[0]  # [V, N, C]
        # The generalist learnt the data's class frequencies; the specialist is shown its classes half the
        # time. Its soft targets get the same prior shift as its batches (log(0.5 / f) on the special
        # logits, log(0.5 / (1 - f)) on the others), so the dustbin offset after training undoes both.
        f = float(is_special.float().mean())
        shift = torch.full((data.num_classes,), math.log(0.5 / (1 - f)), device=device)
        shift[subset] = math.log(0.5 / f)
        targets = aggregate(torch.softmax((logits.flatten(0, 1) + shift) / temperature, -1), subset)
        objective = SoftTargets(targets, labels.repeat(views),
                                DistillConfig(temperature=temperature, soft_weight=soft_weight, hard_weight=1.0),
                                bank)
        meta.update(views=views, temperature=temperature)
    else:
        objective = HardLabels(labels)
    offset = dustbin_offset(y, subset)
    meta["dustbin_offset"] = offset
    history = fit(model, x, objective, cfg, checkpoint=out, meta=meta, resume=True, desc=task.name,
                  progress=task.progress, sampler=sampler, calibrate=False)
    test_labels = special_labels(data.y_test.to(device), subset, data.num_classes)
    with torch.no_grad():
        probs = specialist_probs(model, data.x_test.to(device), offset)
    pred, special_test = probs.argmax(1), test_labels < len(subset)
    return {"name": task.name, "out": str(out), "subset": subset, "dustbin_offset": offset,
            "special_train_examples": int(is_special.sum()), "epochs": len(history),
            "seconds": round(sum(h["seconds"] for h in history), 2),
            # On the test examples of its special classes: right class among its own (dustbin corrected).
            "special_test_accuracy": float((pred[special_test] == test_labels[special_test]).float().mean()),
            "dustbin_test_accuracy": float((pred[~special_test] == len(subset)).float().mean())}


def load_specialist(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, list[int], float]:
    """``(model, subset, dustbin offset)`` of a trained specialist's checkpoint."""
    model, meta, _ = load_checkpoint(path, device=device)
    if meta.get("role") != "specialist" or "dustbin_offset" not in meta:
        raise DKError(f"checkpoint {path} is not a specialist (no subset and dustbin offset in its metadata)")
    if meta["num_classes"] != len(meta["subset"]) + 1:
        raise DKError(f"specialist {path}: {meta['num_classes']} outputs for {len(meta['subset'])} classes + dustbin")
    return model, [int(k) for k in meta["subset"]], float(meta["dustbin_offset"])


def specialist_checkpoints(root: str | Path) -> list[Path]:
    """The specialist checkpoint directories directly under ``root`` in specialist order (m0, m1, ..., m10)."""
    root = Path(root)
    dirs = sorted((p for p in root.iterdir() if (p / "model.json").is_file()),
                  key=lambda p: (len(p.name), p.name)) if root.is_dir() else []
    if not dirs:
        raise DKError(f"no specialist checkpoints under {root}")
    return dirs


@torch.no_grad()
def specialist_probs(model: nn.Module, x: torch.Tensor, offset: float, temperature: float = 1.0) -> torch.Tensor:
    """``[N, |S| + 1]`` probabilities of a specialist with ``offset`` added to its dustbin logit."""
    logits = predict_logits(model, x)
    logits[:, -1] += offset
    return torch.softmax(logits / temperature, -1)


@torch.no_grad()
def active_probs(specialists: Sequence[tuple[nn.Module, list[int], float]], x: torch.Tensor,
                 active: torch.Tensor) -> list[torch.Tensor]:
    """Each specialist's ``[N, |S| + 1]`` probabilities, computed only on the rows where it is active
    (``active [N, M]``); the other rows are uniform placeholders that ``combine`` never reads."""
    probs = []
    for m, (model, subset, offset) in enumerate(specialists):
        p = torch.full((len(x), len(subset) + 1), 1.0 / (len(subset) + 1), device=active.device)
        rows = torch.nonzero(active[:, m]).squeeze(1)
        if len(rows):
            p[rows] = specialist_probs(model, x[rows.to(x.device)], offset).to(p.device)
        probs.append(p)
    return probs


@torch.no_grad()
def combined_probs(generalist_probs: torch.Tensor, specialists: Sequence[tuple[nn.Module, list[int], float]],
                   x: torch.Tensor, top_n: int = 1, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q [N, C], active [N, M])``: each specialist runs only where it is active, then ``combine``."""
    subsets = [s for _, s, _ in specialists]
    active = active_specialists(generalist_probs, subsets, top_n)
    return combine(generalist_probs, active_probs(specialists, x, active), subsets, top_n, **kwargs), active


def evaluate_teacher(teacher: "CombinedTeacher", x: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """``evaluate`` of a generalist with its specialists on ``(x, y)``, plus how many specialists woke per example."""
    pg = torch.softmax(predict_logits(teacher.generalist, x), -1)
    q, active = combined_probs(pg, teacher.specialists, x, teacher.top_n)
    return {**evaluate(pg, q, y, [s for _, s, _ in teacher.specialists]),
            "active_per_example": float(active.sum(1).float().mean()), "specialists": len(teacher.specialists),
            "top_n": teacher.top_n}


def pool_coverage(evaluations: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Table 4 over several runs (seeds, each with its own clusters): ``evaluate``'s ``covered_by`` rows of each run
    pooled by k, as ``{k, examples, seeds, generalist_accuracy, combined_accuracy, relative_gain_percent}`` (in
    percent, over the pooled examples) with ``seed_gains``, each run's own relative gain where it has such classes."""
    kmax = max((row["k"] for rows in evaluations for row in rows), default=-1)
    pooled = []
    for k in range(kmax + 1):
        gains, n, g, q = [], 0, 0, 0
        for rows in evaluations:
            row = next((x for x in rows if x["k"] == k), None)
            if row:
                n, g, q = n + row["examples"], g + row["generalist_correct"], q + row["combined_correct"]
                if row["relative_gain_percent"] is not None:
                    gains.append(row["relative_gain_percent"])
        if n:
            pooled.append({"k": k, "examples": n, "seeds": len(gains), "generalist_accuracy": 100 * g / n,
                           "combined_accuracy": 100 * q / n, "relative_gain_percent": 100 * (q - g) / g if g else None,
                           "seed_gains": gains})
    return pooled


def evaluate(generalist_probs: torch.Tensor, combined: torch.Tensor, y: torch.Tensor,
             subsets: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Accuracy of the generalist and of the combination overall and by how many specialists cover the
    true class (paper table 4): ``covered_by`` rows ``{k, examples, generalist, combined, relative_gain_percent}``."""
    c = generalist_probs.shape[1]
    y = y.to(generalist_probs.device)
    cov = torch.as_tensor(coverage(subsets, c), device=y.device)[y]
    right_g = generalist_probs.argmax(1) == y
    right_c = combined.argmax(1).to(y.device) == y
    rows = []
    for k in range(int(cov.max()) + 1):
        sel = cov == k
        n = int(sel.sum())
        if n == 0:
            continue
        g, q = int(right_g[sel].sum()), int(right_c[sel].sum())
        rows.append({"k": k, "examples": n, "generalist_correct": g, "combined_correct": q,
                     "generalist_accuracy": g / n, "combined_accuracy": q / n,
                     "relative_gain_percent": 100 * (q - g) / g if g else None})
    return {"test_size": len(y), "generalist_accuracy": float(right_g.float().mean()),
            "combined_accuracy": float(right_c.float().mean()), "covered_by": rows}


class CombinedTeacher:
    """A generalist with its specialists, combined per example by minimising the sum of KL divergences (section
    5.4, ``combine``): a teacher like any other (``teachers.TeacherLike``), so distilling the combination back into
    one net is an ordinary ``workflows.distill``.

    Its soft targets at temperature T are ``softmax(log q / T)`` of the combined distribution q; q on a
    transfer set (or on every view of a bank) is computed once and cached like an ensemble's logits.

    Args:
        generalist, generalist_arch: the generalist and its architecture name (part of the fingerprint).
        specialists: ``(model, subset, dustbin offset)`` of each specialist (``load_specialist``).
        top_n: a specialist is active where its classes meet the generalist's top n.
        cache_dir: where the combined distributions are also cached on disk.
    """

    combine = "kl"

    def __init__(self, generalist: nn.Module, specialists: Sequence[tuple[nn.Module, list[int], float]],
                 top_n: int = 1, generalist_arch: str = "", cache_dir: str | Path | None = None) -> None:
        self.generalist, self.generalist_arch = generalist, generalist_arch
        self.specialists, self.top_n = list(specialists), top_n
        self.cache = OutputCache(cache_dir)

    @classmethod
    def from_checkpoints(cls, generalist: str | Path, specialists: Sequence[str | Path], top_n: int = 1,
                         device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> "CombinedTeacher":
        model, meta, _ = load_checkpoint(generalist, device=device)
        return cls(model, [load_specialist(p, device=device) for p in specialists], top_n, meta["arch"], cache_dir)

    @property
    def num_classes(self) -> int:
        return output_size(self.generalist)

    def fingerprint(self) -> str:
        h = hashlib.sha256(model_digest(self.generalist, self.generalist_arch).encode())
        for model, subset, offset in self.specialists:
            h.update(f"{model_digest(model)}|{subset}|{offset!r}".encode())
        h.update(f"top_n={self.top_n}".encode())
        return h.hexdigest()

    def _combined(self, generalist_probs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return combined_probs(generalist_probs, self.specialists, x, self.top_n)[0].float()

    def probs(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C]`` the combined distribution q on ``x`` (T = 1), cached."""
        return self.cache.get(output_key(self.fingerprint(), x, "plain"), lambda: self._combined(
            torch.softmax(predict_logits(self.generalist, x), -1), x), x.device)

    def bank_probs(self, x: torch.Tensor, bank: ViewBank) -> torch.Tensor:
        """``[V * N, C]`` q on every view of ``bank`` (row ``v * N + n``), cached under the bank's key."""
        def compute() -> torch.Tensor:
            glogits = bank_logits_of(self.generalist, x, bank)  # [V, N, C]
            on_x = bank.to(x.device)
            padded = pad_for_jitter(x, on_x.max_shift, on_x.fill)
            idx = torch.arange(len(x), device=x.device)
            return torch.cat([self._combined(torch.softmax(glogits[v], -1), on_x.images(padded, v, idx))
                              for v in range(bank.views)])

        return self.cache.get(output_key(self.fingerprint(), x, bank.key()), compute, x.device)

    def soft_targets(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        return torch.softmax(self.probs(x).clamp_min(1e-30).log() / temperature, -1)

    def bank_targets(self, x: torch.Tensor, bank: ViewBank, temperature: float) -> torch.Tensor:
        return torch.softmax(self.bank_probs(x, bank).clamp_min(1e-30).log() / temperature, -1)

    def check_fits(self, data) -> None:
        check_model_fits(self.generalist, self.num_classes, data, "the generalist")
