"""High-dimensional compensatory 2PL by penalized joint maximum likelihood (joint MAP).

Model (as :mod:`~evomerge.fitness.irt.mirt`): P(y_ji = 1 | θ_j) = σ(a_i·θ_j − d_i), θ_j ∈ R^D.
Grid EM needs n_quad^D nodes, which stops at D = 3; past that the respondents' abilities are
estimated jointly with the items. Joint ML is consistent for exploratory item factor analysis when
both respondents and items are many (Chen, Li & Zhang 2019, Psychometrika 84:124-146), which is
the shape of a search's response matrix (hundreds of candidates × thousands of items). Chen et
al. bound ‖θ_j‖ and ‖a_i‖; here the bound is its soft, smooth form, Gaussian priors (joint MAP):

    max  Σ_observed log σ(±(a_i·θ_j − d_i)) − ½ Σ_j ‖θ_j‖² − ½ Σ_i ‖a_i‖² / s_a² − ½ Σ_i d_i² / s_d²

by L-BFGS (torch) from :mod:`mirt`'s principal-component start; missing answers are left out of
the sum. Afterwards the scale is put back on N(0, I) for the population, as mirt's PX-EM step
does: with m, C the mean and covariance of the abilities (C = Cov(θ̂) plus the mean posterior
covariance (Aᵀ diag(P Q) A + I)⁻¹, since MAP estimates are shrunk), θ = m + L z (C = L Lᵀ) is
absorbed into the items (:func:`~evomerge.fitness.irt.mirt.absorb_scale`). Then principal axes, and the bounds of
:func:`~evomerge.fitness.irt.mirt.project`. Abilities are returned on the new scale with their
posterior sd from the same covariance.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit

from evomerge.errors import UserError
from evomerge.fitness.irt.fit import FitBounds, IRTFit, observed_answers
from evomerge.fitness.irt.mirt import absorb_scale, principal_axes, project, start_values
from evomerge.fitness.irt.model import ItemParams


def _posterior_covariances(theta: np.ndarray, a: np.ndarray, d: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """(J, D, D): (Σ_{i observed} P Q a_i a_iᵀ + I)⁻¹ per respondent, the Laplace posterior covariance."""
    dim = a.shape[1]
    covs = np.empty((len(theta), dim, dim))
    for j, (t, obs) in enumerate(zip(theta, observed)):
        aj = a[obs]
        p = expit(aj @ t - d[obs])
        covs[j] = np.linalg.inv((aj.T * (p * (1 - p))) @ aj + np.eye(dim))
    return covs


def fit_jml(
    responses: np.ndarray,
    bounds: FitBounds = FitBounds(),
    *,
    dim: int = 4,
    sd_a: float = 1.0,
    sd_d: float = 6.0,
    max_iter: int = 1000,
    tol: float = 1e-9,
) -> IRTFit:
    """Fit a D-dimensional compensatory 2PL to respondents × items (0/1, NaN unanswered) by joint MAP."""
    if dim < 2:
        raise UserError(f"jml: expected at least 2 dimensions (one is the mml backend), got {dim}")
    y0, observed = observed_answers(responses)
    a0, d0, theta0 = start_values(y0, observed, dim)
    t_y, t_mask = torch.tensor(y0), torch.tensor(observed, dtype=torch.float64)
    theta, a, d = (torch.tensor(np.ascontiguousarray(v), requires_grad=True) for v in (theta0, a0, d0))
    scale = float(max(observed.sum(), 1))
    max_eval = max_iter * 5 // 4  # torch's default, named: L-BFGS also stops when it runs out of evaluations
    opt = torch.optim.LBFGS([theta, a, d], max_iter=max_iter, max_eval=max_eval, tolerance_change=tol,
                            tolerance_grad=1e-7, history_size=20, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        z = theta @ a.T - d
        nll = (torch.nn.functional.binary_cross_entropy_with_logits(z, t_y, reduction="none") * t_mask).sum()
        loss = (nll + 0.5 * theta.pow(2).sum() + 0.5 * a.pow(2).sum() / sd_a**2
                + 0.5 * d.pow(2).sum() / sd_d**2) / scale
        loss.backward()
        return loss

    opt.step(objective)
    state = opt.state[theta]
    n_iter, converged = state["n_iter"], state["n_iter"] < max_iter and state["func_evals"] < max_eval
    theta_, a_, d_ = (v.detach().numpy() for v in (theta, a, d))
    covs = _posterior_covariances(theta_, a_, d_, observed)
    mean = theta_.mean(axis=0)
    spread = np.cov(theta_.T, bias=True) + covs.mean(axis=0)
    a_, d_, chol = absorb_scale(a_, d_, mean, spread)
    rotation = principal_axes(a_)
    a_ = a_ @ rotation
    # An item nearly everyone gets right (or wrong) has a small slope and a large |d|: raise the slope along
    # its own direction so that d / ‖a‖ fits bounds.b and project() keeps d (it changes P only far out).
    norm = np.linalg.norm(a_, axis=1, keepdims=True)
    a_ *= np.maximum(1.0, np.minimum(np.abs(d_)[:, None] / max(abs(bounds.b[0]), bounds.b[1]), bounds.a[1]) / norm)
    a_, d_ = project(a_, d_, bounds)
    to_z = rotation.T @ np.linalg.inv(chol)  # z = Rᵀ L⁻¹ (θ − m)
    theta_z = (theta_ - mean) @ to_z.T
    theta_se = np.sqrt(np.einsum("de,jef,df->jd", to_z, covs, to_z))
    params = ItemParams(a_, d_ / np.linalg.norm(a_, axis=1))
    return IRTFit(params, theta_z, theta_se, int(n_iter), bool(converged), "jml")
