"""The worker-side evaluator of zoo recipes on built-in tasks.

Built once per worker (in-process pool or Ray actor) and reused for every candidate, so source
models, task items, aligner fit activations and the item bank are loaded or computed once. The
fitness side (full or IRT) is :class:`~evomerge.fitness.evaluator.CandidateEvaluator`'s.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from evomerge.core.probe import ActivationCache
from evomerge.data.tasks import TaskData, load_task
from evomerge.evaluate import responses
from evomerge.fitness.evaluator import CandidateEvaluator, ScoringSettings
from evomerge.fitness.search_fitness import Answer
from evomerge.recipe.materialize import Materialized, materialize
from evomerge.settings import ZooSettings
from evomerge.zoo.catalog import Zoo

#: Items in the batch whose forward time is reported as ``latency_ms``.
LATENCY_BATCH = 256


class TaskSetting(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def dataset(self) -> str: ...
    @property
    def condition(self) -> str: ...
    @property
    def weight(self) -> float: ...


class EvaluatorSettings(ScoringSettings, Protocol):
    """What the zoo evaluator reads of a search space (a :class:`~evomerge.search.space.SearchSpace` is one)."""

    @property
    def models(self) -> Sequence[str]: ...
    @property
    def tasks(self) -> Sequence[TaskSetting]: ...
    @property
    def zoo(self) -> ZooSettings: ...


class RecipeEvaluator(CandidateEvaluator):
    """Scores zoo recipes (stitch, weights) on built-in tasks; ``latency_ms`` is one forward of
    ``LATENCY_BATCH`` items of the first task."""

    def __init__(self, space: EvaluatorSettings, split: str = "val", estimator: str | None = None, device: str = "cpu"):
        super().__init__(space, split, estimator, device)
        self.tasks: dict[str, TaskData] = {
            t.name: load_task(t.dataset, t.condition, split, space.zoo.seed) for t in space.tasks
        }
        self.weights = {t.name: t.weight for t in space.tasks}
        self._init_fitness()  # the bank is checked before any model is built or trained
        self.zoo = Zoo(seed=space.zoo.seed)
        self.zoo.build(workers=1, ids=list(space.models), progress=True)  # what a search trains, it shows
        for m in space.models:
            self.zoo.adapter(m)  # load every source once, now
        self.cache = ActivationCache()
        if self.needs_source_answers:
            self._set_source_answers({
                name: {m: responses(self.zoo.adapter(m).forward, task, device=device).numpy() for m in space.models}
                for name, task in self.tasks.items()})

    def build(self, recipe: dict[str, Any]) -> Materialized:
        built = materialize(recipe, self.zoo, self.cache)
        built.module = built.module.to(self.device)
        return built

    def latency_ms(self, model: nn.Module) -> float:
        first = next(iter(self.tasks.values()))
        x = first.x[:LATENCY_BATCH].to(self.device)
        start = time.perf_counter()
        model(x, first.key)
        return (time.perf_counter() - start) * 1000

    def answerer(self, model: nn.Module, name: str) -> Answer:
        task = self.tasks[name]

        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x, task.key)

        def answer(items: np.ndarray) -> np.ndarray:
            index = torch.as_tensor(np.asarray(items, dtype=np.int64))
            return responses(run, task, device=self.device, items=index).numpy().astype(float)

        return answer

