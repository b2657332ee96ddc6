"""The worker-side evaluator: holds the zoo, task data, activation cache and item bank; scores one recipe.

Built once per worker (in-process pool or Ray actor) and reused for every candidate, so source
models, task items, aligner fit activations and the item bank are loaded or computed once.

Fitness ``full`` answers every item of the split. An IRT estimator (``fitness.estimator``,
validation split, one bank per task: ``fitness.bank`` or ``tasks[].bank``) runs the model on the
chosen items only and estimates each task's accuracy through
:class:`~evomerge.fitness.search_fitness.BankFitness` (anchors, adaptive items, full verification
of a new best, periodic refits); the tasks' estimates are combined by
:func:`~evomerge.fitness.multitask.combine` (weighted mean, se (Σ w² se²)^½ / Σ w).
"""

from __future__ import annotations

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
from evomerge.fitness.multitask import TaskEstimate, combine
from evomerge.fitness.search_fitness import PARENT_ESTIMATORS, Answer, BankFitness, Scored
from evomerge.recipe.kind import RecipeKind
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
    def task_banks(self) -> dict[str, str | None]: ...


class RecipeEvaluator:
    """Scores recipes of one search space on one split (``val`` for the search, ``test`` at the end).

    Metrics: ``accuracy/<task name>``, ``accuracy/mean`` (weighted by the tasks' weights),
    ``params``, ``added_params`` (over the reference source), ``latency_ms`` (one batch of
    ``LATENCY_BATCH`` items); with an IRT estimator also ``verified/<task>`` (1 when every item was
    answered), which the driver's front hands back to the workers. Each task's estimate ± stderr
    and the combined one are the typed :class:`~evomerge.fitness.multitask.TaskEstimate` records of
    the result (``estimates``).
    """

    def __init__(self, space: EvaluatorSettings, split: str = "val", estimator: str | None = None, device: str = "cpu"):
        self.space, self.split, self.device = space, split, device
        self.estimator = estimator or space.fitness.estimator
        self.tasks: dict[str, TaskData] = {
            t.name: load_task(t.dataset, t.condition, split, space.zoo.seed) for t in space.tasks
        }
        self.weights = {t.name: t.weight for t in space.tasks}
        self.fitness: dict[str, BankFitness] = {}
        self.best_combined = -np.inf  # the best accuracy/mean verified on every task (several IRT tasks)
        if self.estimator != "full":  # the bank is checked before any model is built or trained
            self.fitness = self._bank_fitness(space.fitness.model_copy(update={"estimator": self.estimator}))
        self.zoo = Zoo(seed=space.zoo.seed)
        self.zoo.build(workers=1, ids=list(space.models), progress=True)  # what a search trains, it shows
        for m in space.models:
            self.zoo.adapter(m)  # load every source once, now
        self.cache = ActivationCache()
        if self.estimator == "mpirt" or self.estimator in PARENT_ESTIMATORS:
            for name, fit in self.fitness.items():
                task = self.tasks[name]
                fit.set_sources({m: responses(self.zoo.adapter(m).forward, task, device=device).numpy()
                                 for m in space.models})

    def _bank_fitness(self, settings: FitnessSettings) -> dict[str, BankFitness]:
        if self.split != "val":
            raise UserError(f"estimator '{self.estimator}' estimates validation accuracy; split '{self.split}' "
                            "is always evaluated in full")
        banks = self.space.task_banks()
        fits = {}
        for i, (name, task) in enumerate(self.tasks.items()):
            if banks[name] is None:
                field = "fitness.bank" if len(self.tasks) == 1 else f"tasks[{i}].bank"
                raise ConfigError(self.space.source, field, f"an item bank for task '{name}' (estimator "
                                  f"'{self.estimator}', one bank per task)")
            fits[name] = BankFitness(settings, task.item_ids, seed=self.space.seed, source=self.space.source,
                                     bank=banks[name])
        return fits

    def build(self, recipe: dict[str, Any]) -> Materialized:
        return materialize(recipe, self.zoo, self.cache)

    @torch.no_grad()
    def score(self, built: Materialized, recipe: dict[str, Any] | None = None
              ) -> tuple[dict[str, float], list[TaskResponses], list[TaskEstimate]]:
        """Accuracy per task (and weighted mean), sizes and latency of a built merged model, the
        answers, and each task's estimate with the combined one last.

        In IRT mode the accuracies are estimates; ``recipe`` gives ``mpirt`` its prior and
        ``mp-irt`` / ``gmp-irt`` its parents."""
        model = built.module.to(self.device)
        metrics: dict[str, float] = {"params": float(built.params), "added_params": float(built.added_params)}
        first = next(iter(self.tasks.values()))
        x = first.x[:LATENCY_BATCH].to(self.device)
        start = time.perf_counter()
        model(x, first.key)
        metrics["latency_ms"] = (time.perf_counter() - start) * 1000
        costs = self.costs(metrics)
        scored: dict[str, Scored] = {}
        kind = parse_recipe(recipe) if recipe is not None and self.fitness else None  # once, for every task
        for name, task in self.tasks.items():
            answer = self._answerer(model, task)
            if self.fitness:
                scored[name] = self._estimate(self.fitness[name], answer, task, kind, costs)
            else:
                every = np.arange(len(task))
                correct = answer(every)
                scored[name] = Scored(float(correct.mean()), 0.0, every, correct, True)
        if len(self.fitness) > 1:
            self._verify_combined(scored, model)
        estimates = [TaskEstimate(n, self.estimator, s.value, s.stderr, len(s.items), s.verified)
                     for n, s in scored.items()]
        estimates.append(combine(estimates, self.weights))
        metrics.update({f"accuracy/{e.task}": e.value for e in estimates})
        if self.fitness:
            metrics.update({f"verified/{n}": float(s.verified) for n, s in scored.items()})
        answered = [TaskResponses(self.tasks[n].key, self.split, s.items.tolist(), s.correct.astype(bool).tolist())
                    for n, s in scored.items()]
        return metrics, answered, estimates

    def _answerer(self, model: torch.nn.Module, task: TaskData) -> Answer:
        """``answer(items) -> 0/1`` running ``model`` on those items of ``task`` only."""
        def run(x: torch.Tensor) -> torch.Tensor:
            return model(x, task.key)

        def answer(items: np.ndarray) -> np.ndarray:
            index = torch.as_tensor(np.asarray(items, dtype=np.int64))
            return responses(run, task, device=self.device, items=index).numpy().astype(float)

        return answer

    def _verify_combined(self, scored: dict[str, Scored], model: torch.nn.Module) -> None:
        """Several tasks: a candidate whose combined estimate beats the best verified combination
        answers every task in full (:meth:`BankFitness.complete`), so the search's best is exact on
        the objective it is ranked by, not only on each task's own incumbent."""
        def combined() -> float:
            return sum(self.weights[n] * s.value for n, s in scored.items()) / sum(self.weights.values())

        if not all(s.verified for s in scored.values()) and combined() > self.best_combined:
            for name, s in scored.items():
                if not s.verified:
                    scored[name] = self.fitness[name].complete(self._answerer(model, self.tasks[name]), s)
        if all(s.verified for s in scored.values()):
            self.best_combined = max(self.best_combined, combined())

    def _estimate(self, fitness: BankFitness, answer: Answer, task: TaskData, kind: RecipeKind | None,
                  costs: np.ndarray) -> Scored:
        estimator = fitness.settings.estimator
        if kind is None and (estimator == "mpirt" or estimator in PARENT_ESTIMATORS):
            raise UserError(f"estimator '{estimator}' needs the recipe: score(built, recipe)")
        prior = fitness.prior(kind.mixing(task.key)) if estimator == "mpirt" else None
        parents = fitness.parent_thetas(kind.parents()) if estimator in PARENT_ESTIMATORS else None
        return fitness.evaluate(answer, prior, costs, parents)

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
        exact = [m["accuracy/mean"] for m in known or [] if all(m.get(f"verified/{n}") for n in self.fitness)]
        self.best_combined = max([self.best_combined, *exact])
        metrics, answered, estimates = self.score(self.build(recipe), recipe)
        return EvalResult(candidate_id, "ok", metrics, answered, time.perf_counter() - start, estimates=estimates)
