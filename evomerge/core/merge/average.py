"""Weight averaging (model soup, Wortsman et al. 2022): ``theta = mean_t theta_t``.

Written as ``theta_base + mean_t tau_t``, which is the same mean on the merged keys.
"""

from __future__ import annotations

import torch

from evomerge.core.merge.base import MergeMethod, MergeParams, register_method


@register_method
class Average(MergeMethod):
    name = "average"

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: MergeParams) -> torch.Tensor:
        return torch.stack(deltas).mean(dim=0)
