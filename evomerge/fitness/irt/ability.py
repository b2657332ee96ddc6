"""Ability of one respondent given calibrated items: MAP (or ML) estimate and its standard error.

log p(θ | y) = Σ_i [y_i log P_i(θ) + (1 − y_i) log(1 − P_i(θ))] − (θ − μ)² / (2 τ²) + const,
maximised on a bounded interval by Brent's method (scipy ``minimize_scalar``). The standard
error is the inverse square root of the observed information at θ̂, which for the 2PL equals
the Fisher information Σ_i a_i² P_i (1 − P_i), plus the prior's 1/τ² (Baker & Kim 2004, ch. 7).
τ = ∞ gives maximum likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from evomerge.fitness.irt.model import ItemParams, information, log_likelihood, logit

THETA_BOUNDS = (-6.0, 6.0)


@dataclass(frozen=True)
class ThetaPrior:
    """Normal prior N(mean, sd²) on ability; ``sd=inf`` means none (maximum likelihood)."""

    mean: float = 0.0
    sd: float = 1.0

    @property
    def precision(self) -> float:
        return 0.0 if np.isinf(self.sd) else 1.0 / self.sd**2


STANDARD_PRIOR = ThetaPrior()


def estimate_theta(
    params: ItemParams,
    correct: np.ndarray,
    prior: ThetaPrior = STANDARD_PRIOR,
    bounds: tuple[float, float] = THETA_BOUNDS,
) -> tuple[float, float]:
    """(θ̂, se) from answers ``correct`` (0/1, one per item of ``params``)."""
    y = np.asarray(correct, dtype=float)

    def neg_log_post(theta: float) -> float:
        ll = log_likelihood(y, logit(theta, params)).sum()
        return -(ll - 0.5 * prior.precision * (theta - prior.mean) ** 2)

    theta = float(minimize_scalar(neg_log_post, bounds=bounds, method="bounded", options={"xatol": 1e-5}).x)
    info = float(information(theta, params).sum()) + prior.precision
    return theta, (1.0 / np.sqrt(info) if info > 0 else np.inf)
