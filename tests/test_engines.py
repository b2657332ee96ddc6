"""Conformance tests every search engine inherits, plus engine-specific checks."""

from __future__ import annotations

import math
import statistics

import pytest
from search_fakes import OPTIMUM_X, toy_params, toy_score, toy_space, two_objectives

from evomerge.search.engines import ENGINES, Candidate, Engine
from evomerge.search.space import CategoricalGene, IntGene, SearchSpace, decode, parse_space


def make(name: str, seed: int = 0, state_dir=None, multi: bool = False, **kw) -> Engine:
    kw.setdefault("objectives", two_objectives() if multi else None)
    space = parse_space(toy_space(name, seed=seed, **kw))
    return ENGINES.get(name)(space, state_dir=state_dir)


def objectives(engine: Engine, cand: Candidate) -> list[float]:
    recipe = decode(engine.space, cand.genome)
    values = [toy_score(recipe), toy_params(recipe)]
    return values[: len(engine.space.objectives)]


def drive(engine: Engine, n: int, fail=lambda i: False) -> list[Candidate]:
    """Ask and tell ``n`` candidates one at a time; ``fail(i)`` tells None instead."""
    out = []
    for i in range(n):
        cand = engine.ask()
        assert cand is not None, "a sequential driver never waits"
        engine.tell(cand.id, None if fail(i) else objectives(engine, cand))
        out.append(cand)
    return out


def hypervolume(points: list[list[float]]) -> float:
    """2-D hypervolume of (accuracy max, params min) points against (-10, 900), worse than any."""
    pts = sorted((p, -a) for a, p in points)  # minimize both
    hv, best = 0.0, 10.0
    for params, neg_acc in pts:
        if neg_acc < best:
            hv += (900 - params) * (best - neg_acc)
            best = neg_acc
    return hv


def check_genome(space: SearchSpace, genome: dict) -> None:
    assert set(genome) == {g.name for g in space.scalar_genes}
    for g in space.scalar_genes:
        v = genome[g.name]
        if g.when:  # rank: method = tsv; cells[i,j]: method = ties or tsv
            allowed = g.when["method"] if isinstance(g.when["method"], list) else [g.when["method"]]
            assert (v is None) == (genome["method"] not in allowed), genome
            if v is None:
                continue
        if isinstance(g, CategoricalGene):
            assert v in g.choices
        elif isinstance(g, IntGene):
            assert type(v) is int and g.low <= v <= g.high and (v - g.low) % g.step == 0
        else:
            assert type(v) is float and g.low <= v <= g.high


def check_array_recipe(genome: dict, recipe: dict) -> None:
    """The array genes of ``toy_space(array=True)`` decode to nested lists of their shapes, in bounds."""
    assert len(recipe["x"]) == 3 and all(type(v) is float and -4 <= v <= 4 for v in recipe["x"])
    assert recipe["x"] == [genome[f"x[{i}]"] for i in range(3)]
    if recipe["merge"]["method"] == "average":
        assert recipe["cells"] is None
    else:
        assert [len(row) for row in recipe["cells"]] == [2, 2]
        assert all(type(v) is int and 1 <= v <= 5 for row in recipe["cells"] for v in row)
        assert recipe["cells"][1][0] == genome["cells[1,0]"]
    assert len(recipe["pick"]) == 2 and set(recipe["pick"]) <= {"a", "b"}


class EngineConformance:
    """What every engine must do. Subclasses set ``name`` (and ``multi``, ``beats_random``)."""

    name: str
    multi = False
    beats_random = True

    def test_same_seed_same_genomes(self):
        runs = [[c.genome for c in drive(make(self.name, seed=s, multi=self.multi), 20)] for s in (5, 5, 6)]
        assert runs[0] == runs[1]
        assert runs[0] != runs[2]

    def test_ids_unique_and_genomes_in_bounds_with_conditional_activity(self):
        engine = make(self.name, multi=self.multi)
        cands = drive(engine, 40)
        assert len({c.id for c in cands}) == 40
        for c in cands:
            check_genome(engine.space, c.genome)
        assert {c.genome["method"] for c in cands} == {"average", "ties", "tsv"}

    def test_array_genes_are_element_genes_decoded_to_their_shapes(self):
        engine = make(self.name, multi=self.multi, array=True)
        assert [g.name for g in engine.space.genes] == ["x", "method", "rank", "lam", "cells", "pick"]
        assert len(engine.space.scalar_genes) == 3 + 3 + 4 + 2
        cands = drive(engine, 40)
        for c in cands:
            check_genome(engine.space, c.genome)
            check_array_recipe(c.genome, decode(engine.space, c.genome))
        assert {c.genome["method"] for c in cands} == {"average", "ties", "tsv"}
        assert len({c.genome["x[1]"] for c in cands}) > 1 and len({c.genome["cells[0,1]"] for c in cands}) > 1

    def test_the_first_candidates_are_the_spaces_initial_genomes(self, tmp_path):
        """A warm start: each ``engine.initial`` entry is asked first, with the genes it leaves out
        drawn and those it makes inactive masked; array genes take one value or a nested list; a
        resumed engine asks what an uninterrupted one would."""
        initial = [{"x": OPTIMUM_X, "method": "tsv", "rank": 16, "lam": 0.5, "cells": [[1, 2], [3, 4]]},
                   {"method": "average", "rank": 8, "pick": ["b", "a"]}]
        space = toy_space(self.name, array=True, population=4, objectives=two_objectives() if self.multi else None)
        space["engine"]["initial"] = initial
        engine = ENGINES.get(self.name)(parse_space(space), state_dir=tmp_path)
        first, second = engine.ask(), engine.ask()
        for c in (first, second):
            check_genome(engine.space, c.genome)
        recipe = decode(engine.space, first.genome)
        assert recipe["x"] == pytest.approx([OPTIMUM_X] * 3) and recipe["cells"] == [[1, 2], [3, 4]]
        assert recipe["merge"] == {"method": "tsv", "rank": 16, "lam": pytest.approx(0.5)}
        assert second.genome["method"] == "average" and second.genome["rank"] is None
        assert decode(engine.space, second.genome)["pick"] == ["b", "a"]
        engine.tell(first.id, objectives(engine, first))
        engine.checkpoint()
        again = ENGINES.get(self.name)(engine.space, state_dir=tmp_path)
        assert [c.genome for c in again.pending()] == [second.genome]

    def test_failed_candidates_never_crash(self):
        engine = make(self.name, multi=self.multi)
        drive(engine, 12, fail=lambda i: True)  # a whole generation of failures
        drive(engine, 24, fail=lambda i: i % 2 == 0)
        assert len(engine.told()) == 36 and not engine.pending()

    def test_asks_ahead_of_tells(self):
        engine = make(self.name, multi=self.multi)
        first = [engine.ask() for _ in range(4)]
        assert {c.id for c in engine.pending()} == {c.id for c in first}
        for c in reversed(first):
            engine.tell(c.id, objectives(engine, c))
        assert engine.told() == {c.id for c in first}
        drive(engine, 10)

    @pytest.mark.parametrize("array", [False, True])
    def test_checkpoint_resume_continues_the_same_stream(self, tmp_path, array):
        whole = make(self.name, state_dir=_mkdir(tmp_path / "a"), multi=self.multi, array=array)
        expected = drive(whole, 12)
        expected += [whole.ask() for _ in range(2)]
        for c in expected[-2:]:
            whole.tell(c.id, objectives(whole, c))
        expected += drive(whole, 6)

        part = make(self.name, state_dir=_mkdir(tmp_path / "b"), multi=self.multi, array=array)
        got = drive(part, 12) + [part.ask() for _ in range(2)]
        part.checkpoint()
        del part
        resumed = make(self.name, state_dir=tmp_path / "b", multi=self.multi, array=array)
        assert resumed.pending() == got[-2:]
        assert resumed.told() == {c.id for c in got[:12]}
        for c in got[-2:]:
            resumed.tell(c.id, objectives(resumed, c))
        got += drive(resumed, 6)
        assert got == expected

    def test_beats_random_on_the_toy_objective(self):
        if not self.beats_random:
            pytest.skip("the baseline itself")
        seeds = range(4)
        if self.multi:  # NSGA-II needs generations: 20 of 8
            def quality(name, seed):
                e = make(name, seed=seed, multi=True)
                return hypervolume([objectives(e, c) for c in drive(e, 160)])
        else:
            def quality(name, seed):
                e = make(name, seed=seed)
                return max(objectives(e, c)[0] for c in drive(e, 64))
        mine = statistics.mean(quality(self.name, s) for s in seeds)
        baseline = statistics.mean(quality("random", s) for s in seeds)
        assert mine > baseline, (mine, baseline)


def _mkdir(path):
    path.mkdir()
    return path


class TestDeapGA(EngineConformance):
    name = "deap_ga"

    def test_elite_survives_failures(self):
        engine = make(self.name, population=8)
        gen = drive(engine, 8, fail=lambda i: i != 3)
        best = gen[3].genome
        nxt = [engine.ask() for _ in range(7)]  # the elite is carried over, not re-asked
        assert engine.ask() is None, "the batch is exhausted until it is told"
        assert best not in [c.genome for c in nxt]
        assert engine.population[0].fitness.values == tuple(objectives(engine, gen[3]))


class TestDeapNSGA2(EngineConformance):
    name = "deap_nsga2"
    multi = True


class TestOptunaTPE(EngineConformance):
    name = "optuna_tpe"


class TestOptunaCmaEs(EngineConformance):
    name = "optuna_cmaes"

    @pytest.mark.parametrize("array", [False, True])
    def test_checkpoint_resume_continues_the_same_stream(self, tmp_path, array):
        """Optuna keeps the CMA-ES optimizer as a pickle, never journaled: a resumed run restarts the
        distribution, so only the genes drawn by the seeded independent sampler continue the stream."""
        whole = make(self.name, state_dir=_mkdir(tmp_path / "a"), array=array)
        expected = drive(whole, 20)
        part = make(self.name, state_dir=_mkdir(tmp_path / "b"), array=array)
        got = drive(part, 12)
        resumed = make(self.name, state_dir=tmp_path / "b", array=array)
        assert resumed.told() == {c.id for c in got} and not resumed.pending()
        got += drive(resumed, 8)
        assert [c.id for c in got] == [c.id for c in expected]
        assert got[:12] == expected[:12]
        assert [c.genome["method"] for c in got] == [c.genome["method"] for c in expected]
        for c in got:
            check_genome(resumed.space, c.genome)


class TestOptunaNSGA2(EngineConformance):
    name = "optuna_nsga2"
    multi = True


class TestRandom(EngineConformance):
    name = "random"
    beats_random = False


def test_every_registered_engine_has_a_conformance_class():
    tested = {c.name for c in EngineConformance.__subclasses__()}
    assert tested == set(ENGINES.names())


def test_engines_converge_near_the_known_optimum():
    engine = make("optuna_tpe", seed=1)
    best = max(drive(engine, 80), key=lambda c: objectives(engine, c)[0])
    assert best.genome["method"] == "tsv"
    assert all(math.isclose(best.genome[f"x{i}"], OPTIMUM_X, abs_tol=1.0) for i in range(3))


def test_minimized_objective_is_direction_aware():
    objs = [{"name": "params", "metric": "added_params", "direction": "min"}]
    engine = make("deap_ga", objectives=objs, population=8)
    values = [toy_params(decode(engine.space, c.genome)) for c in drive_params(engine, 64)]
    assert statistics.mean(values[-8:]) < statistics.mean(values[:8])


def drive_params(engine: Engine, n: int) -> list[Candidate]:
    out = []
    for _ in range(n):
        c = engine.ask()
        engine.tell(c.id, [toy_params(decode(engine.space, c.genome))])
        out.append(c)
    return out
