"""Compensatory multidimensional 2PL by marginal ML with EM over a D-dimensional grid.

Model (Reckase 2009, ch. 4): P(y_ji = 1 | θ_j) = σ(a_i·θ_j − d_i), θ_j ∈ R^D, θ ~ N(0, I_D).
Bock & Aitkin's (1981) EM of :mod:`evomerge.fitness.irt.mml`, extended to the product grid of
``n_quad`` equally spaced nodes per axis on ``bounds.theta`` with weights ∝ N(q; 0, I) (15² or 9³ nodes):

E-step  π_jk ∝ w_k Π_i P_i(q_k)^y_ji (1 − P_i(q_k))^(1 − y_ji)     (missing responses skipped)
M-step  per item, Fisher scoring on x = (a_i, d_i) of the expected complete log-likelihood
        Σ_k r_ki log σ(z_ki) + (n_ki − r_ki) log σ(−z_ki),  z_ki = a_i·q_k − d_i,
        plus priors a_ik ~ N(0, s_a²), d_i ~ N(0, s_d²); the (D+1)² information per item is
        Xᵀ diag(n_k P_k Q_k) X with X = [q, −1], built for all items by one matrix product.
Then the latent scale is re-standardised (PX-EM, Liu, Rubin & Wu 1998): the respondents' posterior
mean m and covariance L Lᵀ are absorbed into the items (a ← Lᵀa, d ← d − a·m). Without it,
respondents answering thousands of items (posteriors narrower than the grid spacing) drift to
the grid's edge and beyond the ability box. After each step ‖a_i‖ (MDISC) is kept in ``bounds.a``
and d_i / ‖a_i‖ (MDIFF) in ``bounds.b``.

Identification: the N(0, I) prior fixes location and scale; the likelihood is invariant under
θ → Rᵀθ, a → Rᵀa for orthogonal R. The start is the principal components of the item-centred
responses (so the dimensions start apart), and the fitted loadings are rotated to their principal
axes (AᵀA diagonal, columns by decreasing variance, each column's sum positive): a fixed,
reproducible orientation that changes no prediction.
"""

from __future__ import annotations

import numpy as np
from scipy.special import expit, logit

from evomerge.errors import UserError
from evomerge.fitness.irt.fit import (
    FitBounds,
    IRTFit,
    grid_posterior,
    grid_posterior_moments,
    observed_answers,
    product_grid,
)
from evomerge.fitness.irt.model import ItemParams

#: Nodes per axis by dimension: 15² = 225, 9³ = 729 nodes.
N_QUAD = {2: 15, 3: 9}


def start_values(y0: np.ndarray, observed: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start values (a, d, θ): loadings from the first D principal components of the item-centred
    responses (unit scores θ, each item's loading divided by its sd, × 1.7 from the normal-ogive to the
    logistic scale); d from the item means through σ(−d / (1 + ‖a‖²/1.7²)^½), the 2PL's marginal P
    (Camilli 1994)."""
    p = np.clip(y0.sum(0) / np.maximum(observed.sum(0), 1), 0.02, 0.98)
    centred = np.where(observed, y0 - p, 0.0)
    u, s, vt = np.linalg.svd(centred, full_matrices=False)
    scale = s[:dim] / np.sqrt(max(len(y0), 1))
    a = (vt[:dim].T * scale) / np.maximum(np.sqrt(p * (1 - p)), 0.1)[:, None] * 1.7
    return a, -logit(p) * np.sqrt(1 + (a**2).sum(1) / 2.9), u[:, :dim] * np.sqrt(max(len(y0), 1))


def project(a: np.ndarray, d: np.ndarray, bounds: FitBounds) -> tuple[np.ndarray, np.ndarray]:
    """‖a‖ into ``bounds.a`` (a = 0 becomes the first axis), d / ‖a‖ into ``bounds.b``."""
    norm = np.linalg.norm(a, axis=1)
    a = np.where(norm[:, None] > 0, a, np.eye(a.shape[1])[0])
    norm = np.linalg.norm(a, axis=1)
    clipped = np.clip(norm, *bounds.a)
    a = a * (clipped / norm)[:, None]
    return a, np.clip(d, bounds.b[0] * clipped, bounds.b[1] * clipped)


def _m_step(r: np.ndarray, n: np.ndarray, nodes: np.ndarray, a: np.ndarray, d: np.ndarray, bounds: FitBounds,
            sd_a: float, sd_d: float, steps: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Fisher scoring on (a_i, d_i) for all items at once (see the module docstring)."""
    x = np.column_stack([nodes, -np.ones(len(nodes))])  # (K, D+1)
    outer = (x[:, :, None] * x[:, None, :]).reshape(len(x), -1)  # (K, (D+1)²)
    prior_prec = np.r_[np.full(nodes.shape[1], sd_a**-2), sd_d**-2]
    m = x.shape[1]
    for _ in range(steps):
        theta = np.column_stack([a, d])
        p = expit(nodes @ a.T - d)  # (K, I)
        grad = (r - n * p).T @ x - theta * prior_prec  # (I, D+1)
        hess = ((n * p * (1 - p)).T @ outer).reshape(-1, m, m) + np.diag(prior_prec)
        step = np.linalg.solve(hess, grad[..., None])[..., 0]
        step *= np.minimum(1.0, 1.0 / np.maximum(np.abs(step).max(axis=1), 1e-12))[:, None]
        a, d = project(a + step[:, :-1], d + step[:, -1], bounds)
        if np.abs(step).max() < 1e-4:
            break
    return a, d


def absorb_scale(a: np.ndarray, d: np.ndarray, mean: np.ndarray, cov: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The abilities' mean m and covariance C = L Lᵀ absorbed into the items; returns (a, d, L).

    θ = m + L z gives a·θ − d = (Lᵀ a)·z − (d − a·m), so the latent z is standardised again.
    """
    chol = np.linalg.cholesky(cov + 1e-9 * np.eye(len(mean)))
    return a @ chol, d - a @ mean, chol


def _standardize(a: np.ndarray, d: np.ndarray, post: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PX-EM rescaling (:func:`absorb_scale`) with the respondents' posterior mean and covariance on the grid."""
    weights = post.mean(axis=0)
    m = weights @ nodes
    centred = nodes - m
    return absorb_scale(a, d, m, centred.T @ (centred * weights[:, None]))[:2]


def principal_axes(a: np.ndarray) -> np.ndarray:
    """The orthogonal R that makes (aR)ᵀ(aR) diagonal, decreasing, with positive column sums."""
    values, vectors = np.linalg.eigh(a.T @ a)
    rotation = vectors[:, np.argsort(-values)]
    return rotation * np.where((a @ rotation).sum(0) < 0, -1.0, 1.0)


def fit_mirt(
    responses: np.ndarray,
    bounds: FitBounds = FitBounds(),
    *,
    dim: int = 2,
    n_quad: int | None = None,
    sd_a: float = 2.0,
    sd_d: float = 6.0,
    max_iter: int = 200,
    tol: float = 1e-5,
) -> IRTFit:
    """Fit a D-dimensional compensatory 2PL to respondents × items (0/1, NaN unanswered)."""
    if dim < 2:
        raise UserError(f"mirt: expected at least 2 dimensions (one is the mml backend), got {dim}")
    y0, observed = observed_answers(responses)
    wrong = observed - y0
    nodes, log_w = product_grid(dim, n_quad or N_QUAD.get(dim, 7), bounds.theta)
    a, d = project(*start_values(y0, observed, dim)[:2], bounds)
    n_obs = max(int(observed.sum()), 1)
    last, converged, it = -np.inf, False, 0
    for it in range(1, max_iter + 1):
        post, marginal = grid_posterior(y0, wrong, nodes @ a.T - d, log_w)
        objective = (marginal - 0.5 * float((a**2).sum()) / sd_a**2
                     - 0.5 * float((d**2).sum()) / sd_d**2) / n_obs
        if abs(objective - last) < tol:
            converged = True
            break
        last = objective
        a, d = _m_step(post.T @ y0, post.T @ observed, nodes, a, d, bounds, sd_a, sd_d)
        a, d = project(*_standardize(a, d, post, nodes), bounds)
    rotation = principal_axes(a)
    a, nodes = a @ rotation, nodes @ rotation
    theta, theta_se = grid_posterior_moments(post, nodes)
    norm = np.linalg.norm(a, axis=1)
    params = ItemParams(a, d / norm)
    return IRTFit(params, theta, theta_se, it, converged, "mirt")
