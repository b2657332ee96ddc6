"""Calibrate a 2PL item bank on a response matrix and measure how well it predicts new candidates.

Protocol: a share ``holdout`` of the candidates (rows) is set aside and the model is fitted on the
rest. Each held-out candidate's answered items are split at random in two halves; its ability is
estimated (MAP, N(0, 1) prior) on one half and the other half is predicted, then the halves swap.
Over all predicted responses we report the mean log-likelihood (−sklearn ``log_loss``), the AUC
(sklearn ``roc_auc_score``) and, per candidate and half, the absolute error of the predicted
accuracy (``heldout_mae``, the bias scale gp-IRT uses). The same log-likelihood with each item
predicted by its training-set mean is reported beside it as the no-ability baseline. The bank's
parameters come from a final fit on every candidate. A multidimensional backend is fitted on
the training candidates in each of its dimensions (``DIMS``: 2 and 3 for ``mirt``, 4, 8 and 12
for ``jml``) and the final fit takes the D of the largest held-out log-likelihood (``dim`` fixes
it instead).

Items every candidate answered the same way (or nobody answered) are kept, with their bounded
parameters, and flagged: ``all_correct``, ``all_wrong``, ``unanswered``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

from evomerge.console import Steps
from evomerge.errors import UserError
from evomerge.fitness.irt.ability import estimate_ability
from evomerge.fitness.irt.backends import DEFAULT_BACKEND, DIMS, fit
from evomerge.fitness.irt.fit import FitBounds, IRTFit
from evomerge.fitness.irt.model import ItemParams, prob

EPS = 1e-6


@dataclass(frozen=True)
class Calibration:
    """A fit on all candidates, per-item flags, and the held-out diagnostics."""

    fit: IRTFit
    flags: list[list[str]]
    diagnostics: dict[str, float | int | bool | str] = field(default_factory=dict)


def item_flags(responses: np.ndarray) -> list[list[str]]:
    """Per item: ``unanswered``, ``all_correct`` or ``all_wrong`` when no candidate discriminates it."""
    observed = ~np.isnan(responses)
    n_obs = observed.sum(axis=0)
    n_correct = np.nansum(responses, axis=0)
    flags: list[list[str]] = []
    for n, c in zip(n_obs, n_correct):
        flags.append(["unanswered"] if n == 0 else ["all_correct"] if c == n else ["all_wrong"] if c == 0 else [])
    return flags


def _weighted(observed: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Responses y in [0, 1] as two weighted 0/1 observations (1 with weight y, 0 with 1 − y), so the
    sklearn metrics take soft responses; for 0/1 responses the metrics are unchanged."""
    return (np.r_[np.ones_like(observed), np.zeros_like(observed)], np.r_[predicted, predicted],
            np.r_[observed, 1 - observed])


def _split_half_predictions(
    params: ItemParams, rows: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """Observed and predicted responses of held-out rows, each half predicted from the other."""
    observed, predicted, abs_err = [], [], []
    for row in rows:
        answered = np.flatnonzero(~np.isnan(row))
        perm = rng.permutation(answered)
        halves = (perm[: len(perm) // 2], perm[len(perm) // 2:])
        for seen, unseen in (halves, halves[::-1]):
            theta, _ = estimate_ability(params.subset(seen), row[seen])
            p = prob(theta, params.subset(unseen))
            observed.append(row[unseen])
            predicted.append(p)
            abs_err.append(abs(p.mean() - row[unseen].mean()))
    return np.concatenate(observed), np.concatenate(predicted), abs_err


def calibrate(
    responses: np.ndarray,
    *,
    backend: str = DEFAULT_BACKEND,
    holdout: float = 0.2,
    seed: int = 0,
    bounds: FitBounds = FitBounds(),
    dim: int | None = None,
    progress: bool = False,
) -> Calibration:
    """Fit a 2PL to ``responses`` (candidates × items, 0/1/NaN; probabilities for ``mml``) and report
    held-out fit quality;
    ``progress`` shows each fit as it starts."""
    y = np.asarray(responses, dtype=float)
    if not 0.0 <= holdout < 1.0:
        raise UserError(f"--holdout: expected a share in [0, 1), got {holdout}")
    usable = np.flatnonzero((~np.isnan(y)).sum(axis=1) >= 2)
    n_held = int(round(holdout * len(usable)))
    if len(usable) - n_held < 2:
        raise UserError(f"need at least 2 candidates to fit on after the hold-out; have {len(usable)} usable")
    rng = np.random.default_rng(seed)
    held = rng.permutation(usable)[:n_held]
    train = np.setdiff1d(np.arange(len(y)), held)

    diagnostics: dict[str, float | int | bool | str] = {
        "backend": backend, "n_candidates": len(y), "n_items": y.shape[1],
        "n_responses": int((~np.isnan(y)).sum()), "n_train": len(train), "n_heldout": n_held,
    }
    dims = DIMS.get(backend, (1,)) if dim is None else (dim,)
    with Steps(f"calibrate {backend}", (len(dims) if n_held else 0) + 1, quiet=not progress) as steps:
        if n_held:
            item_mean = np.clip(np.nan_to_num(np.nanmean(y[train], axis=0), nan=0.5), EPS, 1 - EPS)
            baseline = np.concatenate([np.broadcast_to(item_mean, row.shape)[~np.isnan(row)] for row in y[held]])
            obs_by_row = np.concatenate([row[~np.isnan(row)] for row in y[held]])
            by_dim, split_seed = {}, int(rng.integers(2**32))
            for d in dims:  # the same split halves for every D
                steps.begin(f"D={d}: fit on {len(train)} candidates, predict {n_held} held out")
                obs, pred, abs_err = _split_half_predictions(fit(y[train], backend, bounds, d).params, y[held],
                                                             np.random.default_rng(split_seed))
                y01, p, w = _weighted(obs, np.clip(pred, EPS, 1 - EPS))
                by_dim[d] = {
                    "heldout_loglik": float(-log_loss(y01, p, sample_weight=w, labels=[0, 1])),
                    "heldout_auc": float(roc_auc_score(y01, p, sample_weight=w)) if 0 < obs.sum() < len(obs)
                    else float("nan"),
                    "heldout_mae": float(np.mean(abs_err)),
                }
                steps.advance(f"D={d}: held-out loglik {by_dim[d]['heldout_loglik']:.4f}")
            dim = max(by_dim, key=lambda d: by_dim[d]["heldout_loglik"])
            y01, p, w = _weighted(obs_by_row, baseline)
            diagnostics |= by_dim[dim] | {"heldout_loglik_item_means": float(-log_loss(y01, p, sample_weight=w,
                                                                                       labels=[0, 1]))}
            if len(dims) > 1:
                diagnostics |= {f"heldout_loglik_dim{d}": m["heldout_loglik"] for d, m in by_dim.items()}
        dim = dims[0] if dim is None else dim
        steps.begin(f"D={dim}: final fit on all {len(y)} candidates")
        start = time.perf_counter()
        final = fit(y, backend, bounds, dim)
        steps.advance()
    flags = item_flags(y)
    diagnostics |= {
        "fit_wall_s": time.perf_counter() - start, "n_iter": final.n_iter, "converged": final.converged,
        "n_flagged": sum(bool(f) for f in flags), "dim": dim,
    }
    return Calibration(final, flags, diagnostics)


def recalibrate(responses: np.ndarray, new_responses: np.ndarray, **calibrate_kwargs: object) -> Calibration:
    """Refit the bank on the past matrix plus newly fully evaluated candidates' rows.

    The refit re-centres the ability scale on the enlarged population (N(0, 1) prior), so abilities
    and source priors must be re-estimated against the new bank rather than carried over.
    """
    old, new = np.asarray(responses, dtype=float), np.asarray(new_responses, dtype=float)
    if new.ndim != 2 or new.shape[1] != old.shape[1]:
        raise ValueError(f"new responses must have {old.shape[1]} items per row, got shape {new.shape}")
    return calibrate(np.vstack([old, new]), **calibrate_kwargs)
