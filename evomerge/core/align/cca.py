"""Regularized CCA and the map through the shared canonical space."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, factored_core, register, shrink, weighted_cov


@dataclass
class CCAResult:
    """Canonical directions ``pa (f_a, k)``, ``pb (f_b, k)`` and correlations ``corr (k,)``, descending."""

    pa: Tensor
    pb: Tensor
    corr: Tensor


def _inv_sqrt(c: Tensor) -> Tensor:
    vals, vecs = torch.linalg.eigh(c)
    return (vecs * vals.clamp_min(torch.finfo(c.dtype).tiny).rsqrt()) @ vecs.T


def cca(a: Tensor, b: Tensor, w: Tensor, k: int | None = None, reg: float = 1e-3) -> CCAResult:
    """Closed-form regularized CCA on centred rows (Hotelling 1936; ridge form of Vinod 1976).

    With ``Σaa``, ``Σbb`` shrunk by ``reg`` (:func:`shrink`) and ``Σab`` the weighted covariances,
    the SVD ``Σaa^{-1/2} Σab Σbb^{-1/2} = U S Vᵀ`` gives ``pa = Σaa^{-1/2} U_k``,
    ``pb = Σbb^{-1/2} V_k``, ``corr = S_k``; canonical variables ``a pa``, ``b pb`` have unit
    variance. (Seed 001's ``W = U1 U2ᵀ`` from the two data SVDs is an n×n sample-space matrix,
    not a feature map; this is the standard method.)
    """
    caa, cbb = shrink(weighted_cov(a, a, w), reg), shrink(weighted_cov(b, b, w), reg)
    wa, wb = _inv_sqrt(caa), _inv_sqrt(cbb)
    u, s, vh = torch.linalg.svd(wa @ weighted_cov(a, b, w) @ wb, full_matrices=False)
    k = min(k or len(s), len(s))
    return CCAResult(wa @ u[:, :k], wb @ vh[:k].T, s[:k])


def cca_map(a: Tensor, b: Tensor, w: Tensor, k: int | None = None, reg: float = 1e-3) -> tuple[Tensor, Tensor]:
    """``(L, R)`` with ``a ↦ a L R``: project to A's canonical variables, scale by the correlations
    (the least-squares prediction of B's canonical variables), return to B's space through
    ``Σbb pb`` (the least-squares inverse of ``b ↦ b pb``). With all components and ``reg=0``
    this equals ordinary least squares; with ``k`` components it is a rank-k map through the
    shared space.
    """
    res = cca(a, b, w, k, reg)
    cbb = weighted_cov(b, b, w)
    return res.pa * res.corr, (cbb @ res.pb).T


@register("cca")
class CCA(Aligner):
    """Map through the top-``k`` canonical components (``k=None``: all)."""

    def __init__(self, k: int | None = None, reg: float = 1e-3, center: str = "condition", seed: int = 0):
        super().__init__(center, seed)
        if k is not None and k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if reg < 0:
            raise ValueError(f"reg must be >= 0, got {reg}")
        self.k, self.reg = k, reg

    def fit_core(self, rows: Rows) -> nn.Module:
        return factored_core(*cca_map(*rows.stacked(), self.k, self.reg))
