"""Task arithmetic (Ilharco et al. 2023): ``theta = theta_base + lam * sum_t w_t tau_t``.

``lam`` may differ by layer (:data:`~evomerge.core.merge.base.PerLayer`); ``weights`` are
optional per-task weights ``w_t`` (default 1).
"""

from __future__ import annotations

import torch

from evomerge.core.merge.base import MergeMethod, MergeParams, PerLayer, layer_value, register_method
from evomerge.errors import ConfigError


class TaskArithmeticParams(MergeParams):
    lam: PerLayer[float] = 1.0
    weights: list[float] | None = None


@register_method
class TaskArithmetic(MergeMethod):
    name = "task_arithmetic"
    Params = TaskArithmeticParams

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: TaskArithmeticParams) -> torch.Tensor:
        w = params.weights or [1.0] * len(deltas)
        if len(w) != len(deltas):
            raise ConfigError("merge params", "task_arithmetic.weights", f"{len(deltas)} weights (one per task)", w)
        lam = layer_value(params.lam, key, "task_arithmetic.lam")
        return lam * sum(wi * d for wi, d in zip(w, deltas))
