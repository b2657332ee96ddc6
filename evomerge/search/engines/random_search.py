"""Random search: the baseline every benchmark compares with (Optuna's RandomSampler)."""

from __future__ import annotations

from optuna.samplers import BaseSampler, RandomSampler

from evomerge.search.engines.base import ENGINES
from evomerge.search.engines.optuna_base import OptunaEngine


@ENGINES.register("random")
class RandomSearch(OptunaEngine):
    """Every gene drawn independently and uniformly (log-uniformly on log scales)."""

    def make_sampler(self, seed: int) -> BaseSampler:
        return RandomSampler(seed=seed)
