"""Ability of one respondent given calibrated items: MAP (or ML) estimate and its standard error.

log p(θ | y) = Σ_i [y_i log P_i(θ) + (1 − y_i) log(1 − P_i(θ))] − (θ − μ)² / (2 τ²) + const,
maximised on a bounded interval by Brent's method (scipy ``minimize_scalar``). The standard
error is the inverse square root of the observed information at θ̂, which for the 2PL equals
the Fisher information Σ_i a_i² P_i (1 − P_i), plus the prior's 1/τ² (Baker & Kim 2004, ch. 7).
τ = ∞ gives maximum likelihood.

In D dimensions (:func:`estimate_ability`, compensatory MIRT, P_i = σ(a_i·θ − d_i)) the log
posterior with prior N(μ, τ² I) is concave; damped Newton steps with gradient
Aᵀ(y − P) − (θ − μ)/τ² and Hessian −Aᵀ diag(P (1 − P)) A − I/τ² find θ̂ in the box, and the
posterior covariance of θ̂ is the inverse of that negative Hessian (Reckase 2009, ch. 6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import expit

from evomerge.fitness.irt.model import ItemParams, as_ability, information, log_likelihood, logit

THETA_BOUNDS = (-6.0, 6.0)


@dataclass(frozen=True)
class ThetaPrior:
    """Normal prior N(mean, sd² I) on ability; ``sd=inf`` means none (maximum likelihood).

    ``mean`` is a scalar, or a vector of length D for a multidimensional bank."""

    mean: float | np.ndarray = 0.0
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


def estimate_ability(
    params: ItemParams,
    correct: np.ndarray,
    prior: ThetaPrior = STANDARD_PRIOR,
    bounds: tuple[float, float] = THETA_BOUNDS,
    max_steps: int = 50,
) -> tuple[float | np.ndarray, np.ndarray]:
    """(θ̂, its covariance (D, D)) in any dimension; θ̂ is a float for a unidimensional bank."""
    if params.dim == 1:
        theta, se = estimate_theta(params, correct, prior, bounds)
        return theta, np.array([[se**2]])
    y = np.asarray(correct, dtype=float)
    a, d = params.a, params.mdisc * params.b
    mu = as_ability(prior.mean, params.dim)
    prec = prior.precision * np.eye(params.dim)
    theta = np.clip(mu.copy(), *bounds) if prior.precision else np.zeros(params.dim)
    for _ in range(max_steps):
        p = expit(a @ theta - d)
        hess = (a.T * (p * (1 - p))) @ a + prec
        step = np.linalg.solve(hess + 1e-9 * np.eye(params.dim), a.T @ (y - p) - prec @ (theta - mu))
        step *= min(1.0, 1.0 / max(np.abs(step).max(), 1e-12))
        theta = np.clip(theta + step, *bounds)
        if np.abs(step).max() < 1e-6:
            break
    p = expit(a @ theta - d)
    return theta, np.linalg.pinv((a.T * (p * (1 - p))) @ a + prec)
