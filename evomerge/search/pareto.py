"""Best and non-dominated candidates of a run, direction-aware (DEAP's non-dominated sort)."""

from __future__ import annotations

from collections.abc import Sequence

from deap import base, tools


class _Point:
    def __init__(self, fitness: base.Fitness, index: int):
        self.fitness, self.index = fitness, index


def pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points no other point dominates."""
    if not values:
        return []
    fitness = type("Fitness", (base.Fitness,), {"weights": tuple(1.0 if d == "max" else -1.0 for d in directions)})
    points = [_Point(fitness(tuple(v)), i) for i, v in enumerate(values)]
    front = tools.sortNondominated(points, len(points), first_front_only=True)[0]
    return sorted(p.index for p in front)


def best_index(values: Sequence[Sequence[float]], directions: Sequence[str]) -> int | None:
    """Index of the best point by the first objective (earliest on ties); None if empty."""
    if not values:
        return None
    sign = 1.0 if directions[0] == "max" else -1.0
    return max(range(len(values)), key=lambda i: (sign * values[i][0], -i))
