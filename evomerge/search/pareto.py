"""Best and non-dominated candidates of a run, direction-aware (DEAP's non-dominated sort)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deap import base, tools


class _Point:
    def __init__(self, fitness: base.Fitness, index: int):
        self.fitness, self.index = fitness, index


def fitness_class(directions: Sequence[str]) -> type[base.Fitness]:
    """A DEAP fitness class weighting each objective +1 (max) or −1 (min)."""
    return type("Fitness", (base.Fitness,), {"weights": tuple(1.0 if d == "max" else -1.0 for d in directions)})


def pareto_front(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[int]:
    """Indices (ascending) of the points no other point dominates, each distinct objective vector
    once: points with identical values are represented by the earliest."""
    first: dict[tuple[float, ...], int] = {}
    for i, v in enumerate(values):
        first.setdefault(tuple(v), i)
    if not first:
        return []
    fitness = fitness_class(directions)
    points = [_Point(fitness(v), i) for v, i in first.items()]
    front = tools.sortNondominated(points, len(points), first_front_only=True)[0]
    return sorted(p.index for p in front)


def dominates(u: Sequence[float], v: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether ``u`` is at least as good as ``v`` on every objective and better on one."""
    signed = [(a, b) if d == "max" else (-a, -b) for a, b, d in zip(u, v, directions)]
    return all(a >= b for a, b in signed) and any(a > b for a, b in signed)


def add_to_front(front: list[tuple[Sequence[float], Any]], point: Sequence[float], item: Any,
                 directions: Sequence[str]) -> list[tuple[Sequence[float], Any]]:
    """The non-dominated set after ``point`` (carrying ``item``) arrives: O(front) per point."""
    if any(dominates(v, point, directions) for v, _ in front):
        return front
    return [(v, i) for v, i in front if not dominates(point, v, directions)] + [(point, item)]


def best_index(values: Sequence[Sequence[float]], directions: Sequence[str]) -> int | None:
    """Index of the best point by the first objective (earliest on ties); None if empty."""
    if not values:
        return None
    sign = 1.0 if directions[0] == "max" else -1.0
    return max(range(len(values)), key=lambda i: (sign * values[i][0], -i))
