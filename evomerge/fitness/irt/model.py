"""The two-parameter logistic (2PL) item response model, in one convention.

evomerge writes every item as a discrimination ``a > 0`` and a difficulty ``b`` on the
ability scale (Birnbaum 1968; Lord 1980, ch. 2):

    P(correct | θ) = σ(a (θ − b)),        I(θ) = a² P (1 − P)   (Fisher information)

so an item is hardest-to-call where θ = b and a larger ``b`` is a harder item. Other
tools write the same model differently; this module is the one place that converts:

- slope–intercept form σ(a θ − d) (the issue's σ(a·θ − b), tinyBenchmarks' ``B``): d = a b;
- pyirt: σ(α θ + β), β an intercept (larger β is easier): a = α, b = −β / α;
- catsim: item rows ``[a, b, c, d]`` of the 4PL c + (d − c) σ(a (θ − b)); 2PL is c = 0, d = 1.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit, log_expit


@dataclass(frozen=True)
class ItemParams:
    """Discriminations ``a`` and difficulties ``b`` of ``n`` items (float arrays of shape (n,))."""

    a: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        a, b = np.asarray(self.a, dtype=float), np.asarray(self.b, dtype=float)
        if a.shape != b.shape or a.ndim != 1:
            raise ValueError(f"a and b must be 1-D of equal length, got {a.shape} and {b.shape}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    def __len__(self) -> int:
        return len(self.a)

    def subset(self, items: np.ndarray) -> ItemParams:
        return ItemParams(self.a[items], self.b[items])


def logit(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """z = a (θ − b), shape ``θ.shape + (n_items,)``."""
    return params.a * (np.asarray(theta, dtype=float)[..., None] - params.b)


def prob(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """P(correct) = σ(a (θ − b)) for every ability in ``theta`` and every item."""
    return expit(logit(theta, params))


def information(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """Item Fisher information a² P (1 − P) at each ability."""
    p = prob(theta, params)
    return params.a**2 * p * (1.0 - p)


def log_likelihood(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Bernoulli log-likelihood y log σ(z) + (1 − y) log σ(−z), elementwise (stable for large |z|)."""
    return y * log_expit(z) + (1.0 - y) * log_expit(-z)


def from_intercept(alpha: np.ndarray, beta: np.ndarray) -> ItemParams:
    """pyirt's σ(α θ + β) as (a, b): a = α, b = −β / α."""
    alpha = np.asarray(alpha, dtype=float)
    return ItemParams(alpha, -np.asarray(beta, dtype=float) / alpha)


def to_intercept(params: ItemParams) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) with σ(α θ + β) = σ(a (θ − b)): α = a, β = −a b."""
    return params.a.copy(), -params.a * params.b


def to_catsim(params: ItemParams) -> np.ndarray:
    """catsim's item matrix ``[a, b, c=0, d=1]`` (catsim uses the same difficulty convention)."""
    n = len(params)
    return np.column_stack([params.a, params.b, np.zeros(n), np.ones(n)])
