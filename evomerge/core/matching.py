"""Functional layer map between two models (seed 001, Algorithm 2).

Per condition ``t``: ``C_t[l, l'] = CKA(A_{l,t}, B_{l',t})`` over the same items; a maximum-weight
matching ``M_t`` (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment`` with
``maximize=True``; rectangular when the depths differ); each matched edge scored
``S_t(l, l') = C_t[l, l'] · min(r_l, r_l') / max(r_l, r_l')`` with ``r`` the effective ranks.
Consensus: ``score(l, l') = (1/|T|) Σ_t 1[(l, l') ∈ M_t] · S_t(l, l')``, kept when ``> θ``. The seed
sums over conditions; dividing by ``|T|`` keeps ``θ`` in [0, 1] whatever the number of conditions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from evomerge.core.similarity import CKA_MEASURES, effective_rank

Activations = Mapping[str, Mapping[str, Tensor]]  # condition -> layer -> (n, *shape)


@dataclass
class StitchPoint:
    """A candidate stitch: A's layer ``layer_a`` into B's layer ``layer_b``."""

    layer_a: str
    layer_b: str
    score: float
    per_condition: dict[str, float]  # S_t, 0 where the pair was not matched under t


@dataclass
class LayerMap:
    """The consensus map and everything it was computed from (JSON-serializable)."""

    model_a: str
    model_b: str
    layers_a: list[str]
    layers_b: list[str]
    measure: str
    theta: float
    cka: dict[str, list[list[float]]]  # condition -> [len(layers_a)][len(layers_b)]
    rank_a: dict[str, list[float]]  # condition -> effective rank per layer of A
    rank_b: dict[str, list[float]]
    points: list[StitchPoint] = field(default_factory=list)  # score > θ, best first

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> LayerMap:
        data = dict(data)
        data["points"] = [StitchPoint(**p) for p in data.get("points", [])]
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_json(), indent=2))


def cka_matrix(acts_a: Sequence[Tensor], acts_b: Sequence[Tensor], measure: str = "linear") -> np.ndarray:
    """``C[i, j] = measure(acts_a[i], acts_b[j])`` for activations on the same items."""
    fn = CKA_MEASURES.get(measure)
    return np.array([[fn(x, y) for y in acts_b] for x in acts_a], dtype=np.float64)


def hungarian(sim: np.ndarray) -> list[tuple[int, int]]:
    """Maximum-weight bipartite matching of a (possibly rectangular) similarity matrix."""
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return list(zip(rows.tolist(), cols.tolist()))


def _layers(acts: Activations, model: str) -> list[str]:
    conditions = list(acts)
    if not conditions:
        raise ValueError(f"no conditions for model {model!r}")
    layers = list(acts[conditions[0]])
    for c in conditions:
        if list(acts[c]) != layers:
            raise ValueError(f"model {model!r}: condition {c!r} has layers {list(acts[c])}, expected {layers}")
    return layers


def layer_map(
    acts_a: Activations,
    acts_b: Activations,
    theta: float = 0.0,
    measure: str = "linear",
    model_a: str = "A",
    model_b: str = "B",
) -> LayerMap:
    """Seed 001 Algorithm 2 on activations ``condition -> layer -> (n, *shape)`` of both models."""
    if set(acts_a) != set(acts_b):
        raise ValueError(f"conditions differ: {sorted(acts_a)} vs {sorted(acts_b)}")
    conditions = list(acts_a)
    layers_a, layers_b = _layers(acts_a, model_a), _layers(acts_b, model_b)
    cka, rank_a, rank_b = {}, {}, {}
    scores: dict[tuple[int, int], dict[str, float]] = {}
    for t in conditions:
        xs, ys = [acts_a[t][l] for l in layers_a], [acts_b[t][l] for l in layers_b]
        c = cka_matrix(xs, ys, measure)
        ra, rb = [effective_rank(x) for x in xs], [effective_rank(y) for y in ys]
        cka[t], rank_a[t], rank_b[t] = c.tolist(), ra, rb
        for i, j in hungarian(c):
            ratio = min(ra[i], rb[j]) / max(ra[i], rb[j]) if max(ra[i], rb[j]) > 0 else 0.0
            scores.setdefault((i, j), {})[t] = float(c[i, j] * ratio)
    points = []
    for (i, j), per in scores.items():
        score = sum(per.values()) / len(conditions)
        if score > theta:
            full = {t: per.get(t, 0.0) for t in conditions}
            points.append(StitchPoint(layers_a[i], layers_b[j], score, full))
    points.sort(key=lambda p: -p.score)
    return LayerMap(model_a, model_b, layers_a, layers_b, measure, theta, cka, rank_a, rank_b, points)
