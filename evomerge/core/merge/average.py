"""Weight averaging (model soup, Wortsman et al. 2022): ``theta = sum_t w_t theta_t / sum_t w_t``.

Written as ``theta_base + sum_t w_t tau_t / sum_t w_t``, the same weighted mean on the merged keys
(mergekit's ``linear`` with ``normalize: true``). Without ``weights`` every ``w_t = 1``: the mean.
"""

from __future__ import annotations

import torch
from pydantic import Field

from evomerge.core.merge.base import MergeMethod, MergeParams, register_method
from evomerge.errors import ConfigError


class AverageParams(MergeParams):
    weights: list[float] | None = Field(None, min_length=1)


@register_method
class Average(MergeMethod):
    name = "average"
    Params = AverageParams

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: AverageParams) -> torch.Tensor:
        if params.weights is None:
            return torch.stack(deltas).mean(dim=0)
        if len(params.weights) != len(deltas) or sum(params.weights) == 0:
            raise ConfigError("merge params", "average.weights", f"{len(deltas)} weights (one per task) with a non-zero sum", params.weights)
        return sum(w * d for w, d in zip(params.weights, deltas)) / sum(params.weights)
