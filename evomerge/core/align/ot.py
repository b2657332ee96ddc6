"""Optimal-transport aligners: a coupling between the two clouds per condition, then a linear map.

Seed 001's OT step compares ``A1ᵀA1`` with ``A2ᵀA2`` (a scalar cost, and feature spaces of
different widths), which defines no coupling between samples. The standard method used here is
Wasserstein Procrustes (Grave, Joulin & Berthet 2019; Alvarez-Melis & Jaakkola 2018 for the
Gromov variant): map A into B's space with the current linear map, couple the mapped cloud and
B's cloud by OT on squared Euclidean cost (POT ``ot.emd`` or ``ot.sinkhorn``), replace each
``a_i``'s target by its barycentric projection ``b̂_i = Σ_j P_ij b_j / Σ_j P_ij``, refit the map
by least squares, and repeat. Pairs are used only to initialize the map (``init="pairs"``), so
mismatched or noisy pairs are corrected by the coupling.
"""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, linear_core, register
from evomerge.core.align.ridge import ridge_map

OT_METHODS = ("emd", "sinkhorn")
INITS = ("pairs", "identity")


def transport_plan(cost: Tensor, method: str = "emd", reg: float = 0.01, max_iter: int = 300) -> Tensor:
    """Coupling with uniform marginals for ``cost`` ``(n, m)``, in float64.

    The cost is scaled to max 1 first, so the Sinkhorn ``reg`` is relative. Sinkhorn runs in the
    log domain (small ``reg`` underflows otherwise) on POT's torch backend, for at most
    ``max_iter`` iterations: an approximate coupling is enough for barycentric targets.
    """
    c = unit_max(cost.to(torch.float64))
    p = torch.full((c.shape[0],), 1 / c.shape[0], dtype=torch.float64)
    q = torch.full((c.shape[1],), 1 / c.shape[1], dtype=torch.float64)
    if method == "emd":
        return torch.from_numpy(np.asarray(ot.emd(p.numpy(), q.numpy(), c.numpy())))
    if method == "sinkhorn":
        return ot.sinkhorn(p, q, c, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=1e-6, warn=False)
    raise ValueError(f"OT method must be one of {OT_METHODS}, got {method!r}")


def unit_max(c: Tensor) -> Tensor:
    """``c / max(c)`` (unchanged when the max is 0): costs on a common scale."""
    top = float(c.max()) if c.numel() else 0.0
    return c / top if top > 0 else c


def barycentric_projection(plan: Tensor, b: Tensor) -> Tensor:
    """``b̂_i = Σ_j P_ij b_j / Σ_j P_ij``: each source point's image under the coupling."""
    return (plan @ b) / plan.sum(dim=1, keepdim=True).clamp_min(torch.finfo(plan.dtype).tiny)


def subsample(rows: Rows, max_points: int, seed: int) -> Rows:
    """At most ``max_points`` paired rows per condition (same indices on both sides), seeded."""
    g = torch.Generator().manual_seed(seed)
    a, b = [], []
    for ra, rb in zip(rows.a, rows.b):
        idx = torch.randperm(len(ra), generator=g)[:max_points] if len(ra) > max_points else torch.arange(len(ra))
        a.append(ra[idx])
        b.append(rb[idx])
    return Rows(a, b, rows.weights)


class OTAligner(Aligner):
    """Wasserstein Procrustes with an affine least-squares map (see the module docstring)."""

    method: str = "emd"

    def __init__(
        self,
        init: str = "pairs",
        n_iter: int = 3,
        reg: float = 0.01,
        alpha: float = 1e-4,
        max_points: int = 1000,
        center: str = "condition",
        seed: int = 0,
    ):
        super().__init__(center, seed)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if n_iter < 1 or max_points < 2:
            raise ValueError("n_iter must be >= 1 and max_points >= 2")
        self.init, self.n_iter, self.reg, self.alpha, self.max_points = init, n_iter, reg, alpha, max_points

    def fit_core(self, rows: Rows) -> nn.Module:
        sub = subsample(rows, self.max_points, self.seed)
        a, b, w = sub.stacked()
        if self.init == "pairs":
            m = ridge_map(a, b, w, self.alpha)
        else:
            m = torch.eye(a.shape[1], b.shape[1], dtype=torch.float64)
        for _ in range(self.n_iter):
            targets = [
                barycentric_projection(transport_plan(torch.cdist(ra @ m, rb).pow(2), self.method, self.reg), rb)
                for ra, rb in zip(sub.a, sub.b)
            ]
            m = ridge_map(*Rows(sub.a, targets, sub.weights).stacked(), self.alpha)
        return linear_core(m)


@register("ot_emd")
class OTEMD(OTAligner):
    """Exact OT coupling (network simplex, POT ``ot.emd``)."""

    method = "emd"


@register("ot_sinkhorn")
class OTSinkhorn(OTAligner):
    """Entropic OT coupling (POT ``ot.sinkhorn``, log domain)."""

    method = "sinkhorn"
