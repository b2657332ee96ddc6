"""Settings records that several layers share: the strict schema base, seeds, the zoo's seed, how
candidates are scored (fitness) and what each worker gets (resources).

They live below every package that reads them, so the recipe evaluator, the IRT fitness and the
Ray pool take them without importing the search package, whose space file embeds them.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

#: A random seed: what numpy, random and torch all accept.
Seed = Annotated[int, Field(ge=0, lt=2**32)]


class Strict(BaseModel):
    """Base of every schema model: unknown fields are errors, so are NaN and infinite numbers."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ZooSettings(Strict):
    seed: Seed = 0


class FitnessSettings(Strict):
    """How candidates are scored: on every item (``full``) or estimated from an item bank.

    ``estimator`` and ``anchors`` name entries of :mod:`evomerge.fitness`'s registries (a space file
    checks the names where it is validated); ``bank`` the item bank of a single-task space (several
    tasks: ``tasks[].bank``, one per task); ``items`` anchor items per task; ``adaptive`` adds the
    most informative items in batches of ``batch`` until the estimate's ``z``-interval clears the
    threshold (at most ``max_items``): ``threshold: best`` is the incumbent (best verified accuracy),
    ``front`` the accuracy the candidate must beat to join the Pareto front given its other
    objectives; every ``recalibrate_every`` evaluations the bank is refitted on its source runs plus
    the run's answers (None: never).
    """

    estimator: str = "full"
    bank: str | None = None
    items: Annotated[int, Field(ge=1)] | None = None
    anchors: str = "random"
    adaptive: bool = False
    z: Annotated[float, Field(gt=0)] = 1.96
    batch: Annotated[int, Field(ge=1)] = 10
    max_items: Annotated[int, Field(ge=1)] | None = None
    threshold: Literal["best", "front"] = "best"
    recalibrate_every: Annotated[int, Field(ge=1)] | None = None


class Resources(Strict):
    workers: Annotated[int, Field(ge=1)] = 1
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1
    timeout_s: Annotated[float, Field(gt=0)] | None = None
    max_retries: Annotated[int, Field(ge=0)] = 1
    #: Items per scoring batch when a worker scores item-file tasks.
    batch_size: Annotated[int, Field(ge=1)] = 32
