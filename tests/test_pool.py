"""The in-process evaluation pool: results as they finish, failures as data, one evaluator."""

from __future__ import annotations

import math
import time

import torch

from evomerge.distributed.pool import InProcessPool
from evomerge.fitness.results import EvalResult


class Scripted:
    """Evaluator whose behaviour the recipe dictates."""

    built = 0

    def __init__(self):
        Scripted.built += 1

    def evaluate(self, candidate_id: str, recipe: dict, known: list | None = None) -> EvalResult:
        if recipe.get("raise"):
            raise ValueError(f"bad layer {recipe['raise']}")
        if recipe.get("sleep"):
            time.sleep(recipe["sleep"])
        return EvalResult(candidate_id, "ok", {"accuracy/mean": recipe.get("acc", 0.5)})


def test_results_in_submission_order_with_one_evaluator():
    Scripted.built = 0
    torch.set_num_threads(2)
    with InProcessPool(Scripted) as pool:
        assert pool.capacity == 1 and torch.get_num_threads() == 1  # one torch thread per worker
        for i in range(3):
            pool.submit(f"c{i}", {"acc": i / 10})
        assert pool.pending() == 3
        got = [(r.id, r.status, r.objectives["accuracy/mean"]) for r in pool.results()]
        assert got == [("c0", "ok", 0.0), ("c1", "ok", 0.1), ("c2", "ok", 0.2)]
        assert pool.pending() == 0
        pool.submit("c3", {})
        assert [r.id for r in pool.results()] == ["c3"]
    assert Scripted.built == 1


def test_work_submitted_while_iterating_is_yielded():
    pool = InProcessPool(Scripted)
    pool.submit("a", {})
    seen = []
    for r in pool.results():
        seen.append(r.id)
        if r.id == "a":
            pool.submit("b", {})
    assert seen == ["a", "b"]


def test_exceptions_and_non_finite_objectives_become_failures():
    pool = InProcessPool(Scripted)
    pool.submit("boom", {"raise": "l3"})
    pool.submit("nan", {"acc": math.nan})
    pool.submit("inf", {"acc": -math.inf})
    pool.submit("fine", {"acc": 0.9})
    results = {r.id: r for r in pool.results()}
    assert results["boom"].status == "failed" and results["boom"].error == "ValueError: bad layer l3"
    assert results["boom"].wall_s >= 0
    assert results["nan"].status == "failed" and "non-finite" in results["nan"].error
    assert results["inf"].status == "failed"
    assert results["fine"].status == "ok" and results["fine"].error is None
    assert results["fine"].wall_s > 0  # measured by the pool when the evaluator leaves it unset


def test_timeout_fails_the_candidate_and_the_pool_goes_on():
    pool = InProcessPool(Scripted, timeout_s=0.1)
    pool.submit("slow", {"sleep": 2.0})
    pool.submit("quick", {})
    start = time.perf_counter()
    results = list(pool.results())
    assert time.perf_counter() - start < 1.5
    assert results[0].status == "failed" and "timeout_s=0.1" in results[0].error
    assert results[1].status == "ok"
