"""Anchor sets: which K items a candidate answers first, with the share of the bank each stands for.

Every selector is ``f(params, k, *, seed=0, theta=0.0) -> Anchors`` (``theta`` is used by
``fisher``). Weights sum to one and feed the ``mean`` and ``gpirt`` estimators.

- ``random``: K items uniformly without replacement, weights 1/K.
- ``stratified``: items sorted by difficulty b and cut into K equal-count strata; one random item
  per stratum, weighted by its stratum's share of the bank.
- ``kmeans`` (Polo et al. 2024, tinyBenchmarks "anchor points"): k-means on the item embeddings
  (a, b); the anchor of each cluster is the item nearest its centroid, weighted by the cluster's
  share of the bank.
- ``fisher``: the K items of largest information a² P (1 − P) at ability ``theta`` (e.g. the
  population's mean ability), weights 1/K. Not a sample: use it with IRT estimators, not ``mean``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import pairwise_distances_argmin

from evomerge.errors import UserError
from evomerge.fitness.irt.model import ItemParams, information
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
    rng = np.random.default_rng(seed)
    strata = np.array_split(np.argsort(params.b, kind="stable"), k)
    items = np.array([rng.choice(s) for s in strata])
    return Anchors(items, np.array([len(s) for s in strata]) / len(params))


@ANCHORS.register("kmeans")
def kmeans_anchors(params: ItemParams, k: int, *, seed: int = 0, **_: object) -> Anchors:
    _check_k(params, k)
    embedding = np.column_stack([params.a, params.b])
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
