"""Optuna's CMA-ES sampler (single objective; numeric genes).

CMA-ES models only numeric genes present in every trial: categorical genes and
conditional genes are sampled by Optuna's independent sampler (random sampling),
and the engine logs which ones at start.

Optuna keeps the CMA-ES optimizer as a pickle in each trial's system attributes.
Those live only in the in-memory study and are never journaled, so a resumed run
restarts the CMA-ES distribution (mean at the centre of the space, the initial
step size): the replayed trials count toward ``n_startup_trials`` and the trial
numbers, not toward the new distribution. A run that is not interrupted is
unaffected.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

from optuna.samplers import BaseSampler, CmaEsSampler
from pydantic import BaseModel, Field

from evomerge.errors import ConfigError
from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.optuna_base import OptunaEngine
from evomerge.search.space import CategoricalGene, SearchSpace, Strict

log = logging.getLogger(__name__)


class CmaEsSettings(Strict):
    sigma0: Annotated[float, Field(gt=0)] | None = None
    n_startup_trials: Annotated[int, Field(ge=0)] = 1
    use_separable_cma: bool = False
    with_margin: bool = False  # margin keeps int genes from collapsing


@ENGINES.register("optuna_cmaes")
class OptunaCmaEs(OptunaEngine):
    """CMA-ES with ``popsize`` = engine.population."""

    Settings = CmaEsSettings
    multi_objective = False

    @classmethod
    def check(cls, space: SearchSpace) -> BaseModel:
        settings = super().check(space)
        if settings.with_margin and any(g.when for g in space.genes):
            raise ConfigError(space.source, "engine.settings.with_margin",
                              "false for a space with conditional genes (CMA-ES with margin cannot follow "
                              "a changing set of numeric genes)", True)
        return settings

    def __init__(self, space: SearchSpace, state_dir: Path | None = None):
        super().__init__(space, state_dir)
        independent = [g.name for g in space.genes if isinstance(g, CategoricalGene) or g.when]
        if independent:
            log.warning("optuna_cmaes: genes %s are categorical or conditional; Optuna's independent "
                        "(random) sampler picks them, CMA-ES models the rest", ", ".join(independent))

    def make_sampler(self, seed: int) -> BaseSampler:
        s = self.settings
        return CmaEsSampler(
            sigma0=s.sigma0, n_startup_trials=s.n_startup_trials, popsize=self.space.engine.population,
            use_separable_cma=s.use_separable_cma, with_margin=s.with_margin and not s.use_separable_cma,
            warn_independent_sampling=False, seed=seed,
        )
