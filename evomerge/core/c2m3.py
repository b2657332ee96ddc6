"""C2M3: cycle-consistent multi-model merging (Crisostomi et al., NeurIPS 2024).

Each model ``i`` gets one permutation ``P_i[g]`` per unit group ``g`` into a shared universe
space; the map from model ``j`` to model ``i`` is ``P_i^T P_j``, so the maps around any cycle
compose to the identity by construction. The permutations maximize the pairwise agreement in
the universe, ``f = sum_{i<j} sum_k <P(W_i)[k], P(W_j)[k]>``, relaxed to doubly-stochastic
matrices and solved by Frank–Wolfe: the gradient for ``P_i[g]`` is the weight-matching cost of
model ``i`` (other groups mapped) against the sum of the other models in the universe; the linear
minimization oracle over the Birkhoff polytope is a linear assignment (its vertices are
permutations); the step is ``2 / (k + 2)``. The relaxed solution is projected onto permutations
with the same assignment solver, then the models are averaged in the universe.
Iterations start from the identity, i.e. from the models' own unit order.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import torch

from evomerge.core.merge import merge
from evomerge.core.merge.task_vectors import StateDict
from evomerge.core.permutation import (
    PermutationSpec,
    Perms,
    apply_permutation,
    compose,
    invert,
    matching_cost,
    solve_assignment,
    weight_matching,
)
from evomerge.errors import UserError


@dataclass(frozen=True)
class C2M3Result:
    """Universe permutations per model, the merged state, and the Frank–Wolfe trace."""

    perms: list[Perms]
    merged: StateDict
    iterations: int
    gap: float


def _one_hot(p: torch.Tensor) -> torch.Tensor:
    return torch.eye(len(p), dtype=torch.float64)[p]


def frank_wolfe_perms(spec: PermutationSpec, models: list[StateDict], max_iter: int = 200, tol: float = 1e-6) -> tuple[list[Perms], int, float]:
    """Relaxed universe matrices by Frank–Wolfe, projected to permutations.

    Returns the permutations, the iterations run and the final duality gap relative to ``|f|``.
    """
    ws = [{k: sd[k].double() for k in spec.axes if k not in spec.buffers} for sd in models]
    X = [{g: torch.eye(n, dtype=torch.float64) for g, n in spec.sizes.items()} for _ in ws]
    gap, it = float("inf"), 0
    for it in range(1, max_iter + 1):
        mapped = [apply_permutation(spec, x, w) for x, w in zip(X, ws)]
        total = {k: sum(m[k] for m in mapped) for k in ws[0]}
        f = 0.5 * sum((total[k] ** 2).sum() - sum((m[k] ** 2).sum() for m in mapped) for k in total)
        gap, steps = 0.0, []
        for x, w, m in zip(X, ws, mapped):
            others = {k: total[k] - m[k] for k in total}
            step = {}
            for g in spec.sizes:
                grad = matching_cost(spec, g, others, apply_permutation(spec, x, w, skip=g))
                s = _one_hot(solve_assignment(grad))
                gap += float((grad * (s - x[g])).sum())
                step[g] = s
            steps.append(step)
        if gap <= tol * max(1.0, abs(float(f))):
            break
        gamma = 2.0 / (it + 2.0)
        X = [{g: x[g] + gamma * (s[g] - x[g]) for g in x} for x, s in zip(X, steps)]
    perms = [{g: solve_assignment(x[g]) for g in x} for x in X]
    return perms, it, gap / max(1.0, abs(float(f)))


def c2m3(spec: PermutationSpec, models: list[StateDict], max_iter: int = 200, tol: float = 1e-6) -> C2M3Result:
    """Align ``models`` to a universe space with C2M3 and average them there."""
    if len(models) < 2:
        raise UserError(f"C2M3 merges at least 2 models (cycles need 3), got {len(models)}")
    perms, it, gap = frank_wolfe_perms(spec, models, max_iter, tol)
    aligned = [apply_permutation(spec, p, sd) for p, sd in zip(perms, models)]
    return C2M3Result(perms, merge("average", aligned[0], aligned), it, gap)


def universe_maps(perms: list[Perms]) -> dict[tuple[int, int], Perms]:
    """Pairwise maps from universe permutations: ``maps[i, j]`` brings model ``j`` into model ``i``'s basis."""
    n = len(perms)
    return {(i, j): compose(perms[j], invert(perms[i])) for i in range(n) for j in range(n) if i != j}


def pairwise_maps(spec: PermutationSpec, models: list[StateDict], seed: int = 0, restarts: int = 1) -> dict[tuple[int, int], Perms]:
    """Independent weight matching of every pair ``j -> i`` (``i < j``; the reverse map is the inverse)."""
    maps = {}
    for i, j in combinations(range(len(models)), 2):
        maps[i, j] = weight_matching(spec, models[i], models[j], seed=seed, restarts=restarts)
        maps[j, i] = invert(maps[i, j])
    return maps


def cycle_error(maps: dict[tuple[int, int], Perms], n: int) -> float:
    """Share of units not returned to themselves around the 3-cycles ``i -> k -> j -> i``.

    Averaged over all triples and unit groups; 0 for cycle-consistent maps."""
    if n < 3:
        raise UserError(f"cycle error needs at least 3 models, got {n}")
    errs = []
    for i, j, k in combinations(range(n), 3):
        loop = compose(compose(maps[k, i], maps[j, k]), maps[i, j])
        errs += [(p != torch.arange(len(p))).double().mean().item() for p in loop.values()]
    return sum(errs) / len(errs)
