"""The worker-side evaluator: holds the zoo, task data, activation cache and item bank; scores one recipe.

Built once per worker (in-process pool or Ray actor) and reused for every candidate, so source
models, task items, aligner fit activations and the item bank are loaded or computed once.

Fitness ``full`` answers every item of the split. An IRT estimator (``fitness.estimator`` with a
``bank``, validation split, one task) runs the model on the chosen items only and estimates the
accuracy through :class:`~evomerge.fitness.search_fitness.BankFitness` (anchors, adaptive items,
full verification of a new best, periodic refits).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch

from evomerge.core.probe import ActivationCache
from evomerge.data.tasks import TaskData, load_task
from evomerge.distributed.pool import EvalResult, Known, TaskResponses
from evomerge.errors import ConfigError, UserError
from evomerge.evaluate import responses
from evomerge.fitness.search_fitness import BankFitness, Scored
from evomerge.recipe.materialize import Materialized, materialize
from evomerge.recipe.schema import parse_recipe
from evomerge.settings import FitnessSettings, ZooSettings
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


class ObjectiveSetting(Protocol):
    @property
    def metric(self) -> str: ...
    @property
    def direction(self) -> str: ...


class EvaluatorSettings(Protocol):
    """What the evaluator reads of a search space (a :class:`~evomerge.search.space.SearchSpace` is one)."""

    @property
    def source(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def models(self) -> Sequence[str]: ...
    @property
    def tasks(self) -> Sequence[TaskSetting]: ...
    @property
    def zoo(self) -> ZooSettings: ...
    @property
    def fitness(self) -> FitnessSettings: ...
    @property
    def objectives(self) -> Sequence[ObjectiveSetting]: ...


class RecipeEvaluator:
    """Scores recipes of one search space on one split (``val`` for the search, ``test`` at the end).

    Metrics: ``accuracy/<task name>``, ``accuracy/mean`` (weighted by the tasks' weights),
    ``params``, ``added_params`` (over the reference source), ``latency_ms`` (one batch of
    ``LATENCY_BATCH`` items). With an IRT estimator also ``accuracy_stderr/<task>`` and
    ``accuracy_stderr/mean`` (tasks independent), ``items/<task>`` (items answered) and
    ``verified/<task>`` (1 when every item was answered, so the accuracy is exact).
    """

    def __init__(self, space: EvaluatorSettings, split: str = "val", estimator: str | None = None, device: str = "cpu"):
        self.space, self.split, self.device = space, split, device
        self.estimator = estimator or space.fitness.estimator
        self.tasks: dict[str, TaskData] = {
            t.name: load_task(t.dataset, t.condition, split, space.zoo.seed) for t in space.tasks
        }
        self.weights = {t.name: t.weight for t in space.tasks}
        self.fitness: dict[str, BankFitness] = {}
        if self.estimator != "full":  # the bank is checked before any model is built or trained
            self.fitness = self._bank_fitness(space.fitness.model_copy(update={"estimator": self.estimator}))
        self.zoo = Zoo(seed=space.zoo.seed)
        self.zoo.build(workers=1, ids=list(space.models), progress=True)  # what a search trains, it shows
        for m in space.models:
            self.zoo.adapter(m)  # load every source once, now
        self.cache = ActivationCache()
        if self.estimator == "mpirt":
            for name, fit in self.fitness.items():
                task = self.tasks[name]
                fit.set_sources({m: responses(self.zoo.adapter(m).forward, task, device=device).numpy()
                                 for m in space.models})

    def _bank_fitness(self, settings: FitnessSettings) -> dict[str, BankFitness]:
        if self.split != "val":
            raise UserError(f"estimator '{self.estimator}' estimates validation accuracy; split '{self.split}' "
                            "is always evaluated in full")
        if len(self.tasks) != 1:
            raise ConfigError(self.space.source, "fitness.bank", "a space with one task (a bank covers one task split)",
                              f"{len(self.tasks)} tasks")
        name, task = next(iter(self.tasks.items()))
        return {name: BankFitness(settings, task.item_ids, seed=self.space.seed, source=self.space.source)}

    def build(self, recipe: dict[str, Any]) -> Materialized:
        return materialize(recipe, self.zoo, self.cache)

    @torch.no_grad()
    def score(self, built: Materialized, recipe: dict[str, Any] | None = None
              ) -> tuple[dict[str, float], list[TaskResponses]]:
        """Accuracy per task (and weighted mean), sizes and latency of a built merged model.

        In IRT mode the accuracies are estimates; ``recipe`` gives ``mpirt`` its prior."""
        model = built.module.to(self.device)
        metrics: dict[str, float] = {"params": float(built.params), "added_params": float(built.added_params)}
        first = next(iter(self.tasks.values()))
        x = first.x[:LATENCY_BATCH].to(self.device)
        start = time.perf_counter()
        model(x, first.key)
        metrics["latency_ms"] = (time.perf_counter() - start) * 1000
        costs = self.costs(metrics)
        answered: list[TaskResponses] = []
        for name, task in self.tasks.items():
            def run(x: torch.Tensor, key: str = task.key) -> torch.Tensor:
                return model(x, key)

            if name in self.fitness:
                scored = self._estimate(self.fitness[name], run, task, recipe, costs)
                metrics[f"accuracy/{name}"] = scored.value
                metrics[f"accuracy_stderr/{name}"] = scored.stderr
                metrics[f"items/{name}"] = float(len(scored.items))
                metrics[f"verified/{name}"] = float(scored.verified)
                answered.append(TaskResponses(task.key, self.split, scored.items.tolist(),
                                              scored.correct.astype(bool).tolist()))
            else:
                correct = responses(run, task, device=self.device)
                metrics[f"accuracy/{name}"] = correct.float().mean().item()
                answered.append(TaskResponses(task.key, self.split, list(range(len(task))), correct.tolist()))
        total = sum(self.weights.values())
        metrics["accuracy/mean"] = sum(metrics[f"accuracy/{n}"] * w for n, w in self.weights.items()) / total
        if self.fitness:
            metrics["accuracy_stderr/mean"] = math.sqrt(sum(
                (metrics.get(f"accuracy_stderr/{n}", 0.0) * w) ** 2 for n, w in self.weights.items())) / total
        return metrics, answered

    def _estimate(self, fitness: BankFitness, run: Any, task: TaskData, recipe: dict[str, Any] | None,
                  costs: np.ndarray) -> Scored:
        def answer(items: np.ndarray) -> np.ndarray:
            index = torch.as_tensor(np.asarray(items, dtype=np.int64))
            return responses(run, task, device=self.device, items=index).numpy()

        prior = None
        if fitness.settings.estimator == "mpirt":
            if recipe is None:
                raise UserError("estimator 'mpirt' needs the recipe: score(built, recipe)")
            prior = fitness.prior(parse_recipe(recipe).mixing(task.key))
        return fitness.evaluate(answer, prior, costs)

    def costs(self, metrics: Mapping[str, float]) -> np.ndarray:
        """The candidate's objectives other than accuracy, oriented so that smaller is better."""
        return np.array([metrics[o.metric] * (1.0 if o.direction == "min" else -1.0)
                         for o in self.space.objectives if o.metric != "accuracy"])

    def evaluate(self, candidate_id: str, recipe: dict[str, Any], known: Known | None = None) -> EvalResult:
        """Build and score; ``known`` (the driver's front) is shared with the IRT fitness first."""
        start = time.perf_counter()
        for name, fitness in self.fitness.items():
            if known:
                fitness.share([(self.costs(m), m[f"accuracy/{name}"], bool(m.get(f"verified/{name}"))) for m in known])
        metrics, answered = self.score(self.build(recipe), recipe)
        return EvalResult(candidate_id, "ok", metrics, answered, time.perf_counter() - start)
