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
from evomerge.recipe.export import ExportWarning, load_exported, save_export
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
    (tmp_path / "manifest.json").unlink()  # with it, the edit is caught before rebuilding
    with pytest.raises(UserError, match="do not fit the rebuilt model"), pytest.warns(ExportWarning, match="no manifest"):
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


# ---- trusting exports: evaluate checks the folder against its manifest --------------------------


@pytest.fixture(scope="module")
def verified_export(tiny_zoo, tmp_path_factory):
    """A stitch export on the tiny zoo whose manifest records its sources' hashes and its test accuracy."""
    from evomerge.evaluate import accuracy

    out = tmp_path_factory.mktemp("export")
    recipe, ids = stitch_recipe(), ["mlp-digits-lo", "cnn-digits-hi"]
    built = materialize(recipe, tiny_zoo)
    test = load_task("digits", "all", "test", 0)
    with torch.no_grad():
        acc = accuracy(lambda x: built.module(x, test.key), test)
    manifest = {"sources": [{"id": i, "sha256": tiny_zoo.record(i)["sha256"]} for i in ids],
                "fitness": {"test_metrics": {"accuracy/all": acc}}}
    save_export(out, built, recipe, {i: tiny_zoo.spec(i) for i in ids}, 0, {"all": "digits/all"}, manifest)
    return out


def _tampered(src, dst, edit):
    import shutil

    shutil.copytree(src, dst)
    edit(dst)
    return dst


def _edit_json(name, change):
    def edit(folder):
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data, indent=1))
    return edit


def _flip_weight_byte(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-3] ^= 0x40  # inside the last tensor's data: still a valid file
    (folder / "model.safetensors").write_bytes(bytes(data))


def _truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


TAMPERED = {
    "weights-bytes": (_flip_weight_byte, 2, "model.safetensors: sha256", "weights were changed after export"),
    "config-target-layer": (_edit_json("config.json", lambda c: c["recipe"]["branches"][0].update(target_layer="conv3")),
                            2, "config.json: field 'recipe.branches[0].target_layer'", "'fc' as"),
    "manifest-recipe": (_edit_json("manifest.json", lambda m: m["recipe"].update(routing="confidence")),
                        2, "config.json: field 'recipe.routing'", "'confidence' as"),
    "config-tasks": (_edit_json("config.json", lambda c: c.update(tasks={"all": "digits/parity"})),
                     2, "config.json: sha256", "config was changed after export"),
    "truncated-weights": (_truncate, 2, "model.safetensors: not a complete safetensors file", "damaged"),
    "garbage-config": (lambda f: (f / "config.json").write_bytes(b"\x00\xff{garbage"), 2, "config.json: field '<file>'",
                       "UTF-8"),
    "garbage-manifest": (lambda f: (f / "manifest.json").write_text('{"format": "evomerge-export/1",'), 2,
                         "manifest.json: field '<json>'", "valid JSON"),
    "manifest-without-hash": (_edit_json("manifest.json", lambda m: m.pop("weights_sha256")), 2,
                              "manifest.json: field 'weights_sha256'", "the field is required"),
    "recorded-accuracy": (_edit_json("manifest.json", lambda m: m["fitness"]["test_metrics"].update({"accuracy/all": 0.5})),
                          1, "digits/all: accuracy", "differs from the recorded 0.5"),
    "source-hash": (_edit_json("manifest.json", lambda m: m["sources"][1].update(sha256="0" * 64)), 1,
                    "source cnn-digits-hi", "the manifest records 0000"),
}


#: Checked in-process only (each CLI call is a fresh interpreter).
LIBRARY_ONLY = {"config-tasks", "manifest-without-hash"}


@pytest.mark.parametrize("case", list(TAMPERED))
def test_evaluate_rejects_a_tampered_export(verified_export, tmp_path, case):
    edit, status, where, what = TAMPERED[case]
    folder = _tampered(verified_export, tmp_path / "model", edit)
    if case not in LIBRARY_ONLY:
        proc = _cli("evaluate", str(folder), env=os.environ.copy())  # the session cache: the sources are built there
        assert proc.returncode == status, proc.stderr
        assert where in proc.stderr and what in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr
    if status == 2:  # the library API raises the same error
        with pytest.raises(UserError) as info:
            load_exported(folder)
        assert where in str(info.value) and what in str(info.value)
    else:  # the scores are still printed
        assert json.loads(proc.stdout)[0]["items"] == len(load_task("digits", "all", "test", 0))


def test_evaluate_accepts_an_untampered_export_and_warns_without_manifest(verified_export, tmp_path):
    proc = _cli("evaluate", str(verified_export), env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[0]["matches_record"] is True and "warning" not in proc.stderr
    folder = _tampered(verified_export, tmp_path / "model", lambda f: (f / "manifest.json").unlink())
    proc = _cli("evaluate", str(folder), env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr
    assert "evomerge: warning:" in proc.stderr and "no manifest.json" in proc.stderr
    assert "recorded_accuracy" not in json.loads(proc.stdout)[0]
