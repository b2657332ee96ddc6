"""The search driver: run folder contents, failures, Pareto front, resume after Ctrl-C and kill -9, CLI."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from search_fakes import ITEM_IDS, OPTIMUM_X, ToyEvaluator, toy_params, toy_score, toy_space, two_objectives

from evomerge.cli import main
from evomerge.commands import search as search_cmd
from evomerge.distributed.pool import InProcessPool
from evomerge.errors import UserError
from evomerge.search.engines import ENGINES
from evomerge.search.engines.base import candidate_id
from evomerge.search.progress import SearchProgress
from evomerge.search.runner import run_search
from evomerge.search.space import decode, load_space, parse_space, with_overrides

TESTS = Path(__file__).parent


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]


def search(space_dict: dict, run: Path, evaluator: ToyEvaluator, **kw) -> dict:
    space = parse_space(space_dict)
    return run_search(space, InProcessPool(lambda: evaluator), run, item_ids=ITEM_IDS, progress=False, **kw)


def test_run_folder_holds_every_contract_file(tmp_path):
    run = tmp_path / "run"
    tested = []

    def final_eval(recipe):
        tested.append(recipe)
        return {"accuracy/mean": toy_score(recipe) - 0.01}

    ev = ToyEvaluator(raise_above=0.3, nan_below=-3.0)
    summary = search(toy_space("optuna_tpe", evaluations=20), run, ev, final_eval=final_eval)
    space = load_space(run / "space.yaml")
    assert space.model_dump() == parse_space(toy_space("optuna_tpe", evaluations=20)).model_dump()
    assert (run / "optuna_trials.jsonl").exists() and (run / "run.json").exists()
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.db"))

    recs = records(run)
    assert [r["id"] for r in recs] == [candidate_id(i) for i in range(20)]
    failed = [r for r in recs if r["status"] == "failed"]
    assert failed and len(failed) < 20
    for r in recs:
        assert r["recipe"] == decode(space, r["genome"]) and r["wall_s"] >= 0
        if r["status"] == "ok":
            assert r["objectives"] == {"acc": pytest.approx(toy_score(r["recipe"]))} and "error" not in r
        elif r["recipe"]["merge"]["method"] == "ties" and r["recipe"]["merge"]["lam"] > 0.3:
            assert r["error"].startswith("RuntimeError: cannot materialize ties")
        else:
            assert r["recipe"]["x"][1] < -3.0 and "non-finite" in r["error"]

    answered = [r["id"] for r in recs if r["items"]]
    lines = [json.loads(x) for x in (run / "responses.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == answered
    assert json.loads((run / "items" / "digits__classes_0_4__val.json").read_text()) == ITEM_IDS[
        ("digits/classes_0_4", "val")]

    on_disk = json.loads((run / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    ok = [r for r in recs if r["status"] == "ok"]
    best = max(ok, key=lambda r: r["objectives"]["acc"])
    assert summary["best"]["id"] == best["id"] and summary["best"]["recipe"] == best["recipe"]
    assert summary["best"]["full_test_accuracy"] == pytest.approx(best["objectives"]["acc"] - 0.01)
    assert tested == [best["recipe"]]
    assert [p["id"] for p in summary["pareto"]] == [best["id"]]
    assert (summary["evaluations"], summary["failed"]) == (20, len(failed))
    assert summary["item_evaluations"] == 4 * len(answered)
    assert summary["complete"] and summary["wall_s"] > 0


def test_search_finishes_when_every_candidate_fails(tmp_path):
    summary = search(toy_space("deap_ga", evaluations=10), tmp_path / "run", ToyEvaluator(nan_below=10))
    assert summary["best"] is None and summary["pareto"] == [] and summary["failed"] == 10
    assert all(r["status"] == "failed" for r in records(tmp_path / "run"))


def test_constraints_and_missing_metrics_fail_candidates(tmp_path):
    space = toy_space("random", evaluations=12, constraints={"max_added_params": 400})
    search(space, tmp_path / "a", ToyEvaluator())
    for r in records(tmp_path / "a"):
        over = toy_params(r["recipe"]) > 400
        assert (r["status"] == "failed") == over
        if over:
            assert r["error"].startswith("infeasible: added_params") and r["objectives"]["acc"] is not None
    latency = [{"name": "ms", "metric": "latency_ms", "direction": "min"}]
    search(toy_space("random", evaluations=3, objectives=latency), tmp_path / "b", ToyEvaluator())
    assert {r["error"] for r in records(tmp_path / "b")} == {"evaluator reported no metric latency_ms"}


def dominates(a: dict, b: dict) -> bool:
    ge = a["acc"] >= b["acc"] and a["params"] <= b["params"]
    return ge and (a["acc"] > b["acc"] or a["params"] < b["params"])


def test_pareto_front_and_final_evaluation_of_its_members(tmp_path):
    tested = []

    def final_eval(recipe):
        tested.append(recipe)
        if recipe["x"][0] < -1:
            raise RuntimeError("test split unavailable")
        return {"accuracy/mean": 0.5}

    space = toy_space("deap_nsga2", evaluations=32, objectives=two_objectives())
    summary = search(space, tmp_path / "run", ToyEvaluator(), final_eval=final_eval)
    ok = [r for r in records(tmp_path / "run") if r["status"] == "ok"]
    front = summary["pareto"]
    assert len(front) >= 2
    ids = {p["id"] for p in front}
    for r in ok:
        if r["id"] in ids:
            assert not any(dominates(o["objectives"], r["objectives"]) for o in ok)
        else:
            assert any(dominates(p["objectives"], r["objectives"]) or p["objectives"] == r["objectives"]
                       for p in front)
    assert summary["best"]["id"] in ids
    assert len(tested) == len(front)  # each member re-evaluated once (best is one of them)
    for p in front:
        if p["recipe"]["x"][0] < -1:
            assert p["full_test_accuracy"] is None and p["test_error"] == "RuntimeError: test split unavailable"
        else:
            assert p["full_test_accuracy"] == 0.5


class InterruptOnce(ToyEvaluator):
    def evaluate(self, candidate_id, recipe, known=None):
        if candidate_id == "c00005":
            raise KeyboardInterrupt
        return super().evaluate(candidate_id, recipe, known)


def test_identical_objective_vectors_count_once_on_the_front(tmp_path):
    """Candidates an inert gene tells apart only share one place on the front: the first found."""
    from evomerge.search.pareto import pareto_front

    assert pareto_front([[0.5, 3], [0.9, 5], [0.5, 3], [0.9, 5], [0.2, 9]], ["max", "min"]) == [0, 1]

    class Coarse(ToyEvaluator):  # x2 is inert: the figures depend on x0 and the method only
        def evaluate(self, candidate_id, recipe, known=None):
            res = super().evaluate(candidate_id, recipe, known)
            acc = {"average": 0.5, "ties": 0.75, "tsv": 1.0}[recipe["merge"]["method"]] + round(recipe["x"][0]) / 10
            res.objectives |= {"accuracy/mean": acc, "added_params": 100.0 * round(recipe["x"][0])}
            return res

    space = toy_space("random", evaluations=40, objectives=two_objectives())
    summary = search(space, tmp_path / "run", Coarse())
    ok = [r for r in records(tmp_path / "run") if r["status"] == "ok"]
    vectors = [tuple(p["objectives"].values()) for p in summary["pareto"]]
    assert len(vectors) == len(set(vectors)) >= 2
    assert len(ok) > len({tuple(r["objectives"].values()) for r in ok})  # duplicates were found
    for p in summary["pareto"]:
        assert p["id"] == next(r["id"] for r in ok if r["objectives"] == p["objectives"])
    assert main(["report", str(tmp_path / "run")]) == 0
    md = (tmp_path / "run" / "report" / "report.md").read_text()
    assert md.count("| `c") == len(vectors)


@pytest.mark.parametrize("engine", ["deap_ga", "optuna_tpe"])
def test_ctrl_c_then_resume_extends_the_budget(tmp_path, engine):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        search(toy_space(engine, evaluations=12), run, InterruptOnce())
    partial = json.loads((run / "summary.json").read_text())
    assert partial["complete"] is False and partial["evaluations"] == 5
    space = with_overrides(load_space(run / "space.yaml"), **{"budget.evaluations": 16})
    ev = ToyEvaluator()
    run_search(space, InProcessPool(lambda: ev), run, resume=True, item_ids=ITEM_IDS, progress=False)
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(16)]
    assert ev.calls[0] == "c00005"  # the candidate in flight at the interrupt is evaluated again


def discrete_space(engine: str, evaluations: int, **extra) -> dict:
    """The toy space with every gene on a few values: 2^3 x (average, or tsv at rank 8 or 16) = 24 recipes."""
    space = toy_space(engine, evaluations=evaluations, **extra)
    space["genes"] = [{"name": f"x{i}", "type": "categorical", "choices": [0.0, OPTIMUM_X]} for i in range(3)] + [
        {"name": "method", "type": "categorical", "choices": ["average", "tsv"]},
        {"name": "rank", "type": "categorical", "choices": [8, 16], "when": {"method": "tsv"}},
        {"name": "lam", "type": "categorical", "choices": [0.5]}]
    return space


class WidePool(InProcessPool):
    """Evaluates in order but takes four candidates at a time, so equal recipes can be in flight together."""

    capacity = 4


def check_repeats(recs: list[dict], calls: list[str]) -> list[dict]:
    """Each distinct recipe was evaluated once (by its first candidate); every repeat carries that result."""
    first = {}
    for r in recs:
        key = json.dumps(r["recipe"], sort_keys=True)
        if "repeat_of" in r:
            original = first[key]
            assert r["repeat_of"] == original["id"] and r["items"] == 0
            assert (r["status"], r["objectives"]) == (original["status"], original["objectives"])
        else:
            assert key not in first
            first[key] = r
    assert sorted(calls) == sorted(r["id"] for r in first.values())
    return [r for r in recs if "repeat_of" in r]


@pytest.mark.parametrize("engine", ["optuna_tpe", "deap_ga", "random"])
def test_repeated_recipes_are_not_evaluated_again_nor_spend_the_budget(tmp_path, engine):
    run, ev = tmp_path / "run", ToyEvaluator()
    summary = search(discrete_space(engine, evaluations=10, population=6), run, ev)
    recs = records(run)
    repeats = check_repeats(recs, ev.calls)
    assert repeats, "the seed should make the engine propose a repeat"
    assert summary["evaluations"] == len(ev.calls) == 10 and summary["repeats"] == len(repeats)
    assert [r["id"] for r in recs] == [candidate_id(i) for i in range(len(recs))]
    assert all(r["id"] != summary["best"]["id"] for r in repeats)


def test_an_exhausted_space_ends_the_run_after_a_budget_of_repeats(tmp_path):
    run, ev = tmp_path / "run", ToyEvaluator()
    summary = search(discrete_space("random", evaluations=40), run, ev)
    repeats = check_repeats(records(run), ev.calls)
    assert summary["evaluations"] == len(ev.calls) <= 24 and len(repeats) == summary["repeats"] == 40
    assert summary["best"]["objectives"]["acc"] == pytest.approx(1.0)  # the optimum is one of the 24


def test_a_repeat_of_a_candidate_in_flight_waits_for_its_result(tmp_path):
    """One recipe in the whole space, four evaluation slots: the first candidate is evaluated, the
    next ones wait for it instead of filling the other slots, and the run stops at a budget of repeats."""
    run, ev = tmp_path / "run", ToyEvaluator()
    one = discrete_space("random", evaluations=5)
    for g in one["genes"]:
        g["choices"] = g["choices"][-1:]
    summary = run_search(parse_space(one), WidePool(lambda: ev), run, item_ids=ITEM_IDS, progress=False)
    recs = records(run)
    assert ev.calls == ["c00000"] and len(check_repeats(recs, ev.calls)) == 5
    assert [r["repeat_of"] for r in recs[1:]] == ["c00000"] * 5
    assert (summary["evaluations"], summary["repeats"]) == (1, 5)


def test_each_submission_carries_the_front_so_far(tmp_path):
    """The pool is handed, with each candidate, the metrics of the non-dominated finished ones."""

    class Recording(ToyEvaluator):
        seen: list = []

        def evaluate(self, candidate_id, recipe, known=None):
            self.seen.append(known)
            return super().evaluate(candidate_id, recipe, known)

    ev = Recording()
    search(toy_space("random", evaluations=16, objectives=two_objectives()), tmp_path / "run", ev)
    recs = records(tmp_path / "run")
    for i, known in enumerate(ev.seen):
        done = [r for r in recs[:i] if r["status"] == "ok"]
        expected = [r["metrics"] for r in done
                    if not any(dominates(o["objectives"], r["objectives"]) for o in done)]
        assert sorted(map(json.dumps, known)) == sorted(map(json.dumps, expected))
    assert any(len(k) >= 2 for k in ev.seen)



def test_folder_guards(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not empty"):
        search(toy_space(), tmp_path / "busy", ToyEvaluator())
    with pytest.raises(UserError, match="not a run folder"):
        search(toy_space(), tmp_path / "nothing", ToyEvaluator(), resume=True)


def test_time_budget_stops_asking(tmp_path):
    space = toy_space("random", evaluations=100, budget={"evaluations": 100, "time_s": 0.3})
    summary = search(space, tmp_path / "run", ToyEvaluator(sleep_s=0.05))
    assert 2 <= summary["evaluations"] < 20


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from search_fakes import ITEM_IDS, ToyEvaluator, toy_space
from evomerge.distributed.pool import InProcessPool
from evomerge.search.runner import run_search
from evomerge.search.space import parse_space
space = parse_space(toy_space({engine!r}, seed=3, evaluations=30))
evaluator = ToyEvaluator(raise_above=0.6, hang_on="c00012", marker={marker!r})
run_search(space, InProcessPool(lambda: evaluator), {run!r}, item_ids=ITEM_IDS, progress=False)
"""


def same_run(run: Path, ref: Path) -> bool:
    keys = ("id", "genome", "status", "objectives")
    return [{k: r[k] for k in keys} for r in records(run)] == [{k: r[k] for k in keys} for r in records(ref)]


@pytest.mark.parametrize("engine", ["deap_ga", "optuna_tpe"])
def test_resume_after_kill_9_gives_every_candidate_exactly_once(tmp_path, engine):
    run, marker = tmp_path / "run", tmp_path / "hanging"
    script = tmp_path / "search.py"
    script.write_text(KILL_SCRIPT.format(tests=str(TESTS), engine=engine, run=str(run), marker=str(marker)))
    proc = subprocess.Popen([sys.executable, str(script)], env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    deadline = time.monotonic() + 60
    while not marker.exists():  # c00012 is being evaluated
        assert proc.poll() is None and time.monotonic() < deadline, "the search ended before the kill"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r["id"] for r in records(run)]
    assert before == [candidate_id(i) for i in range(12)]

    ev = ToyEvaluator(raise_above=0.6)
    run_search(load_space(run / "space.yaml"), InProcessPool(lambda: ev), run, resume=True, item_ids=ITEM_IDS,
               progress=False)
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(30)]
    assert ev.calls[0] == "c00012", "the candidate in flight at the kill is asked again"
    assert not set(before) & set(ev.calls), "a finished evaluation was repeated"
    assert json.loads((run / "summary.json").read_text())["evaluations"] == 30
    search(toy_space(engine, seed=3, evaluations=30), tmp_path / "ref", ToyEvaluator(raise_above=0.6))
    assert same_run(run, tmp_path / "ref")  # the kill changed nothing


@pytest.mark.parametrize("engine", ["deap_nsga2", "optuna_nsga2"])
def test_logged_result_the_engine_missed_is_replayed_on_resume(tmp_path, monkeypatch, engine):
    """A kill between the log line and the engine's checkpoint: the log is the truth."""
    cls = ENGINES.get(engine)
    original, calls = cls.tell, []

    def tell_then_die(self, cid, values):
        calls.append(cid)
        if len(calls) == 7:
            raise KeyboardInterrupt  # after the line was logged, before the engine learned it
        original(self, cid, values)

    space = toy_space(engine, seed=2, evaluations=20, objectives=two_objectives())
    monkeypatch.setattr(cls, "tell", tell_then_die)
    with pytest.raises(KeyboardInterrupt):
        search(space, tmp_path / "run", ToyEvaluator())
    monkeypatch.setattr(cls, "tell", original)
    assert len(records(tmp_path / "run")) == 7
    ev = ToyEvaluator()
    run_search(load_space(tmp_path / "run" / "space.yaml"), InProcessPool(lambda: ev), tmp_path / "run",
               resume=True, item_ids=ITEM_IDS, progress=False)
    assert candidate_id(6) not in ev.calls
    search(space, tmp_path / "ref", ToyEvaluator())
    assert same_run(tmp_path / "run", tmp_path / "ref")


def test_progress_plain_lines_and_terminal_bar():
    out = io.StringIO()
    with SearchProgress(3, objective="acc", direction="max", console=Console(file=out)) as p:
        p.update("c00000", "ok", 0.5)
        p.update("c00001", "failed", None)
        p.update("c00002", "ok", 0.7)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[1/3] c00000 ok acc=0.5 | acc: best 0.5 median 0.5 | failures 0 | eta ")
    assert lines[2].startswith("[3/3] c00002 ok acc=0.7 | acc: best 0.7 median 0.6 | failures 1 | eta 0m00s")
    term = io.StringIO()
    with SearchProgress(2, objective="params", direction="min",
                        console=Console(file=term, force_terminal=True, width=140)) as p:
        p.update("c00000", "ok", 5.0)
        p.update("c00001", "ok", 3.0)
    assert "2/2" in term.getvalue() and "best 3 median 4" in term.getvalue()


# ---- the command line ---------------------------------------------------------------


@pytest.fixture
def fake_cli(monkeypatch):
    """The search command with the toy evaluator in place of the recipe evaluator."""
    monkeypatch.setattr(search_cmd, "known_models", lambda: {"mlp-a", "cnn-b"})
    monkeypatch.setattr(search_cmd, "recipe_evaluation", lambda space: (
        ToyEvaluator, lambda recipe: {"accuracy/mean": toy_score(recipe)}, ITEM_IDS))


def test_cli_search_resume_and_report(tmp_path, fake_cli, capsys):
    space_file = tmp_path / "toy.yaml"
    data = toy_space("optuna_tpe", objectives=two_objectives())
    data["engine"]["settings"] = {"multivariate": False}  # TPE's own; dropped when --engine changes it
    space_file.write_text(yaml.safe_dump(data))
    run = tmp_path / "run"
    args = ["search", "--space", str(space_file), "--run-dir", str(run), "--budget", "8", "--engine", "deap",
            "--seed", "4", "--no-progress"]
    assert main(args) == 0
    space = load_space(run / "space.yaml")
    assert (space.engine.name, space.seed, space.budget.evaluations) == ("deap_nsga2", 4, 8)
    assert main(["search", "--resume", "--run-dir", str(run), "--budget", "12"]) == 0
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(12)]
    assert main(["search", "--resume", "--run-dir", str(run), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "--seed cannot change" in err
    assert "test split [1/" in err  # the resumed run shows progress, re-evaluation on test included
    assert re.search(r"best c\d{5}: accuracy/mean \d\.\d{4} \(test \d\.\d{4}\), added_params [\d,.]+; \d+ on the "
                     r"Pareto front", err), err
    assert main(["report", str(run)]) == 0
    md = (run / "report" / "report.md").read_text()
    assert "## Pareto front" in md and "## Gene importance" in md
    summary = json.loads((run / "summary.json").read_text())
    assert f"wall time {summary['wall_s']:.1f} s" in md
    assert f"`{summary['best']['id']}`: accuracy/mean " in md and "(test " in md
    assert {p.name for p in (run / "report").iterdir()} >= {"fitness.png", "pareto.png", "report.md"}


def test_figures_and_wide_axes():
    import matplotlib.pyplot as plt

    from evomerge.console import figure
    from evomerge.search.report import _scale_if_wide

    assert [figure(v) for v in (12345.0, 0.78641, 123.44, None)] == ["12,345", "0.7864", "123.4", "-"]
    scales = []
    for values in ([10.0, 2e5, 300.0], [10.0, 900.0], [0.0, 10.0, 1e4]):
        fig, ax = plt.subplots()
        suffix = _scale_if_wide(ax, "x", values)
        scales.append((ax.get_xscale(), suffix))
        plt.close(fig)
    assert scales == [("log", ", log scale"), ("linear", ""), ("symlog", ", log scale")]


def test_cli_bad_space_exits_2_naming_the_field(tmp_path, fake_cli, capsys):
    data = toy_space()
    data["genes"][1]["low"] = 9
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    assert main(["search", "--space", str(path), "--run-dir", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert f"{path}: field 'genes[1].low': expected a value below high (4.0), got 9" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


def test_reading_a_live_run_leaves_its_file_alone(tmp_path):
    """Readers (export, report) skip a half-written last line; only the driver's repair cuts it."""
    from evomerge.search.run_folder import RunFolder

    folder = RunFolder(tmp_path)
    folder.create("name: x\n")
    folder.append({"id": "c0", "status": "ok"})
    with open(folder.evaluations_path, "a") as fh:
        fh.write('{"id": "c1", "sta')
    size = folder.evaluations_path.stat().st_size
    assert [r["id"] for r in folder.read_evaluations()] == ["c0"]
    assert folder.evaluations_path.stat().st_size == size
    assert [r["id"] for r in folder.read_evaluations(repair=True)] == ["c0"]
    assert folder.evaluations_path.stat().st_size < size
