"""Affine least squares (ridge), closed form."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, linear_core, register, shrink, weighted_cov


def ridge_map(a: Tensor, b: Tensor, w: Tensor, alpha: float = 0.0) -> Tensor:
    """``W = argmin Σ_i w_i ||a_i W - b_i||² + λ||W||²`` = ``(AᵀDA + λI)⁻¹ AᵀDB`` on centred rows.

    ``λ = alpha · mean(diag AᵀDA)`` (see :func:`shrink`). With ``alpha=0`` a rank-deficient
    system gets the minimum-norm solution (LAPACK ``gelsd``).
    """
    caa = shrink(weighted_cov(a, a, w), alpha)
    return torch.linalg.lstsq(caa, weighted_cov(a, b, w), driver="gelsd").solution


@register("ridge")
class Ridge(Aligner):
    """Affine map ``a ↦ aW + c`` by weighted (ridge) least squares; the offset comes from the centring."""

    def __init__(self, alpha: float = 1e-4, center: str = "condition", seed: int = 0):
        super().__init__(center, seed)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        self.alpha = alpha

    def fit_core(self, rows: Rows) -> nn.Module:
        return linear_core(ridge_map(*rows.stacked(), self.alpha))
