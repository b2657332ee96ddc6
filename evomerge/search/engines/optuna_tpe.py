"""Optuna's tree-structured Parzen estimator (single- and multi-objective)."""

from __future__ import annotations

from typing import Annotated

from optuna.samplers import BaseSampler, TPESampler
from pydantic import Field

from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.optuna_base import OptunaEngine
from evomerge.search.space import Strict


class TPESettings(Strict):
    n_startup_trials: Annotated[int, Field(ge=1)] | None = None  # default: engine.population
    multivariate: bool = True
    group: bool = True
    constant_liar: bool = True


@ENGINES.register("optuna_tpe")
class OptunaTPE(OptunaEngine):
    """TPE; the first ``n_startup_trials`` (default: the population size) are random."""

    Settings = TPESettings
    journal_attrs = ("tpe:relative_params",)  # what the constant liar reads of a running trial

    def make_sampler(self, seed: int) -> BaseSampler:
        s = self.settings
        return TPESampler(
            n_startup_trials=s.n_startup_trials or self.space.engine.population,
            multivariate=s.multivariate, group=s.group and s.multivariate,
            constant_liar=s.constant_liar, seed=seed,
        )
