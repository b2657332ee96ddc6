"""DEAP NSGA-II: non-dominated sorting with crowding distance over several objectives."""

from __future__ import annotations

from deap import tools
from pydantic import BaseModel

from evomerge.errors import ConfigError
from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.deap_base import DeapEngine, Individual
from evomerge.search.space import SearchSpace


@ENGINES.register("deap_nsga2")
class DeapNSGA2(DeapEngine):
    """(mu + lambda) NSGA-II: ``selNSGA2`` survivors, ``selTournamentDCD`` parents."""

    @classmethod
    def check(cls, space: SearchSpace) -> BaseModel:
        if space.engine.population % 4:
            raise ConfigError(space.source, "engine.population",
                              "a multiple of 4 for deap_nsga2 (DEAP's selTournamentDCD)", space.engine.population)
        return super().check(space)

    def breed(self) -> list[Individual]:
        mu = self.space.engine.population
        self.archive = tools.selNSGA2(self.archive + self.population, mu)
        return self.vary(tools.selTournamentDCD(self.archive, mu))
