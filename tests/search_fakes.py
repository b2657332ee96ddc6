"""Toy search spaces and fake evaluators for the search-side tests (no tensors).

The toy objective has a known optimum: x = (1.25, 1.25, 1.25), method = tsv, rank = 16
(rank is active only when method = tsv), giving 1.0. With ``array=True`` x is one array gene of
shape [3], and two inert array genes join: ``cells`` (int, [2, 2], active unless method = average)
and ``pick`` (categorical, [2]).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from evomerge.fitness.results import EvalResult, TaskResponses

OPTIMUM_X = 1.25


def toy_space(engine: str = "optuna_tpe", *, seed: int = 0, population: int = 8, evaluations: int = 30,
              objectives: list[dict] | None = None, array: bool = False, **extra: Any) -> dict[str, Any]:
    """A space mapping with float, log-float, categorical and conditional log-int genes (and array genes)."""
    space = {
        "name": "toy",
        "seed": seed,
        "models": ["mlp-a", "cnn-b"],
        "tasks": [{"name": "left", "dataset": "digits", "condition": "classes_0_4"},
                  {"name": "right", "dataset": "digits", "condition": "classes_5_9", "weight": 2.0}],
        "recipe": {
            "kind": "toy",
            "x": [{"gene": "x0"}, {"gene": "x1"}, {"gene": "x2"}],
            "merge": {"method": {"gene": "method"}, "rank": {"gene": "rank"}, "lam": {"gene": "lam"}},
        },
        "genes": [
            {"name": "x0", "type": "float", "low": -4, "high": 4},
            {"name": "x1", "type": "float", "low": -4, "high": 4},
            {"name": "x2", "type": "float", "low": -4, "high": 4},
            {"name": "method", "type": "categorical", "choices": ["average", "ties", "tsv"]},
            {"name": "rank", "type": "int", "low": 1, "high": 64, "log": True, "when": {"method": "tsv"}},
            {"name": "lam", "type": "float", "low": 0.01, "high": 1.0, "log": True},
        ],
        "objectives": objectives or [{"name": "acc", "metric": "accuracy", "direction": "max"}],
        "engine": {"name": engine, "population": population},
        "budget": {"evaluations": evaluations},
    }
    if array:
        space["recipe"].update(x={"gene": "x"}, cells={"gene": "cells"}, pick={"gene": "pick"})
        space["genes"][:3] = [{"name": "x", "type": "float", "low": -4, "high": 4, "shape": [3]}]
        space["genes"] += [
            {"name": "cells", "type": "int", "low": 1, "high": 5, "shape": [2, 2], "when": {"method": ["ties", "tsv"]}},
            {"name": "pick", "type": "categorical", "choices": ["a", "b"], "shape": [2]},
        ]
    space.update(copy.deepcopy(extra))
    return space


def two_objectives() -> list[dict]:
    return [{"name": "acc", "metric": "accuracy", "direction": "max"},
            {"name": "params", "metric": "added_params", "direction": "min"}]


def toy_score(recipe: dict) -> float:
    """1.0 at the optimum, lower elsewhere."""
    m = recipe["merge"]
    score = 1.0 - sum((x - OPTIMUM_X) ** 2 for x in recipe["x"]) / 10
    score -= {"average": 0.5, "ties": 0.25, "tsv": 0.0}[m["method"]]
    if m["method"] == "tsv":
        score -= abs(m["rank"] - 16) / 64
    return score


def toy_params(recipe: dict) -> float:
    """Added parameters, in conflict with accuracy: large x0 costs parameters."""
    return 100.0 * (recipe["x"][0] + 4.0)


class ToyEvaluator:
    """Scores the toy recipe; raises on ``method: ties`` with ``lam > raise_above``; returns NaN
    accuracy when ``x1 < nan_below``; answers 4 fake items per task. On candidate ``hang_on`` it
    writes ``marker`` and hangs (a process to kill mid-evaluation)."""

    def __init__(self, raise_above: float = 2.0, nan_below: float = -10.0, sleep_s: float = 0.0,
                 hang_on: str | None = None, marker: str | None = None):
        self.raise_above, self.nan_below, self.sleep_s = raise_above, nan_below, sleep_s
        self.hang_on, self.marker = hang_on, marker
        self.calls: list[str] = []

    def evaluate(self, candidate_id: str, recipe: dict, known: list | None = None) -> EvalResult:
        self.calls.append(candidate_id)
        if candidate_id == self.hang_on:
            Path(self.marker).write_text(candidate_id)
            time.sleep(120)
        time.sleep(self.sleep_s)
        m = recipe["merge"]
        if m["method"] == "ties" and m["lam"] > self.raise_above:
            raise RuntimeError(f"cannot materialize ties with lam={m['lam']:.3f}")
        acc = float("nan") if recipe["x"][1] < self.nan_below else toy_score(recipe)
        responses = [TaskResponses("digits/classes_0_4", "val", [0, 1, 2, 3], [True, False, acc > 0, True])]
        return EvalResult(candidate_id, "ok", {"accuracy/mean": acc, "accuracy/left": acc,
                                               "accuracy/right": acc, "added_params": toy_params(recipe)},
                          responses)


ITEM_IDS = {("digits/classes_0_4", "val"): [f"digits/classes_0_4/val/{i}/h" for i in range(4)]}
