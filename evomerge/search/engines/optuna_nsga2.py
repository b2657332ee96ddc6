"""Optuna's NSGA-II sampler (multi-objective genetic algorithm)."""

from __future__ import annotations

from optuna.samplers import BaseSampler, NSGAIISampler

from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.optuna_base import OptunaEngine
from evomerge.search.space import Probability, Strict


class NSGA2Settings(Strict):
    mutation_prob: Probability | None = None
    crossover_prob: Probability = 0.9
    swapping_prob: Probability = 0.5


@ENGINES.register("optuna_nsga2")
class OptunaNSGA2(OptunaEngine):
    """NSGA-II with ``population_size`` = engine.population."""

    Settings = NSGA2Settings
    journal_attrs = ("NSGAIISampler:",)  # each trial's generation and each generation's parents

    def make_sampler(self, seed: int) -> BaseSampler:
        s = self.settings
        return NSGAIISampler(
            population_size=self.space.engine.population, mutation_prob=s.mutation_prob,
            crossover_prob=s.crossover_prob, swapping_prob=s.swapping_prob, seed=seed,
        )
