"""Simulated 2PL responses with known parameters, for tests and the backend benchmark.

a ~ LogNormal(0, 0.3), b ~ N(0, 1), θ ~ N(0, 1), y ~ Bernoulli(σ(a (θ − b))); a share
``missing`` of the responses is set to NaN at random (unanswered items). In D dimensions
(:func:`simulate_mirt`) each item loads mainly on one of the D abilities, like the two
experts' halves of the classes: a_i = LogNormal(0, 0.3) on its main axis and U(0, 0.4) on the
others, d_i ~ N(0, 1), θ ~ N(0, I), y ~ Bernoulli(σ(a·θ − d)).
"""

from __future__ import annotations

import numpy as np

from evomerge.fitness.irt.model import ItemParams, prob


def _responses(rng: np.random.Generator, params: ItemParams, theta: np.ndarray, missing: float) -> np.ndarray:
    y = (rng.random((len(theta), len(params))) < prob(theta, params)).astype(float)
    y[rng.random(y.shape) < missing] = np.nan
    return y


def simulate_2pl(
    n_respondents: int, n_items: int, seed: int = 0, missing: float = 0.0
) -> tuple[np.ndarray, ItemParams, np.ndarray]:
    """(responses, true item parameters, true abilities)."""
    rng = np.random.default_rng(seed)
    params = ItemParams(rng.lognormal(0.0, 0.3, n_items), rng.normal(0.0, 1.0, n_items))
    theta = rng.normal(0.0, 1.0, n_respondents)
    return _responses(rng, params, theta, missing), params, theta


def simulate_mirt(
    n_respondents: int, n_items: int, dim: int = 2, seed: int = 0, missing: float = 0.0
) -> tuple[np.ndarray, ItemParams, np.ndarray]:
    """(responses, true item parameters (loadings (n, D), MDIFF b), true abilities (n_respondents, D))."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(0.0, 0.4, (n_items, dim))
    a[np.arange(n_items), np.arange(n_items) % dim] = rng.lognormal(0.0, 0.3, n_items)
    d = rng.normal(0.0, 1.0, n_items)
    params = ItemParams(a, d / np.linalg.norm(a, axis=1))
    theta = rng.normal(0.0, 1.0, (n_respondents, dim))
    return _responses(rng, params, theta, missing), params, theta
