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
- ``mpirt``: p-IRT whose ability prior comes from the recipe (:func:`recipe_prior`), in the
  spirit of MERGE³'s mp-IRT (Mencattini et al. 2025), where a merge's ability is a combination
  of its sources' abilities; here that combination is the prior mean and the candidate's own
  answers update it.

Standard errors of the IRT estimators add the delta-method term for θ̂ and the Bernoulli
noise of the answers they predict: se² = gᵀ Cov(θ̂) g + Σ_{predicted} P_i(1 − P_i)/N², with
g = ∂value/∂θ = Σ_{predicted} a_i P_i (1 − P_i) / N and Cov(θ̂) the inverse of the Fisher
information plus the prior's (a scalar for the 2PL, D × D for a multidimensional bank, where
θ̂ is the D-dimensional MAP of :func:`~evomerge.fitness.irt.ability.estimate_ability`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import UserError
from evomerge.fitness.irt.ability import STANDARD_PRIOR, ThetaPrior, estimate_ability
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


def _predicted(params: ItemParams, items: np.ndarray, y: np.ndarray, prior: ThetaPrior,
               predict: np.ndarray) -> Estimate:
    """Observed answers plus predictions on the items masked by ``predict`` (boolean over all N)."""
    n = len(params)
    theta, cov = estimate_ability(params.subset(items), y, prior)
    p = prob(theta, params)[predict]
    observed_sum = y[~predict[items]].sum()
    value = (observed_sum + p.sum()) / n
    slope = (params.loadings[predict] * (p * (1 - p))[:, None]).sum(axis=0) / n
    var = slope @ cov @ slope + (p * (1 - p)).sum() / n**2
    return Estimate(float(value), float(np.sqrt(var)), len(items), theta)


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
    every = np.ones(len(params), dtype=bool)
    return _predicted(params, items, y, prior or STANDARD_PRIOR, every)


@ESTIMATORS.register("pirt")
def pirt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, prior: ThetaPrior | None = None,
         **_: object) -> Estimate:
    items, y = _observed(params, items, correct)
    unseen = np.ones(len(params), dtype=bool)
    unseen[items] = False
    return _predicted(params, items, y, prior or STANDARD_PRIOR, unseen)


@ESTIMATORS.register("gpirt")
def gpirt(params: ItemParams, items: np.ndarray, correct: np.ndarray, *, weights: np.ndarray | None = None,
          prior: ThetaPrior | None = None, pirt_mae: float | None = None, **_: object) -> Estimate:
    if pirt_mae is None:
        raise UserError("estimator 'gpirt' needs the bank's held-out error (diagnostics.heldout_mae)")
    anchor = mean(params, items, correct, weights=weights)
    model = pirt(params, items, correct, prior=prior)
    v = anchor.stderr**2
    lam = pirt_mae**2 / (pirt_mae**2 + v) if pirt_mae**2 + v > 0 else 1.0
    return Estimate(lam * anchor.value + (1 - lam) * model.value,
                    lam * anchor.stderr + (1 - lam) * model.stderr, model.n_items, model.theta)


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
