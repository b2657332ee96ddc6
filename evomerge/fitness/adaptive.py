"""Adaptive evaluation: spend items only while a candidate's rank against a threshold is in doubt.

A candidate answers its anchors; while the confidence interval value ± z·stderr of its estimate
contains ``threshold`` (the current best's accuracy, or the front's at its cost), it answers the
``batch`` unanswered items of largest Fisher information at its current θ̂ (Lord 1980's maximum
information rule), up to the whole bank. Answers enter the estimate exactly (p-IRT), so once every
item is answered the estimate is the full accuracy with zero error.

catsim was weighed for this loop and its maths is used as a cross-check in the tests, but the loop
is written here: catsim's selectors return one item per call and filter administered items with a
Python list scan (O(N·K) per call, too slow for banks of thousands answered in batches), its
stopping rules bound the error of θ, not of the accuracy against a threshold, and its
estimator is maximum likelihood without a prior, while evomerge's estimators need MAP with the
bank's or the recipe's prior. Selection here is a numpy ``argpartition`` over the unanswered items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import UserError
from evomerge.fitness.estimators import ESTIMATORS, Estimate
from evomerge.fitness.irt.ability import ThetaPrior
from evomerge.fitness.irt.model import ItemParams, information

Answer = Callable[[np.ndarray], np.ndarray]
#: Estimators whose value stays unbiased when items are chosen from the answers so far.
ADAPTIVE_ESTIMATORS = ("irt", "pirt", "mpirt")


@dataclass(frozen=True)
class AdaptiveResult:
    """The final estimate, the items answered (in order) and the answers."""

    estimate: Estimate
    items: np.ndarray
    correct: np.ndarray


def most_informative(params: ItemParams, theta: float, answered: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` unanswered items of largest information at ``theta`` (most informative first)."""
    info = information(theta, params)
    info[answered] = -np.inf
    n = min(n, len(params) - len(answered))
    top = np.argpartition(-info, n - 1)[:n]
    return top[np.argsort(-info[top], kind="stable")]


def front_threshold(history: Sequence[tuple[np.ndarray, float]], costs: np.ndarray) -> float:
    """The accuracy a candidate with these ``costs`` must beat to join the Pareto front.

    ``history`` holds the evaluated candidates' (costs, accuracy), costs being the other
    objectives oriented so that smaller is better. A candidate is dominated exactly when one at
    least as good on every cost has a higher accuracy, so the threshold is the largest accuracy
    among those (−inf when none is: the candidate is on the front whatever its accuracy).
    """
    c = np.asarray(costs, dtype=float)
    return max((acc for other, acc in history if np.all(np.asarray(other) <= c)), default=-np.inf)


def adaptive_evaluate(
    answer: Answer,
    params: ItemParams,
    anchors: np.ndarray,
    threshold: float,
    *,
    estimator: str = "pirt",
    z: float = 1.96,
    batch: int = 10,
    max_items: int | None = None,
    prior: ThetaPrior | None = None,
    answered: np.ndarray | None = None,
    until_below: bool = False,
    growth: float = 0.0,
) -> AdaptiveResult:
    """Evaluate with ``answer(items) -> 0/1 array`` until the interval clears ``threshold``.

    ``answered``: the anchors' answers when they are already known (nothing is asked again).
    ``until_below``: stop only once the interval lies below ``threshold`` (value + z·se < threshold) or
    the cap is reached; this is the search's verification of an apparent new best. ``growth``: each
    batch is at least that share of the items answered so far (group-sequential batches growing
    geometrically, so going up to the whole bank takes tens of estimates rather than thousands).
    """
    if estimator not in ADAPTIVE_ESTIMATORS:
        raise UserError(f"adaptive evaluation needs an IRT estimator ({', '.join(ADAPTIVE_ESTIMATORS)}), "
                        f"not '{estimator}': items chosen by information are not a random sample")
    estimate_fn = ESTIMATORS.get(estimator)
    limit = len(params) if max_items is None else min(max_items, len(params))
    items = np.asarray(anchors, dtype=int)
    correct = np.asarray(answer(items) if answered is None else answered, dtype=float)
    while True:
        est = estimate_fn(params, items, correct, prior=prior)
        gap = est.value - threshold
        decided = gap < -z * est.stderr if until_below else abs(gap) > z * est.stderr
        if len(items) >= limit or decided:
            return AdaptiveResult(est, items, correct)
        size = max(batch, int(growth * len(items)))
        new = most_informative(params, est.theta, items, min(size, limit - len(items)))
        items = np.concatenate([items, new])
        correct = np.concatenate([correct, np.asarray(answer(new), dtype=float)])

