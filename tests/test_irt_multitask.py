"""IRT fitness on several tasks (one bank per task, weighted mean ± combined stderr) and MERGE³'s
mp-IRT / gmp-IRT estimators in the search: known answers on synthetic banks, an end-to-end
multi-task search on the tiny zoo, and the validation errors."""

import numpy as np
import pytest
import yaml

from evomerge.cli import main
from evomerge.errors import ConfigError, UserError
from evomerge.fitness.anchors import ANCHORS
from evomerge.fitness.bank import load_bank
from evomerge.fitness.estimators import ESTIMATORS
from evomerge.fitness.multitask import TaskEstimate, combine
from evomerge.fitness.search_fitness import BankFitness
from evomerge.fitness.irt.simulate import simulate_2pl
from evomerge.fitness.zoo_evaluator import RecipeEvaluator
from evomerge.recipe.schema import parse_recipe
from evomerge.search.report import write_report
from evomerge.search.space import parse_space
from evomerge.settings import FitnessSettings
from tests.test_irt_search import records, search

BUDGET = 10
TASKS = {"lo": "classes_0_4", "hi": "classes_5_9"}
WEIGHTS = {"lo": 1.0, "hi": 3.0}


def multi_space(fitness=None, banks=None):
    """The digits stitch of tests/test_irt_search.py on two tasks, weighted 1 : 3."""
    banks = banks or {}
    return {
        "name": "tiny_multitask", "seed": 3, "models": ["mlp-digits-lo", "cnn-digits-hi"],
        "tasks": [{"name": n, "dataset": "digits", "condition": c, "weight": WEIGHTS[n],
                   **({"bank": str(banks[n])} if n in banks else {})} for n, c in TASKS.items()],
        "recipe": {
            "kind": "stitch", "trunk": "mlp-digits-lo", "trunk_weight": {"gene": "w"}, "routing": "mixture",
            "branches": [{"model": "cnn-digits-hi", "source_layer": {"gene": "src"}, "target_layer": "fc",
                          "aligner": {"name": "ridge"}, "fit": {"task": "digits/all", "items": 300}}],
        },
        "genes": [{"name": "src", "type": "categorical", "choices": ["fc1", "fc2", "fc3"]},
                  {"name": "w", "type": "float", "low": 0.0, "high": 1.5}],
        "objectives": [{"name": "accuracy", "metric": "accuracy", "direction": "max"}],
        "engine": {"name": "random"}, "budget": {"evaluations": BUDGET},
        "fitness": fitness or {"estimator": "full"},
    }


@pytest.fixture(scope="module")
def banks(tmp_path_factory, tiny_zoo):
    """A full-fitness two-task search and one bank per task calibrated on it."""
    mp = pytest.MonkeyPatch()
    root = tmp_path_factory.mktemp("multitask")
    search(multi_space(), root / "full", mp, tiny_zoo)
    mp.undo()
    out = {}
    for name, condition in TASKS.items():
        out[name] = root / f"{name}.json"
        assert main(["calibrate", str(root / "full"), "--task", f"digits/{condition}", "--out", str(out[name])]) == 0
    return root, out


def irt(estimator="pirt"):
    return {"estimator": estimator, "items": 20, "anchors": "random"}


# ---- combining the tasks ---------------------------------------------------------------------


def test_combine_is_the_weighted_mean_with_root_sum_square_stderr():
    lo = TaskEstimate("lo", "pirt", 0.6, 0.04, 20, False)
    hi = TaskEstimate("hi", "pirt", 0.8, 0.0, 500, True)
    both = combine([lo, hi], WEIGHTS)
    assert both.task == "mean" and both.items == 520 and not both.verified
    assert both.value == pytest.approx((1 * 0.6 + 3 * 0.8) / 4)
    assert both.stderr == pytest.approx(np.sqrt(1 * 0.04**2 + 9 * 0.0) / 4)


def test_combined_interval_covers_the_weighted_full_accuracy_on_synthetic_banks():
    """Two simulated tasks (2PL banks of 1,000 and 400 items, same 200 respondents' abilities shifted):
    p-IRT from 30 random anchors per task, combined 1 : 3; the 95% interval of the combination covers
    the weighted full accuracy at the nominal rate (measured 93.0%; binomial sd over 200 is 1.5 points)."""
    y_lo, p_lo, _ = simulate_2pl(200, 1000, seed=21)
    y_hi, p_hi, _ = simulate_2pl(200, 400, seed=22)
    hits = []
    for j in range(200):
        est = []
        for name, y, params in (("lo", y_lo, p_lo), ("hi", y_hi, p_hi)):
            items = ANCHORS.get("random")(params, 30, seed=j).items
            e = ESTIMATORS.get("pirt")(params, items, y[j, items])
            est.append(TaskEstimate(name, "pirt", e.value, e.stderr, 30, False))
        both = combine(est, WEIGHTS)
        assert both.value == pytest.approx((est[0].value + 3 * est[1].value) / 4)
        truth = (y_lo[j].mean() + 3 * y_hi[j].mean()) / 4
        hits.append(abs(both.value - truth) <= 1.96 * both.stderr)
    assert 0.91 <= np.mean(hits) <= 0.99


# ---- the multi-task IRT search ---------------------------------------------------------------


@pytest.mark.parametrize("estimator", ["pirt", "mp-irt"])
def test_multitask_irt_search_runs_end_to_end(banks, tmp_path, monkeypatch, tiny_zoo, estimator):
    root, paths = banks
    summary, ev = search(multi_space(irt(estimator), paths), tmp_path / "irt", monkeypatch, tiny_zoo)
    assert set(ev.fitness) == {"lo", "hi"} and summary["evaluations"] == BUDGET
    full = {r["id"]: r["metrics"] for r in records(root / "full")}  # same seed: same candidates
    for rec in records(tmp_path / "irt"):
        assert rec["status"] == "ok", rec.get("error")
        est = {e["task"]: e for e in rec["estimates"]}
        assert list(est) == ["lo", "hi", "mean"] and est["mean"]["estimator"] == estimator
        assert est["mean"]["value"] == pytest.approx((est["lo"]["value"] + 3 * est["hi"]["value"]) / 4)
        assert est["mean"]["stderr"] == pytest.approx(
            np.sqrt(est["lo"]["stderr"] ** 2 + 9 * est["hi"]["stderr"] ** 2) / 4)
        assert rec["objectives"]["accuracy"] == rec["metrics"]["accuracy/mean"] == est["mean"]["value"]
        assert rec["items"] == est["mean"]["items"] == est["lo"]["items"] + est["hi"]["items"]
        for name in TASKS:
            assert rec["metrics"][f"accuracy/{name}"] == est[name]["value"]
            if est[name]["verified"]:
                assert est[name]["stderr"] == 0
                assert est[name]["value"] == pytest.approx(full[rec["id"]][f"accuracy/{name}"], abs=1e-6)
            else:
                assert est[name]["items"] >= 20 and est[name]["stderr"] > 0
    assert summary["item_evaluations"] < sum(len(ev.tasks[n]) for n in TASKS) * BUDGET
    best = summary["best"]  # verified on every task: exact on the objective it is ranked by
    assert [e["task"] for e in best["estimates"]] == ["lo", "hi", "mean"] and best["estimates"][-1]["verified"]
    assert best["objectives"]["accuracy"] == pytest.approx(full[best["id"]]["accuracy/mean"], abs=1e-6)
    if estimator == "pirt":  # the report shows each task's estimate of the best
        report = write_report(tmp_path / "irt").read_text()
        assert all(f"| {task} | pirt |" in report for task in ("lo", "hi", "mean"))


def test_single_task_form_and_per_task_field_agree(banks, monkeypatch, tiny_zoo):
    _, paths = banks
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)
    one = multi_space()
    one["tasks"] = one["tasks"][:1]
    spaces = [dict(one, fitness={**irt(), "bank": str(paths["lo"])}),
              dict(one, tasks=[dict(one["tasks"][0], bank=str(paths["lo"]))], fitness=irt())]
    for data in spaces:
        assert parse_space(data).task_banks() == {"lo": str(paths["lo"])}


@pytest.mark.parametrize("change, field, expected", [
    (lambda s: s["tasks"][1].pop("bank"), "tasks[1].bank", "an item bank file for task 'hi'"),
    (lambda s: s["fitness"].update(bank="b.json"), "fitness.bank", "no space-wide bank"),
])
def test_multitask_space_needs_a_bank_per_task(banks, change, field, expected):
    data = multi_space(irt(), banks[1])
    change(data)
    with pytest.raises(ConfigError, match=expected) as info:
        parse_space(data)
    assert info.value.field == field


def test_bank_of_another_task_exits_2_naming_file_and_items(banks, tmp_path, capsys):
    _, paths = banks
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(multi_space(irt(), {"lo": paths["lo"], "hi": paths["lo"]})))
    assert main(["search", "--space", str(space), "--run-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(paths["lo"]) in err and "field 'items'" in err and "Traceback" not in err


def test_a_task_incumbent_at_the_floor_does_not_verify_every_candidate(banks):
    """Several tasks verify on the combined mean only: with a task's own incumbent at 0, an estimate
    (always above 0) used to make every later candidate answer all of that task's items."""
    _, paths = banks
    ids = [i.id for i in load_bank(paths["lo"]).items]
    settings = FitnessSettings(**irt())
    for verify, answered in ((True, len(ids)), (False, 20)):
        fit = BankFitness(settings, ids, bank=str(paths["lo"]), verify=verify)
        fit.incumbent = 0.0
        scored = fit.evaluate(lambda items: np.zeros(len(items)))
        assert len(scored.items) == answered and scored.verified == verify
    assert scored.value > 0  # unverified: the estimate, above the floor


# ---- mp-IRT's parents in the search ----------------------------------------------------------


def test_parents_come_from_the_recipe_and_must_have_an_ability(banks, monkeypatch, tiny_zoo):
    _, paths = banks
    recipe = {"kind": "weights", "method": "task_arithmetic", "base": "base-digits",
              "models": ["ft-digits-rot90", "ft-digits-flip"]}
    assert parse_recipe(recipe).parents() == ["ft-digits-rot90", "ft-digits-flip"]
    monkeypatch.setattr("evomerge.fitness.zoo_evaluator.Zoo", lambda seed: tiny_zoo)
    ev = RecipeEvaluator(parse_space(multi_space(irt("gmp-irt"), paths)))
    assert ev.fitness["lo"].parent_thetas(["mlp-digits-lo", "cnn-digits-hi"]).shape == (2, 1)
    with pytest.raises(UserError, match="no ability in bank .* for parent model.*ft-digits-flip"):
        ev.fitness["lo"].parent_thetas(["mlp-digits-lo", "ft-digits-flip"])
