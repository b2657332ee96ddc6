"""Simulated 2PL responses with known parameters, for tests and the backend benchmark.

a ~ LogNormal(0, 0.3), b ~ N(0, 1), θ ~ N(0, 1), y ~ Bernoulli(σ(a (θ − b))); a share
``missing`` of the responses is set to NaN at random (unanswered items).
"""

from __future__ import annotations

import numpy as np

from evomerge.fitness.irt.model import ItemParams, prob


def simulate_2pl(
    n_respondents: int, n_items: int, seed: int = 0, missing: float = 0.0
) -> tuple[np.ndarray, ItemParams, np.ndarray]:
    """(responses, true item parameters, true abilities)."""
    rng = np.random.default_rng(seed)
    params = ItemParams(rng.lognormal(0.0, 0.3, n_items), rng.normal(0.0, 1.0, n_items))
    theta = rng.normal(0.0, 1.0, n_respondents)
    y = (rng.random((n_respondents, n_items)) < prob(theta, params)).astype(float)
    y[rng.random(y.shape) < missing] = np.nan
    return y, params, theta
