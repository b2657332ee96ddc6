"""Reduced-rank regression: the best rank-r linear map."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, factored_core, register
from evomerge.core.align.ridge import ridge_map


def reduced_rank_regression(a: Tensor, b: Tensor, w: Tensor, rank: int, alpha: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(L, R)`` with ``W = L R`` of rank ``r`` minimizing ``Σ_i w_i ||a_i W - b_i||²`` (+ ridge).

    Izenman 1975: with the (ridge) least-squares ``Ŵ`` and ``V_r`` the top-r right singular
    vectors of the weighted fitted values ``D^{1/2} A Ŵ``, ``W = Ŵ V_r V_rᵀ``; ``L = Ŵ V_r``,
    ``R = V_rᵀ``.
    """
    full = ridge_map(a, b, w, alpha)
    fitted = (a * w.sqrt()[:, None]) @ full
    r = min(rank, *full.shape)
    v = torch.linalg.svd(fitted, full_matrices=False).Vh[:r].T
    return full @ v, v.T


@register("lowrank")
class LowRank(Aligner):
    """Reduced-rank linear map ``f_a → rank → f_b`` (``rank·(f_a + f_b) + f_b`` parameters)."""

    def __init__(self, rank: int = 8, alpha: float = 1e-4, center: str = "condition", seed: int = 0):
        super().__init__(center, seed)
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        self.rank, self.alpha = rank, alpha

    def fit_core(self, rows: Rows) -> nn.Module:
        return factored_core(*reduced_rank_regression(*rows.stacked(), self.rank, self.alpha))
