"""Several tasks' fitness estimates in one objective: each task's estimate with its standard error,
combined into the weighted mean.

With task estimates v_t ± s_t and weights w_t (the space's ``tasks[].weight``, default 1), the
objective is v = Σ w_t v_t / Σ w_t and, the tasks' items being disjoint and answered
independently, se = (Σ w_t² s_t²)^½ / Σ w_t (a task evaluated in full contributes s_t = 0).
s_t is the task estimator's own standard error (:mod:`evomerge.fitness.estimators`: the delta
method on the MAP/ML ability's inverse Fisher information plus prior, plus the Bernoulli noise of
the predicted items, for the IRT estimators; the design-based sampling error for ``mean`` and
``greg``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: The task name of the combined estimate (the objective key ``accuracy/mean``).
COMBINED = "mean"


@dataclass(frozen=True)
class TaskEstimate:
    """One task's accuracy for a candidate: value ± stderr, from ``items`` answered items, by
    ``estimator`` (``full``: every item, exact); ``verified``: every item answered (stderr 0)."""

    task: str
    estimator: str
    value: float
    stderr: float
    items: int
    verified: bool


def combine(estimates: Sequence[TaskEstimate], weights: Mapping[str, float]) -> TaskEstimate:
    """The weighted mean of the tasks' estimates with se (Σ w_t² s_t²)^½ / Σ w_t (module docstring)."""
    if not estimates:
        raise ValueError("combine needs at least one task estimate")
    w = [weights[e.task] for e in estimates]
    total = sum(w)
    estimators = sorted({e.estimator for e in estimates})
    return TaskEstimate(
        task=COMBINED, estimator="+".join(estimators),
        value=sum(wt * e.value for wt, e in zip(w, estimates)) / total,
        stderr=math.sqrt(sum((wt * e.stderr) ** 2 for wt, e in zip(w, estimates))) / total,
        items=sum(e.items for e in estimates), verified=all(e.verified for e in estimates))
