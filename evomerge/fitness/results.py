"""What a worker hands back for one candidate: its answers per task split and its evaluation record.

These records cross from the evaluators (:mod:`evomerge.fitness.evaluator`) through the pools
(:mod:`evomerge.distributed`) to the runner and the run folder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from evomerge.fitness.multitask import TaskEstimate


@dataclass(frozen=True)
class TaskResponses:
    """A candidate's answers on one task split: ``items`` index that split's item id list."""

    task: str  # "dataset/condition"
    split: Literal["val", "test"]
    items: list[int]
    correct: list[bool]


@dataclass
class EvalResult:
    """One candidate's evaluation; ``objectives`` maps metric keys (``accuracy/mean``...) to values;
    ``estimates`` each task's accuracy ± stderr and the combined one (task ``mean``), last."""

    id: str
    status: Literal["ok", "failed"]
    objectives: dict[str, float] = field(default_factory=dict)
    responses: list[TaskResponses] = field(default_factory=list)
    wall_s: float = 0.0
    error: str | None = None
    estimates: list[TaskEstimate] = field(default_factory=list)


#: The metrics of candidates the driver has results for (the current Pareto front's).
Known = list[dict[str, float]]
