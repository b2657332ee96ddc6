"""The two-parameter logistic (2PL) item response model, in one convention, in 1 or D dimensions.

evomerge writes every item as a discrimination ``a > 0`` and a difficulty ``b`` on the
ability scale (Birnbaum 1968; Lord 1980, ch. 2):

    P(correct | θ) = σ(a (θ − b)),        I(θ) = a² P (1 − P)   (Fisher information)

so an item is hardest-to-call where θ = b and a larger ``b`` is a harder item. The compensatory
multidimensional 2PL (Reckase 2009, ch. 4) has loadings a ∈ R^D and θ ∈ R^D; evomerge writes its
intercept d through Reckase's multidimensional difficulty b = d / ‖a‖ (MDIFF; ‖a‖ is MDISC):

    P(correct | θ) = σ(a·θ − d) = σ(a·θ − ‖a‖ b),   I(θ) = a aᵀ P (1 − P),

which for D = 1 and a > 0 is the 2PL above. The scalar information used to pick items is the
trace ‖a‖² P (1 − P). Other tools write the same model differently; this module is the one place
that converts:

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
    """``n`` items: discriminations ``a`` of shape (n,) (2PL) or loadings (n, D) (MIRT), difficulties ``b`` (n,)."""

    a: np.ndarray
    b: np.ndarray

    def __post_init__(self) -> None:
        a, b = np.asarray(self.a, dtype=float), np.asarray(self.b, dtype=float)
        if a.ndim not in (1, 2) or b.ndim != 1 or len(a) != len(b):
            raise ValueError(f"a must be (n,) or (n, D) and b (n,), got {a.shape} and {b.shape}")
        object.__setattr__(self, "a", a)
        object.__setattr__(self, "b", b)

    def __len__(self) -> int:
        return len(self.a)

    @property
    def dim(self) -> int:
        """D, the number of ability dimensions (1 for the 2PL)."""
        return 1 if self.a.ndim == 1 else self.a.shape[1]

    @property
    def loadings(self) -> np.ndarray:
        """a as an (n, D) matrix, whatever D."""
        return self.a.reshape(len(self), self.dim)

    @property
    def mdisc(self) -> np.ndarray:
        """‖a‖ per item (|a| = a for the 2PL)."""
        return np.linalg.norm(self.loadings, axis=1)

    def subset(self, items: np.ndarray) -> ItemParams:
        return ItemParams(self.a[items], self.b[items])


def as_ability(theta: np.ndarray | float, dim: int) -> np.ndarray:
    """θ with a trailing axis of length D when D > 1 (a scalar means that value on every dimension)."""
    theta = np.asarray(theta, dtype=float)
    if dim > 1 and (theta.ndim == 0 or theta.shape[-1] != dim):
        theta = np.broadcast_to(theta[..., None], theta.shape + (dim,))
    return theta


def logit(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """z = a (θ − b) (2PL, shape ``θ.shape + (n,)``) or a·θ − ‖a‖ b (MIRT, ``θ.shape[:-1] + (n,)``)."""
    if params.dim == 1:
        return params.a * (np.asarray(theta, dtype=float)[..., None] - params.b)
    return as_ability(theta, params.dim) @ params.a.T - params.mdisc * params.b


def prob(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """P(correct) for every ability in ``theta`` and every item."""
    return expit(logit(theta, params))


def information(theta: np.ndarray | float, params: ItemParams) -> np.ndarray:
    """Item Fisher information ‖a‖² P (1 − P) at each ability (the trace of a aᵀ P (1 − P))."""
    p = prob(theta, params)
    return params.mdisc**2 * p * (1.0 - p)


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
