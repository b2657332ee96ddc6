"""The worker-side evaluator: holds the zoo, task data and activation cache; scores one recipe.

Built once per worker (in-process pool or Ray actor) and reused for every candidate, so source
models, task items and aligner fit activations are loaded or computed once.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from evomerge.core.probe import ActivationCache
from evomerge.data.tasks import TaskData, load_task
from evomerge.distributed.pool import EvalResult, TaskResponses
from evomerge.evaluate import responses
from evomerge.recipe.materialize import Materialized, materialize
from evomerge.search.space import SearchSpace
from evomerge.zoo.catalog import Zoo

#: Items in the batch whose forward time is reported as ``latency_ms``.
LATENCY_BATCH = 256


class RecipeEvaluator:
    """Scores recipes of one search space on one split (``val`` for the search, ``test`` at the end).

    Metrics: ``accuracy/<task name>``, ``accuracy/mean`` (weighted by the tasks' weights),
    ``params``, ``added_params`` (over the reference source), ``latency_ms`` (one batch of
    ``LATENCY_BATCH`` items).
    """

    def __init__(self, space: SearchSpace, split: str = "val", estimator: str | None = None, device: str = "cpu"):
        self.space, self.split, self.device = space, split, device
        self.estimator = estimator or space.fitness.estimator
        if self.estimator != "full":
            from evomerge.errors import UserError

            raise UserError(f"fitness.estimator '{self.estimator}': only 'full' is wired into the search so far")
        self.zoo = Zoo(seed=space.zoo.seed)
        self.zoo.build(workers=1, ids=list(space.models))
        for m in space.models:
            self.zoo.adapter(m)  # load every source once, now
        self.tasks: dict[str, TaskData] = {
            t.name: load_task(t.dataset, t.condition, split, space.zoo.seed) for t in space.tasks
        }
        self.weights = {t.name: t.weight for t in space.tasks}
        self.cache = ActivationCache()

    def build(self, recipe: dict[str, Any]) -> Materialized:
        return materialize(recipe, self.zoo, self.cache)

    @torch.no_grad()
    def score(self, built: Materialized) -> tuple[dict[str, float], list[TaskResponses]]:
        """Accuracy per task (and weighted mean), sizes and latency of a built merged model."""
        model = built.module.to(self.device)
        metrics: dict[str, float] = {}
        answered: list[TaskResponses] = []
        for name, task in self.tasks.items():
            correct = responses(lambda x, key=task.key: model(x, key), task, device=self.device)
            metrics[f"accuracy/{name}"] = correct.float().mean().item()
            answered.append(TaskResponses(task.key, self.split, list(range(len(task))), correct.tolist()))
        total = sum(self.weights.values())
        metrics["accuracy/mean"] = sum(metrics[f"accuracy/{n}"] * w for n, w in self.weights.items()) / total
        metrics["params"] = float(built.params)
        metrics["added_params"] = float(built.added_params)
        first = next(iter(self.tasks.values()))
        x = first.x[:LATENCY_BATCH].to(self.device)
        start = time.perf_counter()
        model(x, first.key)
        metrics["latency_ms"] = (time.perf_counter() - start) * 1000
        return metrics, answered

    def evaluate(self, candidate_id: str, recipe: dict[str, Any]) -> EvalResult:
        start = time.perf_counter()
        metrics, answered = self.score(self.build(recipe))
        return EvalResult(candidate_id, "ok", metrics, answered, time.perf_counter() - start)
