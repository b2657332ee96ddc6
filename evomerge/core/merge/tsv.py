"""Task Singular Vectors (Gargiulo et al., CVPR 2025): TSV-Compress and TSV-Merge.

Per matrix parameter (conv kernels are reshaped to ``(out, in * k...)``) each task update is
factored ``Delta_t = U_t S_t V_t^T`` and truncated to rank ``r_t`` (TSV-C). TSV-M stacks the
kept factors, ``U = [U_1 .. U_T]``, ``S = diag(S_1 .. S_T)``, ``V = [V_1 .. V_T]``, removes the
interference between tasks' subspaces by replacing ``U`` and ``V`` with their nearest
(semi-)orthogonal matrices, ``U_perp = P Q^T`` from the SVD ``U = P Sigma Q^T`` (likewise V),
and rebuilds ``Delta = alpha * U_perp S V_perp^T``. Non-matrix parameters fall back to task
arithmetic, ``alpha * sum_t tau_t`` (for orthogonal subspaces TSV-M is exactly that sum too).
The default rank per task is ``max(1, min(m, n) // T)``, the paper's ``1/T`` share.
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import torch
from pydantic import Field

from evomerge.core.merge.base import MergeMethod, MergeParams, PerLayer, layer_value, register_method
from evomerge.core.merge.task_vectors import StateDict
from evomerge.errors import ConfigError

Rank = Annotated[int, Field(ge=1)]


class LowRank(NamedTuple):
    """A truncated SVD ``U diag(S) Vh`` of a parameter reshaped to 2-D, and that parameter's shape."""

    U: torch.Tensor
    S: torch.Tensor
    Vh: torch.Tensor
    shape: torch.Size

    def dense(self) -> torch.Tensor:
        return ((self.U * self.S) @ self.Vh).reshape(self.shape)


def is_matrix(t: torch.Tensor) -> bool:
    return t.ndim >= 2


def svd(delta: torch.Tensor) -> LowRank:
    """The thin SVD of ``delta`` reshaped to ``(shape[0], -1)`` (every singular triplet)."""
    U, S, Vh = torch.linalg.svd(delta.reshape(delta.shape[0], -1), full_matrices=False)
    return LowRank(U, S, Vh, delta.shape)


def truncate(f: LowRank, rank: int) -> LowRank:
    """The top-``rank`` singular triplets of ``f`` (all of them when it has fewer)."""
    r = min(rank, f.S.numel())
    return LowRank(f.U[:, :r], f.S[:r], f.Vh[:r], f.shape)


def low_rank(delta: torch.Tensor, rank: int) -> LowRank:
    """Top-``rank`` singular triplets of ``delta`` reshaped to ``(shape[0], -1)``."""
    return truncate(svd(delta), rank)


def nearest_orthogonal(A: torch.Tensor) -> torch.Tensor:
    """``P Q^T`` from the SVD ``A = P Sigma Q^T``: the (semi-)orthogonal matrix nearest ``A``."""
    P, _, Qh = torch.linalg.svd(A, full_matrices=False)
    return P @ Qh


def tsv_merge_factors(factors: list[LowRank]) -> torch.Tensor:
    """TSV-M of one parameter from its tasks' truncated SVDs (scale not applied)."""
    U = nearest_orthogonal(torch.cat([f.U for f in factors], dim=1))
    Vh = nearest_orthogonal(torch.cat([f.Vh for f in factors], dim=0).T).T
    S = torch.cat([f.S for f in factors])
    return ((U * S) @ Vh).reshape(factors[0].shape)


def default_rank(delta: torch.Tensor, num_tasks: int) -> int:
    """The paper's ``1/T`` share of a matrix's full rank, at least 1."""
    return max(1, min(delta.shape[0], delta[0].numel()) // num_tasks)


def task_ranks(spec: Rank | list[Rank] | None, deltas: list[torch.Tensor], where: str) -> list[int]:
    """Rank per task for one parameter: ``spec`` (one for all or one per task) or the ``1/T`` default."""
    if spec is None:
        return [default_rank(deltas[0], len(deltas))] * len(deltas)
    ranks = spec if isinstance(spec, list) else [spec] * len(deltas)
    if len(ranks) != len(deltas):
        raise ConfigError("merge params", where, f"one rank or {len(deltas)} ranks (one per task)", spec)
    return ranks


def tsv_compress(task_vectors: list[StateDict], rank: PerLayer[Rank | list[Rank] | None] = None) -> list[dict[str, LowRank]]:
    """TSV-C: each task's matrix updates as truncated SVDs (non-matrix entries are left out)."""
    keys = [k for k, v in task_vectors[0].items() if is_matrix(v)]
    out: list[dict[str, LowRank]] = [{} for _ in task_vectors]
    for k in keys:
        deltas = [tv[k] for tv in task_vectors]
        for t, r in enumerate(task_ranks(layer_value(rank, k, "tsv.rank"), deltas, "tsv.rank")):
            out[t][k] = low_rank(deltas[t], r)
    return out


def tsv_merge(compressed: list[dict[str, LowRank]], alpha: PerLayer[float] = 1.0) -> StateDict:
    """TSV-M of stored TSV-C factors (as :func:`tsv_compress` returns): the merged matrix updates."""
    return {k: layer_value(alpha, k, "tsv.alpha") * tsv_merge_factors([c[k] for c in compressed]) for k in compressed[0]}


class TsvParams(MergeParams):
    alpha: PerLayer[float] = 1.0
    rank: PerLayer[Rank | list[Rank] | None] = None


@register_method
class Tsv(MergeMethod):
    name = "tsv"
    Params = TsvParams

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: TsvParams) -> torch.Tensor:
        return self.combine_factored(key, deltas, [self.factor(key, d) for d in deltas], params)

    def factor(self, key: str, delta: torch.Tensor) -> LowRank | None:
        """A matrix update's full SVD, which every rank truncates (None for a non-matrix)."""
        return svd(delta) if is_matrix(delta) else None

    def combine_factored(self, key: str, deltas: list[torch.Tensor], factors: list[LowRank | None], params: TsvParams) -> torch.Tensor:
        alpha = layer_value(params.alpha, key, "tsv.alpha")
        if not is_matrix(deltas[0]):
            return alpha * sum(deltas)
        ranks = task_ranks(layer_value(params.rank, key, "tsv.rank"), deltas, "tsv.rank")
        return alpha * tsv_merge_factors([truncate(f, r) for f, r in zip(factors, ranks)])  # type: ignore[arg-type]
