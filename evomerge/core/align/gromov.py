"""Gromov–Wasserstein aligner: couple the clouds by their internal distances, no pairs needed."""

from __future__ import annotations

import numpy as np
import ot
import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, linear_core, register
from evomerge.core.align.ot import barycentric_projection, subsample, unit_max
from evomerge.core.align.ridge import ridge_map

GW_INITS = ("pairs", "product")


def _distance_matrix(x: Tensor) -> np.ndarray:
    return unit_max(torch.cdist(x, x).pow(2)).numpy()


def gromov_plan(a: Tensor, b: Tensor, init: str = "product") -> Tensor:
    """GW coupling (square loss) between clouds ``a`` ``(n, f_a)`` and ``b`` ``(n', f_b)``.

    Compares the squared-distance matrices of each cloud, scaled to max 1 (Mémoli 2011; POT
    ``ot.gromov.gromov_wasserstein``, conditional gradient). GW is non-convex and blind to
    isometries, so on near-isotropic clouds the independent start ``p qᵀ`` (``init="product"``)
    often lands in a wrong optimum; ``init="pairs"`` starts from the identity coupling of the
    paired rows and lets GW move away from pairs it does not trust.
    """
    p, q = np.full(len(a), 1 / len(a)), np.full(len(b), 1 / len(b))
    g0 = None
    if init == "pairs":
        if len(a) != len(b):
            raise ValueError("init='pairs' needs paired clouds of equal size")
        g0 = np.eye(len(a)) / len(a)
    plan = ot.gromov.gromov_wasserstein(_distance_matrix(a), _distance_matrix(b), p, q, "square_loss", G0=g0)
    return torch.from_numpy(np.asarray(plan))


@register("gromov")
class Gromov(Aligner):
    """GW coupling per condition, barycentric targets, affine least-squares map.

    ``init="product"`` ignores the pairing altogether (the row order of B may be arbitrary).
    """

    def __init__(
        self, init: str = "pairs", alpha: float = 1e-4, max_points: int = 300, center: str = "condition", seed: int = 0
    ):
        super().__init__(center, seed)
        if init not in GW_INITS:
            raise ValueError(f"init must be one of {GW_INITS}, got {init!r}")
        self.init, self.alpha, self.max_points = init, alpha, max_points

    def fit_core(self, rows: Rows) -> nn.Module:
        sub = subsample(rows, self.max_points, self.seed)
        targets = [barycentric_projection(gromov_plan(ra, rb, self.init), rb) for ra, rb in zip(sub.a, sub.b)]
        return linear_core(ridge_map(*Rows(sub.a, targets, sub.weights).stacked(), self.alpha))
