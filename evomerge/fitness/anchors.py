"""Anchor sets: which K items a candidate answers first, with the share of the bank each stands for.

Every selector is ``f(params, k, *, seed=0, theta=0.0) -> Anchors`` (``theta`` is used by
``fisher``). Weights sum to one and feed the ``mean`` and ``gpirt`` estimators.

- ``random``: K items uniformly without replacement, weights 1/K.
- ``stratified``: items sorted by difficulty b and cut into K equal-count strata; one random item
  per stratum, weighted by its stratum's share of the bank. In D > 1 dimensions the strata also
  cover the dimensions: items are first grouped by loading direction (k-means on a/‖a‖, D
  groups), K is shared among the groups in proportion to their size (largest remainders), and
  each group is cut into its own difficulty strata.
- ``neyman``: ``stratified`` with Neyman's optimal allocation (Cochran 1977, §5.5): strata hold
  equal Σ S_i, S_i = (E_θ[P_i (1 − P_i)])^½ the item's response sd over the N(0, I) population,
  so items everyone answers alike are covered by few anchors and uncertain ones by many.
- ``kmeans`` (Polo et al. 2024, tinyBenchmarks "anchor points"): k-means on the item embeddings
  (a, b) (a the D loadings in D dimensions); the anchor of each cluster is the item nearest its
  centroid, weighted by the cluster's share of the bank.
- ``fisher``: the K items of largest information ‖a‖² P (1 − P) at ability ``theta`` (e.g. the
  population's mean ability), weights 1/K. Not a sample: use it with IRT estimators, not ``mean``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, qmc
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from evomerge.errors import UserError
from evomerge.fitness.irt.fit import product_grid
from evomerge.fitness.irt.mirt import N_QUAD
from evomerge.fitness.irt.model import ItemParams, information, prob
from evomerge.registry import Registry


@dataclass(frozen=True)
class Anchors:
    """Item indices into the bank and their weights (summing to one)."""

    items: np.ndarray
    weights: np.ndarray


Selector = Callable[..., Anchors]
ANCHORS: Registry[Selector] = Registry("anchor selection")


def _check_k(params: ItemParams, k: int) -> None:
    if not 1 <= k <= len(params):
        raise UserError(f"anchors: expected 1 <= items <= {len(params)} (the bank's size), got {k}")


def _uniform(items: np.ndarray) -> Anchors:
    return Anchors(np.asarray(items, dtype=int), np.full(len(items), 1.0 / len(items)))


@ANCHORS.register("random")
def random_anchors(params: ItemParams, k: int, *, seed: int = 0, **_: object) -> Anchors:
    _check_k(params, k)
    return _uniform(np.sort(np.random.default_rng(seed).choice(len(params), k, replace=False)))


@ANCHORS.register("stratified")
def stratified_anchors(params: ItemParams, k: int, *, seed: int = 0, **_: object) -> Anchors:
    _check_k(params, k)
    return _stratify(params, k, seed, np.ones(len(params)))


@ANCHORS.register("neyman")
def neyman_anchors(params: ItemParams, k: int, *, seed: int = 0, **_: object) -> Anchors:
    _check_k(params, k)
    return _stratify(params, k, seed, item_sd(params))


#: Past this many dimensions a product grid is too large: E_θ is taken over scrambled Sobol points instead.
GRID_DIMS = 3


def ability_nodes(dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for E_θ over θ ~ N(0, I_D): a product grid for D ≤ 3, else 2¹² quasi-random
    normal points (scipy's scrambled Sobol sequence through Φ⁻¹, seed 0), equally weighted."""
    if dim <= GRID_DIMS:
        nodes, log_w = product_grid(dim, N_QUAD.get(dim, 41), (-4.0, 4.0))
        return (nodes[:, 0] if dim == 1 else nodes), np.exp(log_w)
    points = qmc.Sobol(dim, scramble=True, seed=0).random_base2(12)
    return norm.ppf(np.clip(points, 1e-9, 1 - 1e-9)), np.full(len(points), 1.0 / len(points))


def item_sd(params: ItemParams) -> np.ndarray:
    """S_i = (E_θ[P_i(θ)(1 − P_i(θ))])^½ over θ ~ N(0, I) (the bank's scale), by :func:`ability_nodes`."""
    nodes, weights = ability_nodes(params.dim)
    p = prob(nodes, params)
    return np.sqrt(weights @ (p * (1 - p)))


def _stratify(params: ItemParams, k: int, seed: int, size: np.ndarray) -> Anchors:
    """One random item per stratum; strata cut along b within direction groups at equal Σ ``size``.

    K is shared among the groups in proportion to their Σ ``size`` (largest remainders); a stratum
    h weighs N_h / N. ``size`` = 1 gives equal-count strata, ``size`` = S_i Neyman's allocation.
    """
    rng = np.random.default_rng(seed)
    size = np.maximum(size, 1e-12)
    groups = _direction_groups(params, k, seed)
    quota = np.array([size[g].sum() for g in groups]) * k / size.sum()
    counts = np.maximum(np.floor(quota).astype(int), 0)
    counts[np.argsort(counts - quota, kind="stable")[: k - counts.sum()]] += 1
    strata = []
    for g, c in zip(groups, counts):
        ordered = g[np.argsort(params.b[g], kind="stable")]
        cum = np.cumsum(size[ordered])
        cuts = np.searchsorted(cum, cum[-1] * np.arange(1, c) / c, side="right")
        strata += [s for s in np.split(ordered, np.unique(np.clip(cuts, 1, len(ordered) - 1))) if len(s)]
    items = np.array([rng.choice(s) for s in strata])
    return Anchors(items, np.array([len(s) for s in strata]) / len(params))


def _direction_groups(params: ItemParams, k: int, seed: int) -> list[np.ndarray]:
    """Item indices grouped by loading direction: one group in 1-D, else k-means on a/‖a‖ into min(D, K)."""
    if params.dim == 1:
        return [np.arange(len(params))]
    unit = params.loadings / params.mdisc[:, None]
    labels = KMeans(n_clusters=min(params.dim, k), n_init=4, random_state=seed).fit_predict(unit)
    return [np.flatnonzero(labels == g) for g in range(labels.max() + 1)]


@ANCHORS.register("kmeans")
def kmeans_anchors(params: ItemParams, k: int, *, seed: int = 0, **_: object) -> Anchors:
    _check_k(params, k)
    embedding = np.column_stack([params.loadings, params.b])
    km = KMeans(n_clusters=k, n_init=1, random_state=seed).fit(embedding)
    nearest = pairwise_distances_argmin(km.cluster_centers_, embedding)
    sizes = np.bincount(km.labels_, minlength=k) / len(params)
    # Two centroids can share a nearest item (ties, duplicate embeddings): merge their weights.
    items, inverse = np.unique(nearest, return_inverse=True)
    return Anchors(items, np.bincount(inverse, weights=sizes))


@ANCHORS.register("fisher")
def fisher_anchors(params: ItemParams, k: int, *, theta: float = 0.0, **_: object) -> Anchors:
    _check_k(params, k)
    info = information(theta, params)
    return _uniform(np.sort(np.argsort(-info, kind="stable")[:k]))
