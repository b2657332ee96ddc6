"""Accuracy estimators from a candidate's answers to a subset of a calibrated bank's items.

Each estimator is ``f(params, items, correct, *, weights=None, prior=None, pirt_mae=None)``
returning an :class:`Estimate` of the candidate's accuracy over all ``N = len(params)`` items,
the quantity a full evaluation would measure. With K answered items (set S, answers y_i):

- ``mean``: Σ w_i y_i (w = anchor weights, uniform if none); se² = v(1 − v)/n_eff · (1 − K/N),
  n_eff = 1/Σ w_i² (Kish's effective sample size) with the finite-population correction.
- ``irt``: θ̂ by MAP (or ML with an infinite prior sd), value (1/N) Σ_all P_i(θ̂).
- ``pirt`` (Polo et al. 2024, tinyBenchmarks, eq. p-IRT): (1/N)(Σ_S y_i + Σ_{∉S} P_i(θ̂)),
  answers where known, predictions elsewhere.
- ``gpirt`` (same paper): λ · mean + (1 − λ) · pirt with their heuristic λ = b²/(b² + v),
  b the bank's held-out prediction error (``pirt_mae`` = calibration's ``heldout_mae``) and
  v = se²(mean); se = λ se(mean) + (1 − λ) se(pirt), the bound valid under any correlation.
- ``greg``: the model-assisted difference (generalized regression) estimator of survey sampling
  (Särndal, Swensson & Wretman 1992, ch. 6): (1/N) Σ_all P_i(θ̂) + Σ_S w_i (y_i − P_i(θ̂)), the
  model's prediction corrected by the anchors' weighted residuals. It stays unbiased over the
  anchor sampling however wrong the model is (a misfit only widens it), so it needs anchors
  drawn at random (``random``, ``stratified``), not chosen by information; se² = s_e²/n_eff ·
  (1 − K/N), s_e² the weighted residual variance (with K/(K − 1)).
- ``mpirt`` (ours): p-IRT whose ability prior comes from the recipe (:func:`recipe_prior`), in the
  spirit of MERGE³'s mp-IRT, where a merge's ability is a combination of its sources' abilities;
  here that combination is the prior mean and the candidate's own answers update it.
- ``mp-irt`` (MERGE³, Mencattini et al. 2025, as its code ``mergenetic/estimator/utils.py``
  defines it: ``fit_lambda``, ``eval_mpirt_on_anchors``): the merge's ability is a combination
  θ = Σ_k λ_k θ_k of its parents' abilities, λ ∈ R^K fitted by maximum likelihood on the K
  answered items (no prior, no constraint on λ, start λ = 1/K; with one parent θ is that
  parent's); value (K/N) Σ_S w_i y_i + (1/N) Σ_{∉S} P_i(θ̂) (p-IRT's form, its observed part
  weighted by the anchor weights as their code does; equal to p-IRT's for uniform weights).
- ``gmp-irt`` (same code, ``estimate_fitness``): δ · mean + (1 − δ) · mp-IRT with their fixed
  δ = 0.5 (not gp-IRT's data-driven λ); se = δ se(mean) + (1 − δ) se(mp-IRT), as for gpirt.

Standard errors of the IRT estimators add the delta-method term for θ̂ and the Bernoulli
noise of the answers they predict: se² = gᵀ Cov(θ̂) g + Σ_{predicted} P_i(1 − P_i)/N², with
g = ∂value/∂θ = Σ_{predicted} a_i P_i (1 − P_i) / N and Cov(θ̂) the inverse of the Fisher
information plus the prior's (a scalar for the 2PL, D × D for a multidimensional bank, where
θ̂ is the D-dimensional MAP of :func:`~evomerge.fitness.irt.ability.estimate_ability`). For
``mp-irt`` Cov(θ̂) = Θᵀ H⁺ Θ, H = XᵀWX the Fisher information of λ (X = A_S Θᵀ, Θ the K × D
parents' abilities; H⁺ the pseudo-inverse, since in 1-D any K ≥ 2 parents make λ unidentified while
θ stays identified).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from evomerge.errors import UserError
from evomerge.fitness.irt.ability import STANDARD_PRIOR, THETA_BOUNDS, ThetaPrior, estimate_ability
from evomerge.fitness.irt.model import ItemParams, prob
from evomerge.registry import Registry


@dataclass(frozen=True)
class Estimate:
    """An accuracy estimate, its standard error, the items it used and (IRT estimators) θ̂ (D-vector if D > 1)."""

    value: float
    stderr: float
    n_items: int
    theta: float | np.ndarray | None = None


Estimator = Callable[..., Estimate]
ESTIMATORS: Registry[Estimator] = Registry("estimator")


def recipe_prior(source_thetas: Sequence[float], mixing: Sequence[float], sd: float = 0.5) -> ThetaPrior:
    """N(Σ c_k θ_k / Σ c_k, sd² I): the sources' abilities (scalars or D-vectors) mixed by the recipe's coefficients."""
    c = np.asarray(mixing, dtype=float)
    thetas = np.asarray(source_thetas, dtype=float)
    if c.ndim != 1 or len(c) != len(thetas) or c.sum() <= 0:
        raise UserError(f"recipe prior: expected one positive-sum coefficient per source, "
                        f"got {len(c)} coefficients for {len(thetas)} sources")
    mean = c @ thetas / c.sum()
    return ThetaPrior(float(mean) if mean.ndim == 0 else mean, sd)


def _observed(params: ItemParams, items: np.ndarray, correct: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    items = np.asarray(items, dtype=int)
    y = np.asarray(correct, dtype=float)
    if items.shape != y.shape or len(np.unique(items)) != len(items):
        raise ValueError("items and correct must be equal-length, items distinct")
    if len(items) and not 0 <= items.min() <= items.max() < len(params):
        raise ValueError(f"item index outside the bank's {len(params)} items")
    return items, y


def _normalised(weights: np.ndarray | None, n: int) -> np.ndarray:
    """Anchor weights summing to one (uniform when none are given)."""
    return np.full(n, 1.0 / n) if weights is None else np.asarray(weights, float) / np.sum(weights)


def _predicted(params: ItemParams, items: np.ndarray, observed: np.ndarray, theta: float | np.ndarray,
               cov: np.ndarray, predict: np.ndarray) -> Estimate:
    """Σ ``observed`` on the answered items not masked by ``predict`` plus Σ P_i(θ̂) on the items
    masked by ``predict`` (boolean over all N), over N; se by the delta method (module docstring)."""
    n = len(params)
    p = prob(theta, params)[predict]
    value = (observed[~predict[items]].sum() + p.sum()) / n
    slope = (params.loadings[predict] * (p * (1 - p))[:, None]).sum(axis=0) / n
    var = slope @ cov @ slope + (p * (1 - p)).sum() / n**2
    return Estimate(float(value), float(np.sqrt(var)), len(items), theta)


def _unseen(params: ItemParams, items: np.ndarray) -> np.ndarray:
    unseen = np.ones(len(params), dtype=bool)
    unseen[items] = False
    return unseen


def _blend(anchor: Estimate, model: Estimate, lam: float) -> Estimate:
    """λ · anchor + (1 − λ) · model; se λ se_a + (1 − λ) se_m, the bound valid under any correlation."""
    return Estimate(lam * anchor.value + (1 - lam) * model.value,
                    lam * anchor.stderr + (1 - lam) * model.stderr, model.n_items, model.theta)


@ESTIMATORS.register("mean")
def mean(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
         **_: object) -> Estimate:
    items, y = _observed(params, items, correct)
    w = _normalised(weights, len(y))
    value = float(np.clip(w @ y, 0.0, 1.0))  # weights summing to 1 + ε must not give sqrt(< 0)
    n_eff = 1.0 / float(w @ w)
    fpc = max(0.0, 1.0 - len(y) / len(params))
    return Estimate(value, float(np.sqrt(value * (1 - value) / n_eff * fpc)), len(y))


@ESTIMATORS.register("irt")
def irt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, prior: ThetaPrior | None = None,
        **_: object) -> Estimate:
    items, y = _observed(params, items, correct)
    theta, cov = estimate_ability(params.subset(items), y, prior or STANDARD_PRIOR)
    return _predicted(params, items, y, theta, cov, np.ones(len(params), dtype=bool))


@ESTIMATORS.register("pirt")
def pirt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, prior: ThetaPrior | None = None,
         **_: object) -> Estimate:
    items, y = _observed(params, items, correct)
    theta, cov = estimate_ability(params.subset(items), y, prior or STANDARD_PRIOR)
    return _predicted(params, items, y, theta, cov, _unseen(params, items))


@ESTIMATORS.register("gpirt")
def gpirt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
          prior: ThetaPrior | None = None, pirt_mae: float | None = None, **_: object) -> Estimate:
    if pirt_mae is None:
        raise UserError("estimator 'gpirt' needs the bank's held-out error (diagnostics.heldout_mae)")
    anchor = mean(params, items, correct, weights=weights)
    model = pirt(params, items, correct, prior=prior)
    v = anchor.stderr**2
    return _blend(anchor, model, pirt_mae**2 / (pirt_mae**2 + v) if pirt_mae**2 + v > 0 else 1.0)


@ESTIMATORS.register("greg")
def greg(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
         prior: ThetaPrior | None = None, **_: object) -> Estimate:
    items, y = _observed(params, items, correct)
    w = _normalised(weights, len(y))
    theta, _ = estimate_ability(params.subset(items), y, prior or STANDARD_PRIOR)
    p = prob(theta, params)
    resid = y - p[items]
    value = float(np.clip(p.mean() + w @ resid, 0.0, 1.0))
    k = len(y)
    s2 = float(w @ (resid - w @ resid) ** 2) * (k / (k - 1) if k > 1 else 0.0)
    fpc = max(0.0, 1.0 - k / len(params))
    return Estimate(value, float(np.sqrt(s2 * float(w @ w) * fpc)), k, theta)


@ESTIMATORS.register("mpirt")
def mpirt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, prior: ThetaPrior | None = None,
          **_: object) -> Estimate:
    if prior is None:
        raise UserError("estimator 'mpirt' needs a recipe prior (recipe_prior(source_thetas, mixing))")
    return pirt(params, items, correct, prior=prior)


#: gmp-IRT's fixed weight on the observed mean (MERGE³'s code, ``estimate_fitness(delta=0.5)``).
GMPIRT_DELTA = 0.5


def fit_mixture(params: ItemParams, correct: np.ndarray, parent_thetas: np.ndarray,
                max_steps: int = 50) -> tuple[float | np.ndarray, np.ndarray]:
    """MERGE³'s θ̂ = Θᵀλ̂ with λ̂ = argmax_λ Σ_i log P(y_i | Θᵀλ) over ``params``' items, and Cov(θ̂).

    ``parent_thetas``: Θ, one ability (scalar, or D-vector) per parent. The logit is linear in λ,
    z_i = x_i·λ − ‖a_i‖ b_i with x_i = Θ a_i, so this is a logistic regression in λ, solved by
    Newton steps λ ← λ + H⁺ Xᵀ(y − P) from λ = 1/K (H⁺: minimum-norm steps where parents are
    collinear), each step's θ move capped at 1 and kept in the ability box (answers all right or
    all wrong have no finite maximum: θ̂ stops at the box, as MERGE³'s clipped logits stop BFGS).
    One parent: θ̂ is that parent's ability (their code does the same), Cov = 0.
    """
    thetas = np.asarray(parent_thetas, dtype=float).reshape(-1, params.dim)
    if len(thetas) == 1:
        return _ability(thetas[0], params.dim), np.zeros((params.dim, params.dim))
    y = np.asarray(correct, dtype=float)
    x, d = params.loadings @ thetas.T, params.mdisc * params.b
    lam = np.full(len(thetas), 1.0 / len(thetas))
    for _ in range(max_steps):
        p = expit(x @ lam - d)
        step = np.linalg.pinv((x.T * (p * (1 - p))) @ x) @ (x.T @ (y - p))
        move = thetas.T @ step
        theta = thetas.T @ lam
        room = min((THETA_BOUNDS[1] - np.abs(theta)).min() / max(np.abs(move).max(), 1e-12), 1.0)
        scale = min(1.0, 1.0 / max(np.abs(move).max(), 1e-12), max(room, 0.0))
        lam = lam + scale * step
        if np.abs(scale * move).max() < 1e-6:
            break
    p = expit(x @ lam - d)
    cov = thetas.T @ np.linalg.pinv((x.T * (p * (1 - p))) @ x) @ thetas
    return _ability(thetas.T @ lam, params.dim), cov


def _ability(theta: np.ndarray, dim: int) -> float | np.ndarray:
    return float(theta[0]) if dim == 1 else theta


@ESTIMATORS.register("mp-irt")
def mp_irt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
           parent_thetas: np.ndarray | None = None, **_: object) -> Estimate:
    if parent_thetas is None or len(parent_thetas) == 0:
        raise UserError("estimator 'mp-irt' needs the merge's parents' abilities (parent_thetas)")
    items, y = _observed(params, items, correct)
    theta, cov = fit_mixture(params.subset(items), y, parent_thetas)
    observed = len(y) * _normalised(weights, len(y)) * y  # (K/N) Σ w_i y_i, as Σ over N
    return _predicted(params, items, observed, theta, cov, _unseen(params, items))


@ESTIMATORS.register("gmp-irt")
def gmp_irt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
            parent_thetas: np.ndarray | None = None, **_: object) -> Estimate:
    model = mp_irt(params, items, correct, weights=weights, parent_thetas=parent_thetas)
    return _blend(mean(params, items, correct, weights=weights), model, GMPIRT_DELTA)
