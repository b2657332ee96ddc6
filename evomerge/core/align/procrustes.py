"""Orthogonal Procrustes with scaling and centring."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, linear_core, register, weighted_cov


def orthogonal_procrustes(a: Tensor, b: Tensor, w: Tensor, scale: bool = True) -> Tensor:
    """``s·R`` minimizing ``Σ_i w_i ||s a_i R - b_i||²`` over (semi-)orthogonal ``R``, on centred rows.

    ``R = U Vᵀ`` from the thin SVD ``AᵀDB = U S Vᵀ`` (Schönemann 1966); ``s = tr S / tr(RᵀAᵀDAR)``,
    the least-squares scale given ``R`` (Umeyama 1991 when ``R`` is square). When widths differ, ``R`` is ``(f_a, f_b)`` with orthonormal rows or
    columns: the solution obtained by zero-padding the narrower side to the wider width and
    keeping the block that touches real coordinates (a projection when ``f_a > f_b``).
    """
    u, s, vh = torch.linalg.svd(weighted_cov(a, b, w), full_matrices=False)
    r = u @ vh
    if scale:
        ar = a @ r
        var = float((w[:, None] * ar * ar).sum())
        r = r * (float(s.sum()) / var if var > 0 else 1.0)
    return r


@register("procrustes")
class Procrustes(Aligner):
    """Scaled orthogonal map between centred activations (Procrustes analysis)."""

    def __init__(self, scale: bool = True, center: str = "condition", seed: int = 0):
        super().__init__(center, seed)
        self.scale = scale

    def fit_core(self, rows: Rows) -> nn.Module:
        return linear_core(orthogonal_procrustes(*rows.stacked(), scale=self.scale))
