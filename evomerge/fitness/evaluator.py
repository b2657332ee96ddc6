"""What every worker-side evaluator does once a candidate is built: score it, full or through IRT.

:class:`CandidateEvaluator` holds the fitness side shared by the evaluators of zoo recipes
(:class:`~evomerge.fitness.zoo_evaluator.RecipeEvaluator`) and of recipes over model sources
(:class:`~evomerge.fitness.source_evaluator.SourceEvaluator`); they differ in how a candidate is
built (:meth:`build`), how a model answers items of a task (:meth:`answerer`) and how latency is
measured. Fitness ``full`` answers every item of the split. An IRT estimator (``fitness.estimator``,
validation split, one bank per task: ``fitness.bank`` or ``tasks[].bank``) runs the model on the
chosen items only and estimates each task's accuracy through
:class:`~evomerge.fitness.search_fitness.BankFitness` (anchors, adaptive items, full verification
of a new best, periodic refits); the tasks' estimates are combined by
:func:`~evomerge.fitness.multitask.combine` (weighted mean, se (Σ w² se²)^½ / Σ w).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from evomerge.errors import ConfigError, UserError
from evomerge.fitness.multitask import TaskEstimate, combine
from evomerge.fitness.results import EvalResult, Known, TaskResponses
from evomerge.fitness.search_fitness import PARENT_ESTIMATORS, Answer, BankFitness, Scored
from evomerge.recipe.kind import RecipeKind
from evomerge.recipe.materialize import Materialized
from evomerge.recipe.schema import parse_recipe
from evomerge.settings import FitnessSettings


class ObjectiveSetting(Protocol):
    @property
    def metric(self) -> str: ...
    @property
    def direction(self) -> str: ...


class ScoringSettings(Protocol):
    """What the fitness side reads of a search space."""

    @property
    def source(self) -> str: ...
    @property
    def seed(self) -> int: ...
    @property
    def fitness(self) -> FitnessSettings: ...
    @property
    def objectives(self) -> Sequence[ObjectiveSetting]: ...
    def task_banks(self) -> dict[str, str | None]: ...


class ScoredTask(Protocol):
    """A task split as the fitness side sees it: its run-folder key and ordered item ids."""

    @property
    def key(self) -> str: ...
    @property
    def item_ids(self) -> Sequence[str]: ...


class CandidateEvaluator(ABC):
    """Scores built candidates on the tasks of one split (``val`` for the search, ``test`` at the end).

    Metrics: ``accuracy/<task name>``, ``accuracy/mean`` (weighted by the tasks' weights),
    ``params``, ``added_params`` (over the reference source), ``latency_ms`` (see
    :meth:`latency_ms`); with an IRT estimator also ``verified/<task>`` (1 when every item was
    answered), which the driver's front hands back to the workers. Each task's estimate ± stderr
    and the combined one are the typed :class:`~evomerge.fitness.multitask.TaskEstimate` records of
    the result (``estimates``).

    A subclass sets ``self.tasks`` (name -> :class:`ScoredTask`) and ``self.weights`` and then calls
    :meth:`_init_fitness` before it loads any model, so a missing bank costs nothing.
    """

    tasks: Mapping[str, ScoredTask]
    weights: dict[str, float]

    def __init__(self, space: ScoringSettings, split: str, estimator: str | None, device: str):
        self.space, self.split, self.device = space, split, device
        self.estimator = estimator or space.fitness.estimator
        self.fitness: dict[str, BankFitness] = {}
        self.best_combined = -np.inf  # the best accuracy/mean verified on every task (several IRT tasks)

    def _init_fitness(self) -> None:
        """One :class:`BankFitness` per task when an IRT estimator is chosen (checked before any model loads)."""
        if self.estimator == "full":
            return
        if self.split != "val":
            raise UserError(f"estimator '{self.estimator}' estimates validation accuracy; split '{self.split}' "
                            "is always evaluated in full")
        settings = self.space.fitness.model_copy(update={"estimator": self.estimator})
        banks = self.space.task_banks()
        for i, (name, task) in enumerate(self.tasks.items()):
            if banks[name] is None:
                field = "fitness.bank" if len(self.tasks) == 1 else f"tasks[{i}].bank"
                raise ConfigError(self.space.source, field, f"an item bank for task '{name}' (estimator "
                                  f"'{self.estimator}', one bank per task)")
            self.fitness[name] = BankFitness(settings, task.item_ids, seed=self.space.seed, source=self.space.source,
                                             bank=banks[name], verify=len(self.tasks) == 1)

    @property
    def needs_source_answers(self) -> bool:
        """Whether the estimator reads each source model's answers (``mpirt``'s and MERGE³'s priors)."""
        return self.estimator == "mpirt" or self.estimator in PARENT_ESTIMATORS

    def _set_source_answers(self, answers: Mapping[str, Mapping[str, np.ndarray]]) -> None:
        """``answers[task][model]``: each source model's 0/1 answers on every item of the task."""
        for name, fit in self.fitness.items():
            fit.set_sources(answers[name])

    @abstractmethod
    def build(self, recipe: dict[str, Any]) -> Materialized:
        """The candidate ``recipe`` describes, ready to answer items."""

    @abstractmethod
    def answerer(self, model: nn.Module, name: str) -> Answer:
        """``answer(items) -> 0/1`` running ``model`` on those items (indices) of task ``name`` only."""

    @abstractmethod
    def latency_ms(self, model: nn.Module) -> float | None:
        """The candidate's latency figure (None: not measured for this space)."""

    @torch.no_grad()
    def score(self, built: Materialized, recipe: dict[str, Any] | None = None
              ) -> tuple[dict[str, float], list[TaskResponses], list[TaskEstimate]]:
        """Accuracy per task (and weighted mean), sizes and latency of a built merged model, the
        answers, and each task's estimate with the combined one last.

        In IRT mode the accuracies are estimates; ``recipe`` gives ``mpirt`` its prior and
        ``mp-irt`` / ``gmp-irt`` its parents."""
        model = built.module
        metrics: dict[str, float] = {"params": float(built.params), "added_params": float(built.added_params)}
        latency = self.latency_ms(model)
        if latency is not None:
            metrics["latency_ms"] = latency
        costs = self.costs(metrics)
        scored: dict[str, Scored] = {}
        kind = parse_recipe(recipe) if recipe is not None and self.fitness else None  # once, for every task
        for name, task in self.tasks.items():
            answer = self.answerer(model, name)
            if self.fitness:
                scored[name] = self._estimate(self.fitness[name], answer, task, kind, costs)
            else:
                every = np.arange(len(task.item_ids))
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

    def _verify_combined(self, scored: dict[str, Scored], model: nn.Module) -> None:
        """Several tasks: a candidate whose combined estimate beats the best verified combination
        answers every task in full (:meth:`BankFitness.complete`), so the search's best is exact on
        the objective it is ranked by, not only on each task's own incumbent."""
        def combined() -> float:
            return sum(self.weights[n] * s.value for n, s in scored.items()) / sum(self.weights.values())

        if not all(s.verified for s in scored.values()) and combined() > self.best_combined:
            for name, s in scored.items():
                if not s.verified:
                    scored[name] = self.fitness[name].complete(self.answerer(model, name), s)
        if all(s.verified for s in scored.values()):
            self.best_combined = max(self.best_combined, combined())

    def _estimate(self, fitness: BankFitness, answer: Answer, task: ScoredTask, kind: RecipeKind | None,
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


def make_evaluator(space: Any, split: str = "val", estimator: str | None = None, device: str = "cpu") -> CandidateEvaluator:
    """The evaluator a space needs: zoo recipes on built-in tasks
    (:class:`~evomerge.fitness.zoo_evaluator.RecipeEvaluator`), or recipes over model sources on
    item files (:class:`~evomerge.fitness.source_evaluator.SourceEvaluator`)."""
    if space.builtin_only:
        from evomerge.fitness.zoo_evaluator import RecipeEvaluator

        return RecipeEvaluator(space, split, estimator, device)
    from evomerge.fitness.source_evaluator import SourceEvaluator

    return SourceEvaluator(space, split, estimator, device)
