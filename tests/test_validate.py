"""Validate before spending: every bad space input exits 2 naming file and field, before any candidate runs."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from evomerge.cli import main
from evomerge.errors import ConfigError
from evomerge.search.space import load_space, mask_inactive, parse_space, sample_genomes

ROOT = Path(__file__).resolve().parents[1]
CROSS_ARCH = yaml.safe_load((ROOT / "search_spaces" / "cross_arch.yaml").read_text())


def edited(edit) -> dict:
    data = copy.deepcopy(CROSS_ARCH)
    edit(data)
    return data


def gene(data: dict, name: str) -> dict:
    return next(g for g in data["genes"] if g["name"] == name)


def branch(data: dict) -> dict:
    return data["recipe"]["branches"][0]


def cli(*args: str, cache: Path, capsys, monkeypatch) -> tuple[int, str]:
    """The command in this interpreter: (exit status, stderr)."""
    monkeypatch.setenv("EVOMERGE_CACHE", str(cache))
    capsys.readouterr()
    code = main(list(args))
    return code, capsys.readouterr().err


BAD_SPACES = {
    "trunk-typo": (lambda d: d["recipe"].update(trunk="cnn-mnist1d-typo"), "recipe.trunk", "a model listed in models"),
    "fit-items-text": (lambda d: branch(d)["fit"].update(items="twelve"), "recipe.branches[0].fit.items",
                       "a valid integer"),
    "tune-lr-text": (lambda d: branch(d)["tune"].update(lr="twelve"), "recipe.branches[0].tune.lr", "a valid number"),
    "negative-seed": (lambda d: d.update(seed=-1000000000), "seed", "greater than or equal to 0"),
    "huge-zoo-seed": (lambda d: d["zoo"].update(seed=2**32), "zoo.seed", "less than 4294967296"),
    "recipe-seed": (lambda d: d["recipe"].update(seed=-1), "recipe.seed", "greater than or equal to 0"),
    "kind-typo": (lambda d: d["recipe"].update(kind="stich"), "recipe.kind", "a recipe kind (layerwise, stack, stitch, weights)"),
    "gene-below-schema": (lambda d: gene(d, "tune_epochs").update(low=-2), "recipe.branches[0].tune.epochs",
                          "when gene 'tune_epochs' is -2"),
    "gene-model-choice": (lambda d: (branch(d).update(model={"gene": "branch_model"}), d["genes"].append(
        {"name": "branch_model", "type": "categorical", "choices": ["tf-mnist1d-hi", "cnn-mnist1d-hi"]})),
        "recipe.branches[0].model", "when gene 'branch_model' is 'cnn-mnist1d-hi'"),
    "zero-time-budget": (lambda d: d["budget"].update(time_s=0), "budget.time_s", "greater than 0"),
    "infinite-timeout": (lambda d: d.update(resources={"workers": 1, "timeout_s": float("inf")}),
                         "resources.timeout_s", "a finite number"),
    "zero-population": (lambda d: d["engine"].update(population=0), "engine.population", "greater than or equal to 2"),
}


@pytest.mark.parametrize("case", list(BAD_SPACES))
def test_bad_space_names_file_and_recipe_field(tmp_path, case):
    edit, field, expected = BAD_SPACES[case]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(edited(edit), sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_space(path, recipes=True)
    assert (info.value.file, info.value.field) == (str(path), field) and expected in str(info.value), str(info.value)


@pytest.mark.parametrize("case", ["trunk-typo", "fit-items-text", "tune-lr-text", "negative-seed",
                                  "gene-model-choice", "kind-typo"])
def test_bad_space_exits_2_before_any_candidate(tmp_path, case, capsys, monkeypatch):
    edit, field, expected = BAD_SPACES[case]
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(edited(edit), sort_keys=False))
    run = tmp_path / "run"
    code, err = cli("search", "--space", str(space), "--run-dir", str(run), "--no-progress", cache=tmp_path / "cache",
                    capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2, err
    assert f"{space}: field '{field}'" in err and expected in err, err
    assert not run.exists() and not (tmp_path / "cache" / "zoo").exists()  # no run folder, no model trained


def test_bad_space_in_a_fresh_interpreter_exits_2_without_traceback(tmp_path):
    space = tmp_path / "bad.yaml"
    space.write_text(yaml.safe_dump(edited(BAD_SPACES["trunk-typo"][0]), sort_keys=False))
    env = dict(os.environ, EVOMERGE_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "evomerge.cli", "search", "--space", str(space), "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 2 and "field 'recipe.trunk'" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize(("content", "detail"), [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "UTF-8 text"),
    ("name: caf\xe9\n".encode("latin-1"), "byte 0xe9 at offset 9"),
])
def test_binary_space_file_exits_2_naming_it(tmp_path, content, detail, capsys, monkeypatch):
    space = tmp_path / "space.bin"
    space.write_bytes(content)
    code, err = cli("search", "--space", str(space), "--run-dir", str(tmp_path / "run"), cache=tmp_path / "cache",
                    capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and str(space) in err and detail in err, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flag", "value", "expected"), [
    ("--seed", "-1", "--seed -1: expected greater than or equal to 0"),
    ("--budget", "0", "--budget 0: expected greater than or equal to 1"),
])
def test_cli_overrides_are_range_checked(tmp_path, flag, value, expected, capsys, monkeypatch):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(CROSS_ARCH))
    code, err = cli("search", "--space", str(space), "--run-dir", str(tmp_path / "run"), flag, value,
                    cache=tmp_path / "cache", capsys=capsys, monkeypatch=monkeypatch)
    assert code == 2 and expected in err and str(space) in err, err
    assert not (tmp_path / "run").exists()


def test_sample_genomes_cover_every_value_active_and_conditionals_inactive():
    space = parse_space(CROSS_ARCH)
    genomes = sample_genomes(space)
    assert genomes == sample_genomes(space)  # deterministic
    assert all(mask_inactive(space, g) == g for g in genomes)  # consistent activity
    for g in space.genes:
        seen = {repr(x[g.name]) for x in genomes}
        wanted = g.choices if g.type == "categorical" else [g.low, g.high]
        assert {repr(v) for v in wanted} <= seen, g.name
        if g.when:
            assert "None" in seen, g.name


def test_every_shipped_space_passes_the_recipe_check():
    """Spaces over the LM family (``${lm}``) need it built: in the session's fresh cache they exit 2
    saying how to build it (their recipes are checked on a built tiny family in test_zoo_lm.py)."""
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        if "${lm}" in path.read_text():
            with pytest.raises(ConfigError, match=r"build it with 'evomerge zoo build --family lm --seed 0'"):
                load_space(path, recipes=True)
            continue
        load_space(path, recipes=True)


def test_nested_conditions_are_forced_active():
    """``mass_top_k`` needs ``mass: true``, which needs ``method: tsv``: the check reaches it."""
    data = yaml.safe_load((ROOT / "search_spaces" / "multitask.yaml").read_text())
    gene(data, "mass_top_k").update(low=0, high=3)
    with pytest.raises(ConfigError) as info:
        parse_space(data, "multitask.yaml", recipes=True)
    assert info.value.field == "recipe.mass.top_k" and "when gene 'mass_top_k' is 0" in str(info.value)


def test_recipe_check_only_applies_to_recipe_kinds_unless_asked():
    data = edited(lambda d: d["recipe"].update(kind="toy"))
    parse_space(data)  # a test double's own recipe kind loads
    with pytest.raises(ConfigError, match="recipe.kind"):
        parse_space(data, recipes=True)


def test_control_characters_and_garbage_json_name_the_file(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_bytes(b"name: x\x00\x01\n")
    with pytest.raises(ConfigError, match=r"space.yaml: field '<yaml>': expected valid YAML"):
        load_space(space)
    summary = tmp_path / "summary.json"
    summary.write_text('{"best": ')
    from evomerge.errors import read_json

    with pytest.raises(ConfigError, match=r"summary.json: field '<json>': expected valid JSON"):
        read_json(summary)


def test_binary_run_files_name_the_file(tmp_path):
    from evomerge.fitness.responses import read_responses

    (tmp_path / "responses.jsonl").write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(ConfigError, match=r"responses.jsonl: field '<file>': expected UTF-8 text"):
        read_responses([tmp_path], "digits/all")
