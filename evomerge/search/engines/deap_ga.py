"""DEAP genetic algorithm: tournament selection, elitism, per-gene-type variation."""

from __future__ import annotations

from typing import Annotated

from deap import tools
from pydantic import BaseModel, Field

from evomerge.errors import ConfigError
from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.deap_base import DeapEngine, DeapSettings, Individual
from evomerge.search.space import SearchSpace


class GASettings(DeapSettings):
    tournsize: Annotated[int, Field(ge=2)] = 3
    elite: Annotated[int, Field(ge=0)] = 1


@ENGINES.register("deap_ga")
class DeapGA(DeapEngine):
    """Single-objective GA: the elite survive, the rest are bred from tournament winners."""

    Settings = GASettings
    multi_objective = False

    @classmethod
    def check(cls, space: SearchSpace) -> BaseModel:
        settings = super().check(space)
        if settings.elite >= space.engine.population:
            raise ConfigError(space.source, "engine.settings.elite",
                              f"fewer than engine.population ({space.engine.population})", settings.elite)
        return settings

    def breed(self) -> list[Individual]:
        elite = [self.toolbox.clone(i) for i in tools.selBest(self.population, self.settings.elite)]
        chosen = tools.selTournament(self.population, len(self.population) - len(elite),
                                     tournsize=self.settings.tournsize)
        return elite + self.vary(chosen)
