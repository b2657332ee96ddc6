"""TIES-merging (Yadav et al., NeurIPS 2023): trim, elect sign, disjoint merge.

1. Trim: keep the ``density`` share of each task vector's entries largest in magnitude.
2. Elect: per entry, ``gamma = sign(sum_t trimmed_t)`` (the sign carrying more total mass).
3. Disjoint mean over the tasks whose trimmed entry is non-zero and has sign ``gamma``.
4. ``theta = theta_base + lam * merged``.

Trimming is per tensor (as in mergekit), so ``density`` can differ by layer; the paper trims
the whole flattened task vector at once.
"""

from __future__ import annotations

import math
from typing import Annotated

import torch
from pydantic import Field

from evomerge.core.merge.base import MergeMethod, MergeParams, PerLayer, layer_value, register_method

Density = Annotated[float, Field(gt=0.0, le=1.0)]


def magnitude_mask(delta: torch.Tensor, density: float, rounding: str = "ceil",
                   sorted_magnitudes: torch.Tensor | None = None) -> torch.Tensor | None:  # fmt: skip
    """Boolean mask of ``delta``'s ``k`` largest-magnitude entries (None when all are kept).

    ``k = ceil(density * numel)`` (``rounding="ceil"``, evomerge's recipes) or
    ``k = max(1, floor(density * numel))`` (``"floor"``, mergekit's ``sparsify.magnitude``). The cut
    is the ``k``-th largest magnitude ``c`` (a selection in linear time, :func:`kth_smallest_`, where
    mergekit sorts): every entry above ``c`` is kept, and of those equal to ``c`` the lowest-indexed
    ones until ``k`` are kept. The set is mergekit's whenever no tie straddles the cut; at such a tie
    mergekit keeps whichever entries its (unstable) ``argsort`` puts first, which no rule reproduces.
    ``sorted_magnitudes``: ``|delta|`` flattened and sorted ascending (:meth:`Ties.factor`), kept by a
    caller that trims one update at many densities; ``c`` is then read off it, no selection.
    """
    n = delta.numel()
    k = max(1, int(density * n)) if rounding == "floor" else min(n, max(1, math.ceil(round(density * n, 6))))
    if k >= n:
        return None
    magnitude = delta.reshape(-1).abs()
    cut = float(sorted_magnitudes[n - k]) if sorted_magnitudes is not None else kth_smallest_(magnitude.clone(), n - k)
    keep = magnitude >= cut
    if int(torch.count_nonzero(keep)) > k:  # a tie straddles the cut
        keep = magnitude > cut
        need = k - int(torch.count_nonzero(keep))
        keep[(magnitude == cut).nonzero().flatten()[:need]] = True
    return keep.reshape(delta.shape)


def kth_smallest_(x: torch.Tensor, i: int) -> float:
    """The ``i``-th smallest entry (0-based) of the 1-D ``x``, by selection in linear time. On the CPU
    ``x`` is partially sorted in place (NumPy's introselect, no copy; ``torch.kthvalue`` would hold a
    copy and an int64 index per entry), so pass a temporary."""
    if x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64):
        a = x.numpy()
        a.partition(i)
        return float(a[i])
    return float(x.kthvalue(i + 1).values)


def trim_by_magnitude(delta: torch.Tensor, density: float, rounding: str = "ceil",
                      sorted_magnitudes: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """``delta`` with all but its ``k`` largest-magnitude entries set to 0 (see :func:`magnitude_mask`)."""
    keep = magnitude_mask(delta, density, rounding, sorted_magnitudes)
    return delta.clone() if keep is None else delta * keep


def elect_sign(stack: torch.Tensor, tie: float = 0.0) -> torch.Tensor:
    """Per-entry sign of the summed mass of the tasks (first axis of ``stack``).

    An exact tie (sum 0) elects ``tie``: 0 in evomerge's recipes (no task agrees, the entry keeps
    the base), +1 in mergekit (``sign_weight >= 0``).
    """
    sign = torch.sign(stack.sum(dim=0))
    if tie != 0:
        sign[sign == 0] = tie
    return sign


def disjoint_mean(stack: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """Mean over tasks of the non-zero entries that agree with ``sign`` (0 where none do)."""
    agree = stack * sign > 0  # same non-zero sign: sign(x) == s and x != 0, in one pass
    return (stack * agree).sum(dim=0) / agree.sum(dim=0, dtype=stack.dtype).clamp(min=1)


def ties_combine(deltas: list[torch.Tensor]) -> torch.Tensor:
    """Steps 2–3 on already trimmed (or dropped) updates."""
    stack = torch.stack(deltas)
    return disjoint_mean(stack, elect_sign(stack))


class TiesParams(MergeParams):
    density: PerLayer[Density] = 0.2
    lam: PerLayer[float] = 1.0


@register_method
class Ties(MergeMethod):
    name = "ties"
    Params = TiesParams

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: TiesParams) -> torch.Tensor:
        return self.combine_factored(key, deltas, [None] * len(deltas), params)

    def factor(self, key: str, delta: torch.Tensor) -> torch.Tensor:
        """``|delta|`` sorted ascending: the trim's cut at any density is read off it."""
        return delta.reshape(-1).abs().sort().values

    def combine_factored(self, key: str, deltas: list[torch.Tensor], factors: list[torch.Tensor | None], params: TiesParams) -> torch.Tensor:
        density = layer_value(params.density, key, "ties.density")
        lam = layer_value(params.lam, key, "ties.lam")
        return lam * ties_combine([trim_by_magnitude(d, density, sorted_magnitudes=f) for d, f in zip(deltas, factors)])
