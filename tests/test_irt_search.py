"""IRT fitness in the search: fewer items than full, items and stderr logged, exact verified best,
online refits, and bank mistakes exiting 2 through ``evomerge search``."""

import json
import shutil

import numpy as np
import pytest
import yaml

from evomerge.cli import main
from evomerge.commands import search as search_cmd
from evomerge.distributed.pool import InProcessPool
from evomerge.errors import ConfigError
from evomerge.fitness.zoo_evaluator import RecipeEvaluator
from evomerge.search.runner import run_search
from evomerge.fitness.search_fitness import BankFitness
from evomerge.search.space import FitnessSettings, parse_space

BUDGET = 24


def tiny_space(fitness=None, condition="all"):
    """Stitch the digits MLP (classes 0-4) and CNN (classes 5-9) of the tiny zoo; random engine."""
    return {
        "name": "tiny_irt", "seed": 3, "models": ["mlp-digits-lo", "cnn-digits-hi"],
        "tasks": [{"name": "all", "dataset": "digits", "condition": condition}],
        "recipe": {
            "kind": "stitch", "trunk": "mlp-digits-lo", "trunk_weight": {"gene": "w"}, "routing": {"gene": "routing"},
            "branches": [{"model": "cnn-digits-hi", "source_layer": {"gene": "src"}, "target_layer": {"gene": "dst"},
                          "aligner": {"name": {"gene": "aligner"}}, "fit": {"task": "digits/all", "items": 300}}],
        },
        "genes": [
            {"name": "src", "type": "categorical", "choices": ["fc1", "fc2", "fc3"]},
            {"name": "dst", "type": "categorical", "choices": ["conv3", "fc"]},
            {"name": "aligner", "type": "categorical", "choices": ["ridge", "procrustes"]},
            {"name": "w", "type": "float", "low": 0.0, "high": 1.5},
            {"name": "routing", "type": "categorical", "choices": ["mixture", "confidence"]},
        ],
        "objectives": [{"name": "accuracy", "metric": "accuracy", "direction": "max"}],
        "engine": {"name": "random"}, "budget": {"evaluations": BUDGET},
        "fitness": fitness or {"estimator": "full"},
    }


def search(space_data, run_dir, monkeypatch, tiny_zoo):
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)
    space = parse_space(space_data)
    ev = RecipeEvaluator(space)
    _, final_eval, item_ids = search_cmd.recipe_evaluation(space)
    summary = run_search(space, InProcessPool(lambda: ev), run_dir, final_eval=final_eval, item_ids=item_ids,
                         progress=False)
    return summary, ev


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "evaluations.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_zoo):
    """A full-fitness search and a bank calibrated on it with ``evomerge calibrate``."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("irt_search")
    summary, _ = search(tiny_space(), root / "full", mp, tiny_zoo)
    mp.undo()
    bank = root / "bank.json"
    assert main(["calibrate", str(root / "full"), "--task", "digits/all", "--out", str(bank)]) == 0
    return root, summary, bank


def irt_fitness(bank, **over):
    return {"estimator": "pirt", "bank": str(bank), "items": 20, "anchors": "stratified", "adaptive": True,
            "batch": 10, "max_items": 60, **over}


def test_irt_search_spends_few_items_logs_them_and_verifies_its_best(full_run, tmp_path, monkeypatch, tiny_zoo):
    root, full_summary, bank = full_run
    summary, ev = search(tiny_space(irt_fitness(bank)), tmp_path / "irt", monkeypatch, tiny_zoo)
    n_items = len(ev.tasks["all"])
    assert full_summary["item_evaluations"] == BUDGET * n_items
    assert summary["item_evaluations"] < 0.5 * full_summary["item_evaluations"]

    full = {r["id"]: r["metrics"]["accuracy/all"] for r in records(root / "full")}  # same seed: same candidates
    full_answers = {line["id"]: line["correct"] for line in map(json.loads, (root / "full" / "responses.jsonl").open())}
    lines = [json.loads(line) for line in (tmp_path / "irt" / "responses.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [r["id"] for r in records(tmp_path / "irt")]
    for rec, line in zip(records(tmp_path / "irt"), lines):
        m, (task, mean) = rec["metrics"], rec["estimates"]
        assert rec["items"] == task["items"] == len(line["items"]) == len(set(line["items"]))
        assert task["stderr"] >= 0 and mean["stderr"] == task["stderr"] and task["value"] == m["accuracy/all"]
        assert bool(m["verified/all"]) == task["verified"]
        if task["verified"]:  # every item answered: the exact full accuracy, no error bar
            assert rec["items"] == n_items and task["stderr"] == 0
            assert m["accuracy/all"] == pytest.approx(full[rec["id"]], abs=1e-6)
        else:  # anchors and adaptive items (<= 60), or more if it was a stopped verification
            assert 20 <= rec["items"] < n_items and task["stderr"] > 0
        answers = full_answers[rec["id"]]  # the items it ran through the model answered as in the full run
        assert [answers[i] for i in line["items"]] == list(line["correct"])
    best = summary["best"]
    assert best["objectives"]["accuracy"] == pytest.approx(full[best["id"]], abs=1e-6)  # the best is exact
    assert best["full_test_accuracy"] is not None


def test_online_recalibration_refits_on_sources_and_run(full_run, tmp_path, monkeypatch, tiny_zoo):
    _, _, bank = full_run
    _, ev = search(tiny_space(irt_fitness(bank, anchors="fisher", recalibrate_every=8)), tmp_path / "irt",
                   monkeypatch, tiny_zoo)
    fit = ev.fitness["all"]
    assert fit.refits == BUDGET // 8
    assert not np.allclose(fit.params.b, fit.bank.params.b)  # the run's answers moved the items


@pytest.mark.parametrize("backend", ["mirt", "jml"])
def test_multidimensional_bank_in_the_search(full_run, tmp_path, monkeypatch, tiny_zoo, backend):
    """A multidimensional bank (format 2) drives greg on neyman anchors and is refitted in its own D."""
    root, full_summary, _ = full_run
    bank = tmp_path / "mirt.json"
    assert main(["calibrate", str(root / "full"), "--task", "digits/all", "--out", str(bank), "--backend", backend]) == 0
    fitness = irt_fitness(bank, estimator="greg", anchors="neyman", adaptive=False, recalibrate_every=12)
    summary, ev = search(tiny_space(fitness), tmp_path / "irt", monkeypatch, tiny_zoo)
    fit = ev.fitness["all"]
    assert fit.bank.model == "mirt" and fit.refits == 2 and fit.params.dim == fit.bank.dim >= 2
    assert summary["item_evaluations"] < full_summary["item_evaluations"]
    for rec in records(tmp_path / "irt"):
        task = rec["estimates"][0]
        assert task["verified"] or (rec["items"] >= 20 and 0 < task["stderr"] < 0.5)


def test_front_threshold_spends_items_where_the_front_is_in_doubt(full_run, tmp_path, monkeypatch, tiny_zoo):
    """With two objectives and ``threshold: front`` each adaptive candidate stops only once its interval
    clears the accuracy it needs to join the front at its added parameters (or at the cap)."""
    _, _, bank = full_run
    space = tiny_space(irt_fitness(bank, threshold="front"))
    space["objectives"].append({"name": "size", "metric": "added_params", "direction": "min"})
    _, ev = search(space, tmp_path / "irt", monkeypatch, tiny_zoo)
    recs = records(tmp_path / "irt")
    assert len(ev.fitness["all"].evaluated) == len(recs) == BUDGET
    incumbent, history, checked = None, [], 0
    for rec in recs:
        m = rec["metrics"]
        value, se, cost = m["accuracy/all"], rec["estimates"][0]["stderr"], m["added_params"]
        if incumbent is not None and not m["verified/all"] and rec["items"] < 60:
            thr = max((acc for c, acc in history if c <= cost), default=-np.inf)
            assert abs(value - thr) > 1.96 * se or value + 1.96 * se < incumbent
            checked += 1
        history.append((cost, value))
        if m["verified/all"]:
            incumbent = value if incumbent is None else max(incumbent, value)
    assert checked > 0


def test_recalibration_needs_unchanged_source_runs(full_run, tmp_path, monkeypatch, tiny_zoo):
    root, _, bank = full_run
    copy = tmp_path / "bank.json"
    data = json.loads(bank.read_text())
    data["sources"][0]["responses_sha256"] = "0" * 64
    copy.write_text(json.dumps(data))
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)
    with pytest.raises(ConfigError, match="source runs unchanged since calibration"):
        RecipeEvaluator(parse_space(tiny_space(irt_fitness(copy, recalibrate_every=8))))
    RecipeEvaluator(parse_space(tiny_space(irt_fitness(copy))))  # without refits the sources are not needed


def test_adaptive_needs_an_adaptive_estimator(full_run, monkeypatch, tiny_zoo):
    _, _, bank = full_run
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)
    with pytest.raises(ConfigError, match="fitness.adaptive"):
        RecipeEvaluator(parse_space(tiny_space(irt_fitness(bank, estimator="mean"))))


@pytest.mark.parametrize("problem, condition, expected", [
    ("other task", "classes_0_4", "field 'items': expected the task's"),
    ("corrupt", "all", "expected valid JSON"),
    ("missing", "all", "no such file"),
])
def test_bad_bank_exits_2_through_search(full_run, tmp_path, capsys, problem, condition, expected):
    _, _, bank = full_run
    path = tmp_path / "bank.json"
    if problem == "corrupt":
        path.write_text(bank.read_text()[:-40])
    elif problem == "other task":
        shutil.copy(bank, path)
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(tiny_space(irt_fitness(path), condition=condition)))
    assert main(["search", "--space", str(space), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and expected in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_workers_share_the_drivers_incumbent_and_front(full_run):
    """A worker told of a verified 0.99 does not answer every item for its own first candidate; the
    driver's front points count in its front threshold."""
    _, _, bank = full_run
    ids = [item["id"] for item in json.loads(bank.read_text())["items"]]
    settings = FitnessSettings(**irt_fitness(bank, threshold="front"))
    answers = np.random.default_rng(0).integers(0, 2, len(ids)).astype(float)
    calls = []

    def answer(items):
        calls.append(len(items))
        return answers[items]

    alone = BankFitness(settings, ids)
    assert alone.evaluate(answer, costs=np.array([5.0])).verified and sum(calls) == len(ids)
    calls.clear()
    told = BankFitness(settings, ids)
    told.share([(np.array([5.0]), 0.99, True), (np.array([1.0]), 0.6, False)])
    scored = told.evaluate(answer, costs=np.array([5.0]))
    assert told.incumbent == 0.99 and not scored.verified and sum(calls) <= 60
    assert told.threshold(np.array([2.0])) == 0.6 and told.threshold(np.array([0.5])) == -np.inf
