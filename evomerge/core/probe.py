"""Task-conditioned probing (seed 001, Algorithm 1): activations of a model's layers per condition.

A condition is a named set of items (:class:`ProbeSet`): a whole task view (``noise``, ``shift``,
``classes_0_4`` ...), or the items of one class of a task. Activations are computed once per
(model id, layer, condition, items hash) and kept in an :class:`ActivationCache`; the caller
owns the cache (one per worker) and must use a new model id for changed weights.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

from evomerge.sources.adapters import ModelAdapter


class Labelled(Protocol):
    """Labelled items as the core reads them (a built-in task split is one): inputs ``x``, labels
    ``y``, stable ``item_ids``; ``key`` and ``condition`` name them in messages and probe names."""

    x: Tensor
    y: Tensor
    item_ids: tuple[str, ...]
    split: str

    @property
    def key(self) -> str: ...
    @property
    def condition(self) -> str: ...
    def __len__(self) -> int: ...


@dataclass(frozen=True, eq=False)
class ProbeSet:
    """The items of one condition: inputs, optional labels and stable item ids."""

    name: str
    x: Tensor
    item_ids: tuple[str, ...]
    y: Tensor | None = None
    items_hash: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.item_ids) != len(self.x):
            raise ValueError(f"condition {self.name!r}: {len(self.item_ids)} item ids for {len(self.x)} inputs")
        digest = hashlib.sha1("\n".join(self.item_ids).encode()).hexdigest()[:16]
        object.__setattr__(self, "items_hash", digest)

    def __len__(self) -> int:
        return len(self.x)


def task_probe(task: Labelled, name: str | None = None, limit: int | None = None) -> ProbeSet:
    """The first ``limit`` items of a task as one condition (named by the task's condition)."""
    n = len(task) if limit is None else min(limit, len(task))
    return ProbeSet(name or task.condition, task.x[:n], task.item_ids[:n], task.y[:n])


def class_probes(task: Labelled, per_class: int | None = None, classes: Iterable[int] | None = None) -> list[ProbeSet]:
    """One condition per class present in ``task`` (``class_<c>``), at most ``per_class`` items each."""
    present = torch.unique(task.y).tolist() if classes is None else list(classes)
    out = []
    for c in present:
        idx = torch.nonzero(task.y == c).flatten()[:per_class]
        if len(idx) == 0:
            raise ValueError(f"task {task.key}/{task.split} has no items of class {c}")
        out.append(ProbeSet(f"class_{c}", task.x[idx], tuple(task.item_ids[i] for i in idx.tolist()), task.y[idx]))
    return out


class ActivationCache:
    """In-memory activations keyed by ``(model_id, layer, condition, items_hash)``; counts hits."""

    def __init__(self, batch_size: int = 1024):
        self.batch_size = batch_size
        self._store: dict[tuple[str, str, str, str], Tensor] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def clear(self) -> None:
        self._store.clear()

    @torch.no_grad()
    def get(self, model_id: str, adapter: ModelAdapter, layer: str, probe: ProbeSet) -> Tensor:
        """Activations ``(n, *shape)`` of ``layer`` on the probe's items (computed once)."""
        key = (model_id, layer, probe.name, probe.items_hash)
        if key in self._store:
            self.hits += 1
            return self._store[key]
        self.misses += 1
        chunks = [adapter.forward_to(probe.x[i : i + self.batch_size], layer) for i in range(0, len(probe), self.batch_size)]
        acts = torch.cat(chunks).detach().float()
        self._store[key] = acts
        return acts


def probe(
    model_id: str,
    adapter: ModelAdapter,
    probes: Sequence[ProbeSet],
    layers: Sequence[str] | None = None,
    cache: ActivationCache | None = None,
) -> dict[str, dict[str, Tensor]]:
    """``condition -> layer -> activations`` for every probe set and layer (default: all layers)."""
    cache = cache if cache is not None else ActivationCache()
    names = list(layers) if layers is not None else adapter.layer_names
    return {p.name: {l: cache.get(model_id, adapter, l, p) for l in names} for p in probes}


@dataclass
class ConditionStats:
    """Mean, covariance and top principal components of one layer's activations under one condition."""

    n: int
    mean: Tensor  # (d,)
    cov: Tensor  # (d, d), unbiased
    components: Tensor  # (k, d), rows are unit principal directions, by decreasing variance
    explained: Tensor  # (k,), variance along each component


def condition_stats(acts: Tensor, k: int = 8) -> ConditionStats:
    """Statistics of flattened activations ``(n, d)`` (seed 001, Alg. 1 step 3.a.ii), in float64."""
    x = acts.reshape(acts.shape[0], -1).to(torch.float64)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"need at least 2 items for statistics, got {n}")
    mean = x.mean(dim=0)
    xc = x - mean
    _, s, vh = torch.linalg.svd(xc, full_matrices=False)
    k = min(k, len(s))
    return ConditionStats(n, mean, xc.T @ xc / (n - 1), vh[:k], s[:k] ** 2 / (n - 1))
