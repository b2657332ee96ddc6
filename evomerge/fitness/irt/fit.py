"""What every calibration backend takes and returns, and the quadrature grid the EM backends share."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.special import log_expit, logsumexp

from evomerge.fitness.irt.model import ItemParams


@dataclass(frozen=True)
class FitBounds:
    """Box constraints on item parameters and the ability grid, explicit so no estimate runs off.

    Items every respondent answers the same way have no finite maximum-likelihood difficulty;
    the bounds (and the priors of the ``mml`` backend) keep them finite and flagged instead.
    """

    a: tuple[float, float] = (0.2, 5.0)
    b: tuple[float, float] = (-6.0, 6.0)
    theta: tuple[float, float] = (-6.0, 6.0)


@dataclass(frozen=True)
class IRTFit:
    """Fitted items and the respondents' abilities (EAP mean and posterior sd on the backend's grid;
    shape (J,) for the 2PL, (J, D) per dimension for a multidimensional fit)."""

    params: ItemParams
    theta: np.ndarray
    theta_se: np.ndarray
    n_iter: int
    converged: bool
    backend: str


def observed_answers(responses: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(answers with 0 where missing, the mask of observed answers) of a respondents × items matrix
    of 0/1 with NaN for unanswered items."""
    y = np.asarray(responses, dtype=float)
    observed = ~np.isnan(y)
    return np.where(observed, y, 0.0), observed


def product_grid(dim: int, n_quad: int, box: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Nodes (n_quad^D, D) on box^D and log weights ∝ log N(q; 0, I), normalised."""
    axis = np.linspace(*box, n_quad)
    nodes = np.array(list(itertools.product(axis, repeat=dim)))
    log_w = -0.5 * (nodes**2).sum(axis=1)
    return nodes, log_w - logsumexp(log_w)


def grid_posterior(y0: np.ndarray, wrong: np.ndarray, z: np.ndarray, log_w: np.ndarray) -> tuple[np.ndarray, float]:
    """E-step on a quadrature grid: posterior weights π_jk ∝ w_k Π_i σ(z_ki)^y_ji σ(−z_ki)^(1−y_ji) of each
    respondent over the nodes (``y0``/``wrong``: indicators of observed right/wrong answers, ``z`` (K, I)
    logits at the nodes) and the marginal log-likelihood Σ_j log Σ_k (Bock & Aitkin 1981)."""
    joint = y0 @ log_expit(z).T + wrong @ log_expit(-z).T + log_w  # (J, K)
    marginal = logsumexp(joint, axis=1, keepdims=True)
    return np.exp(joint - marginal), float(marginal.sum())


def grid_posterior_moments(posterior: np.ndarray, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """EAP ability and posterior sd of each respondent from its posterior weights over grid nodes."""
    mean = posterior @ nodes
    return mean, np.sqrt(np.maximum(posterior @ nodes**2 - mean**2, 0.0))
