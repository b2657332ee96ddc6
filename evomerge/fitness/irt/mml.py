"""Marginal maximum likelihood for the 2PL by EM over a quadrature grid (Bock & Aitkin 1981).

Abilities are integrated out against a fixed N(0, 1) on ``n_quad`` equally spaced nodes q_k
(this fixes the scale). With responses y_ji ∈ {0, 1} or missing (NaN, skipped):

E-step  π_jk ∝ w_k Π_i P_i(q_k)^y_ji (1 − P_i(q_k))^(1 − y_ji)       (posterior over nodes)
        n_ki = Σ_j π_jk [y_ji observed],   r_ki = Σ_j π_jk y_ji         (expected counts)
M-step  (a_i, b_i) = argmax Σ_k r_ki log P_i(q_k) + (n_ki − r_ki) log(1 − P_i(q_k))
                      + log N(log a_i; 0, s_a²) + log N(b_i; 0, s_b²)

solved for all items at once by Fisher scoring in (log a, b) (the 2×2 expected information
per item, vectorised over items), each step clipped to the box ``FitBounds``. The priors (Bayes
modal estimation, Mislevy 1986) keep items answered identically by everyone finite. EM stops
when the penalised marginal log-likelihood per observed response changes by less than ``tol``.
Written here because no maintained Python library fits a 2PL by MML with missing responses
in numpy/scipy (pyirt is the alternative backend; see docs/irt.md for the comparison).
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit

from evomerge.fitness.irt.fit import (
    FitBounds,
    IRTFit,
    grid_posterior,
    grid_posterior_moments,
    observed_answers,
    product_grid,
)
from evomerge.fitness.irt.model import ItemParams


def _log_prior(a: np.ndarray, b: np.ndarray, sd_log_a: float, sd_b: float) -> float:
    """log N(log a; 0, s_a²) + log N(b; 0, s_b²), up to a constant."""
    return float(np.sum(-0.5 * (np.log(a) / sd_log_a) ** 2 - 0.5 * (b / sd_b) ** 2))


def _m_step(
    r: np.ndarray, n: np.ndarray, nodes: np.ndarray, a: np.ndarray, b: np.ndarray,
    bounds: FitBounds, sd_log_a: float, sd_b: float, steps: int = 5,
) -> tuple[np.ndarray, np.ndarray]:
    """Fisher scoring in (α = log a, b); with z = a (q − b): ∂z/∂α = a (q − b), ∂z/∂b = −a."""
    log_a_box = np.log(bounds.a)
    for _ in range(steps):
        d = nodes[:, None] - b  # (K, I)
        p = expit(a * d)
        resid = r - n * p
        w = n * p * (1 - p)
        g_al = a * np.sum(resid * d, axis=0) - np.log(a) / sd_log_a**2
        g_b = -a * np.sum(resid, axis=0) - b / sd_b**2
        h_aa = a**2 * np.sum(w * d**2, axis=0) + 1 / sd_log_a**2
        h_ab = -(a**2) * np.sum(w * d, axis=0)
        h_bb = a**2 * np.sum(w, axis=0) + 1 / sd_b**2
        det = h_aa * h_bb - h_ab**2
        step_al = np.clip((h_bb * g_al - h_ab * g_b) / det, -1.0, 1.0)
        step_b = np.clip((h_aa * g_b - h_ab * g_al) / det, -1.0, 1.0)
        a = np.exp(np.clip(np.log(a) + step_al, *log_a_box))
        b = np.clip(b + step_b, *bounds.b)
        if max(np.abs(step_al).max(), np.abs(step_b).max()) < 1e-4:
            break
    return a, b


def fit_mml(
    responses: np.ndarray,
    bounds: FitBounds = FitBounds(),
    *,
    n_quad: int = 41,
    sd_log_a: float = 1.0,
    sd_b: float = 3.0,
    max_iter: int = 500,
    tol: float = 1e-6,
) -> IRTFit:
    """Fit a 2PL to a respondents × items matrix of 0/1 with NaN for unanswered items."""
    y0, observed = observed_answers(responses)
    wrong = observed - y0
    grid, log_w = product_grid(1, n_quad, bounds.theta)
    nodes = grid[:, 0]
    a = np.ones(y0.shape[1])
    b = np.zeros(y0.shape[1])
    n_obs = max(int(observed.sum()), 1)
    last, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        post, marginal = grid_posterior(y0, wrong, a * (nodes[:, None] - b), log_w)
        objective = (marginal + _log_prior(a, b, sd_log_a, sd_b)) / n_obs
        if abs(objective - last) < tol:
            converged = True
            break
        last = objective
        a, b = _m_step(post.T @ y0, post.T @ observed, nodes, a, b, bounds, sd_log_a, sd_b)
    theta, theta_se = grid_posterior_moments(post, nodes)
    return IRTFit(ItemParams(a, b), theta, theta_se, it, converged, "mml")
