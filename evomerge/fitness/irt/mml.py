"""Marginal maximum likelihood for the 2PL by EM over a quadrature grid (Bock & Aitkin 1981).

Abilities are integrated out against a fixed N(0, 1) on ``n_quad`` equally spaced nodes q_k
(this fixes the scale). With responses y_ji ∈ {0, 1} or missing (NaN, skipped):

E-step  π_jk ∝ w_k Π_i P_i(q_k)^y_ji (1 − P_i(q_k))^(1 − y_ji)       (posterior over nodes)
        n_ki = Σ_j π_jk [y_ji observed],   r_ki = Σ_j π_jk y_ji         (expected counts)
M-step  (a_i, b_i) = argmax Σ_k r_ki log P_i(q_k) + (n_ki − r_ki) log(1 − P_i(q_k))
                      + log N(log a_i; 0, s_a²) − log a_i + log N(b_i; 0, s_b²)

solved for all items at once by L-BFGS-B within the box ``FitBounds``. The priors (Mislevy
1986's Bayes modal estimation) keep items answered identically by everyone finite. Stops when
the penalised marginal log-likelihood per observed response gains less than ``tol``.
Written here because no maintained Python library fits a 2PL by MML with missing responses
in numpy/scipy (pyirt is the alternative backend; see docs/irt.md for the comparison).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp

from evomerge.fitness.irt.fit import FitBounds, IRTFit
from evomerge.fitness.irt.model import ItemParams


def _log_prior(a: np.ndarray, b: np.ndarray, sd_log_a: float, sd_b: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Log-normal prior on a, normal on b: value and gradients."""
    la = np.log(a)
    value = float(np.sum(-0.5 * (la / sd_log_a) ** 2 - la - 0.5 * (b / sd_b) ** 2))
    return value, -la / (a * sd_log_a**2) - 1.0 / a, -b / sd_b**2


def _m_step(
    r: np.ndarray, n: np.ndarray, nodes: np.ndarray, a0: np.ndarray, b0: np.ndarray,
    bounds: FitBounds, sd_log_a: float, sd_b: float,
) -> tuple[np.ndarray, np.ndarray]:
    n_items = len(a0)

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        a, b = x[:n_items], x[n_items:]
        z = a * (nodes[:, None] - b)  # (K, I)
        value = np.sum(r * log_expit(z) + (n - r) * log_expit(-z))
        resid = r - n * expit(z)
        prior, ga, gb = _log_prior(a, b, sd_log_a, sd_b)
        grad_a = np.sum(resid * (nodes[:, None] - b), axis=0) + ga
        grad_b = -a * np.sum(resid, axis=0) + gb
        return -(value + prior), -np.concatenate([grad_a, grad_b])

    box = [bounds.a] * n_items + [bounds.b] * n_items
    res = minimize(objective, np.concatenate([a0, b0]), jac=True, method="L-BFGS-B", bounds=box,
                   options={"maxiter": 50})
    return res.x[:n_items], res.x[n_items:]


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
    y = np.asarray(responses, dtype=float)
    observed = ~np.isnan(y)
    y0 = np.where(observed, y, 0.0)
    wrong = observed - y0
    nodes = np.linspace(*bounds.theta, n_quad)
    log_w = -0.5 * nodes**2
    log_w -= logsumexp(log_w)
    a = np.ones(y.shape[1])
    b = np.zeros(y.shape[1])
    n_obs = max(int(observed.sum()), 1)
    last, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        z = a * (nodes[:, None] - b)  # (K, I)
        joint = y0 @ log_expit(z).T + wrong @ log_expit(-z).T + log_w  # (J, K)
        marginal = logsumexp(joint, axis=1, keepdims=True)
        post = np.exp(joint - marginal)
        objective = (float(marginal.sum()) + _log_prior(a, b, sd_log_a, sd_b)[0]) / n_obs
        if objective - last < tol:
            converged = True
            break
        last = objective
        a, b = _m_step(post.T @ y0, post.T @ observed, nodes, a, b, bounds, sd_log_a, sd_b)
    theta = post @ nodes
    theta_se = np.sqrt(np.maximum(post @ nodes**2 - theta**2, 0.0))
    return IRTFit(ItemParams(a, b), theta, theta_se, it, converged, "mml")
