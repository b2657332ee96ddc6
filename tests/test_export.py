"""Export then reload gives the same function; the CLI path reproduces the recorded accuracy exactly."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from evomerge.data import load_task
from evomerge.errors import UserError
from evomerge.recipe.export import load_exported, save_export
from evomerge.recipe.materialize import materialize
from tests.test_recipe import X, stitch_recipe, weights_recipe


@pytest.mark.parametrize(
    "recipe",
    [
        stitch_recipe(routing="learned"),
        stitch_recipe(branches=[{**stitch_recipe()["branches"][0], "aligner": {"name": "lowrank", "params": {"rank": 3}}},
                                {**stitch_recipe()["branches"][0], "source_layer": "fc1", "target_layer": "conv3",
                                 "aligner": {"name": "cca", "params": {"k": 8}}}]),
        stitch_recipe(branches=[{**stitch_recipe()["branches"][0], "aligner": {"name": "mlp", "params": {"epochs": 3}}}]),
        weights_recipe("tsv", {"alpha": 0.9, "rank": 3}),
        weights_recipe("tsv", {"alpha": 1.0}, {"enabled": True, "layer": "layers.fc2.0", "top_k": 2}),
    ],
    ids=["learned-routing", "two-branches", "mlp-map", "tsv", "mass"],
)
def test_export_round_trip(tiny_zoo, tmp_path, recipe):
    built = materialize(recipe, tiny_zoo)
    ids = [recipe["base"], *recipe["models"]] if recipe["kind"] == "weights" else \
        [recipe["trunk"], *(b["model"] for b in recipe["branches"])]
    save_export(tmp_path, built, recipe, {i: tiny_zoo.spec(i) for i in ids}, 0, {"t": "digits/parity"}, {})
    loaded, config = load_exported(tmp_path)
    task = "digits/parity" if recipe["kind"] == "weights" else None
    with torch.no_grad():
        if recipe.get("mass"):  # MASS re-runs its TSV merges from the stored task vectors: float-level equal
            torch.testing.assert_close(loaded(X, task), built.module(X, task), atol=1e-5, rtol=0)
        else:
            assert torch.equal(loaded(X, task), built.module(X, task))
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["params"] == built.params and len(manifest["weights_sha256"]) == 64
    assert {"torch", "evomerge", "optuna"} <= set(manifest["versions"])


def test_corrupt_export_is_a_user_error(tiny_zoo, tmp_path):
    built = materialize(stitch_recipe(), tiny_zoo)
    save_export(tmp_path, built, stitch_recipe(), {i: tiny_zoo.spec(i) for i in ("mlp-digits-lo", "cnn-digits-hi")}, 0, {}, {})
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["recipe"]["branches"][0]["aligner"]["params"]["alpha"] = 1e-3
    cfg["recipe"]["branches"][0]["aligner"]["name"] = "lowrank"  # another structure than the weights
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="do not fit the rebuilt model"):
        load_exported(tmp_path)


@pytest.fixture(scope="module")
def cli_env(tmp_path_factory):
    """Subprocess environment sharing one cache, so the digits models train once for this module."""
    return dict(os.environ, EVOMERGE_CACHE=str(tmp_path_factory.mktemp("cli_cache")))


def _cli(*args, env):
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], capture_output=True, text=True, env=env, timeout=600)


def digits_space(tmp_path, budget=4, source_layers=("fc1", "fc2", "fc3")):
    """The default cross_arch space moved onto digits models (default zoo, trained in seconds)."""
    space = yaml.safe_load(open("search_spaces/cross_arch.yaml"))
    space.update(name="digits_mini", models=["mlp-digits-lo", "cnn-digits-hi"],
                 tasks=[{"name": "all", "dataset": "digits", "condition": "all"}], budget={"evaluations": budget})
    space["recipe"].update(trunk="mlp-digits-lo", gate={"layer": "fc3"})
    br = space["recipe"]["branches"][0]
    br.update(model="cnn-digits-hi")
    br["fit"].update(task="digits/all", items=400)
    genes = {g["name"]: g for g in space["genes"]}
    genes["source_layer"]["choices"] = list(source_layers)
    genes["target_layer"]["choices"] = ["conv3", "fc"]
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_search_export_evaluate_reproduces_recorded_accuracy(tmp_path, cli_env):
    """A short search on digits, then export and evaluate: the recorded test accuracy, exactly."""
    env = cli_env
    run = tmp_path / "run"
    proc = _cli("search", "--space", str(digits_space(tmp_path)), "--run-dir", str(run), "--no-progress", env=env)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((run / "summary.json").read_text())
    assert summary["evaluations"] == 4
    proc = _cli("export", str(run), "--out", str(tmp_path / "model"), env=env)
    assert proc.returncode == 0, proc.stderr
    proc = _cli("evaluate", str(tmp_path / "model"), env=env)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert rows[0]["accuracy"] == summary["best"]["full_test_accuracy"] and rows[0]["matches_record"] is True
    assert rows[0]["items"] == len(load_task("digits", "all", "test", 0))
    bad = _cli("export", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), env=env)
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr


def test_candidate_failing_in_materialization_is_recorded_and_search_finishes(tmp_path, cli_env):
    env = cli_env
    run = tmp_path / "run"
    space = digits_space(tmp_path, budget=8, source_layers=("fc2", "no_such_layer"))
    proc = _cli("search", "--space", str(space), "--run-dir", str(run), "--no-progress", "--engine", "random", env=env)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    failed = [r for r in rows if r["status"] == "failed"]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    assert failed and all("no_such_layer" in r["error"] for r in failed)
    assert len(failed) < 8 and json.loads((run / "summary.json").read_text())["failed"] == len(failed)
