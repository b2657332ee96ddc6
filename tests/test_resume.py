"""Resuming a run folder: engine state is data only, and the folder's space is checked."""

from __future__ import annotations

import json
import os
import pathlib
import pickle
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import yaml
from search_fakes import ITEM_IDS, ToyEvaluator, toy_space, two_objectives
from test_runner import InterruptOnce, fake_cli, records, search  # noqa: F401  (fake_cli: a fixture)

import evomerge.search
from evomerge.cli import main
from evomerge.commands.search import resolve_space
from evomerge.distributed.pool import InProcessPool
from evomerge.errors import UserError
from evomerge.search.engines.base import candidate_id
from evomerge.search.run_folder import RunFolder
from evomerge.search.runner import run_search
from evomerge.search.space import dump_space, load_space, with_overrides

ROOT = Path(__file__).parent.parent
SPACES = ROOT / "search_spaces"


class Booby:
    """Unpickling this touches ``path``: proof that a file was unpickled."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return pathlib.Path.touch, (self.path,)


def resume(run: Path, evaluations: int) -> ToyEvaluator:
    ev = ToyEvaluator()
    space = with_overrides(load_space(run / "space.yaml"), **{"budget.evaluations": evaluations})
    run_search(space, InProcessPool(lambda: ev), run, resume=True, item_ids=ITEM_IDS, progress=False)
    return ev


@pytest.mark.parametrize("engine", ["optuna_tpe", "optuna_nsga2", "optuna_cmaes", "random"])
def test_optuna_searches_run_and_resume_with_data_only(tmp_path, engine):
    run = tmp_path / "run"
    objectives = two_objectives() if engine == "optuna_nsga2" else None
    with pytest.raises(KeyboardInterrupt):
        search(toy_space(engine, evaluations=12, objectives=objectives), run, InterruptOnce())
    ev = resume(run, 14)
    assert ev.calls[0] == "c00005"
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(14)]
    assert {p.name for p in run.iterdir()} >= {"optuna_trials.jsonl", "run.json", "space.yaml"}
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.db"))
    for line in (run / "optuna_trials.jsonl").read_text().splitlines():
        json.loads(line)


@pytest.mark.parametrize("engine", ["optuna_tpe", "deap_ga"])
def test_a_run_with_array_genes_resumes_from_its_folder(tmp_path, engine):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        search(toy_space(engine, evaluations=12, array=True), run, InterruptOnce())
    space = load_space(run / "space.yaml")
    assert [g.name for g in space.genes] == ["x", "method", "rank", "lam", "cells", "pick"]
    assert dump_space(space) == (run / "space.yaml").read_text()
    ev = resume(run, 14)
    assert ev.calls[0] == "c00005"
    recs = records(run)
    assert [r["id"] for r in recs] == [candidate_id(i) for i in range(14)]
    for r in recs:
        assert "x[2]" in r["genome"] and len(r["recipe"]["x"]) == 3 and r["recipe"]["x"][2] == r["genome"]["x[2]"]


def test_a_pickle_in_the_run_folder_is_never_unpickled(tmp_path, fake_cli, capsys):
    run, marker = tmp_path / "run", tmp_path / "unpickled"
    space_file = tmp_path / "toy.yaml"
    space_file.write_text(yaml.safe_dump(toy_space("optuna_tpe", evaluations=6)))
    assert main(["search", "--space", str(space_file), "--run-dir", str(run), "--no-progress"]) == 0
    pickle.loads(pickle.dumps(Booby(tmp_path / "armed")))
    assert (tmp_path / "armed").exists(), "the booby trap works when unpickled"
    bomb = pickle.dumps(Booby(marker))
    (run / "sampler.pkl").write_bytes(bomb)
    assert main(["search", "--resume", "--run-dir", str(run), "--budget", "8", "--no-progress"]) == 0
    assert len(records(run)) == 8 and not marker.exists()

    (run / "optuna_trials.jsonl").write_bytes(bomb + b"\n")
    assert main(["search", "--resume", "--run-dir", str(run), "--budget", "10", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{run / 'optuna_trials.jsonl'}: line 1 is not JSON" in err and "Traceback" not in err
    assert not marker.exists()


def test_a_damaged_trial_journal_is_a_clear_error(tmp_path):
    run = tmp_path / "run"
    search(toy_space("optuna_tpe", evaluations=4), run, ToyEvaluator())
    journal = run / "optuna_trials.jsonl"
    good = journal.read_text()
    journal.write_text(good.replace('"ask": 2', '"ask": 7'))
    with pytest.raises(UserError, match="not the Optuna trial journal of this run"):
        resume(run, 6)
    journal.write_text(good.replace('\\"low\\": -4.0', '\\"low\\": 9.0', 1))  # x0's low above its high
    with pytest.raises(UserError, match="not the Optuna trial journal of this run"):
        resume(run, 6)
    journal.write_text(good.replace('"params": {"x0"', '"params": {"y0"', 1))  # a gene of the space lacks its value
    with pytest.raises(UserError, match="genome lacks a value for active gene 'x0'"):
        resume(run, 6)
    journal.write_text(good + '{"ask": 4, "par')  # cut short by a kill: skipped and cut away
    resume(run, 6)
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(6)]
    assert all(json.loads(line) for line in journal.read_text().splitlines())


def test_resume_with_the_same_space_file_is_accepted(tmp_path):
    space_file = SPACES / "cross_arch.yaml"
    run = tmp_path / "run"
    RunFolder(run).create(dump_space(load_space(space_file)))
    args = Namespace(resume=True, run_dir=str(run), space=str(space_file), engine=None, seed=None,
                     budget=None, workers=None, gpus_per_worker=None)
    space, run_dir = resolve_space(args)
    assert run_dir == run and dump_space(space) == (run / "space.yaml").read_text()
    (run / "run.json").unlink()  # a folder from before run.json: nothing to check the space against
    assert resolve_space(args)[1] == run


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(evomerge.search.__file__).parents[2]), "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "evomerge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300)


def test_cli_refuses_another_space_and_an_edited_space(tmp_path):
    run = tmp_path / "run"
    RunFolder(run).create(dump_space(load_space(SPACES / "cross_arch.yaml")))
    other = tmp_path / "other.yaml"
    data = yaml.safe_load((SPACES / "cross_arch.yaml").read_text())
    data["seed"] = data.get("seed", 0) + 1
    other.write_text(yaml.safe_dump(data))
    proc = cli("search", "--resume", "--run-dir", str(run), "--space", str(other))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{other}: not the space of run {run}" in proc.stderr and "in: seed)" in proc.stderr

    space_yaml = run / "space.yaml"
    space_yaml.write_text(space_yaml.read_text().replace("seed: ", "seed: 1", 1))
    proc = cli("search", "--resume", "--run-dir", str(run))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"{space_yaml}: modified since the run was created" in proc.stderr


def test_the_runner_refuses_to_resume_an_edited_space(tmp_path):
    run = tmp_path / "run"
    search(toy_space("random", evaluations=3), run, ToyEvaluator())
    space_yaml = run / "space.yaml"
    space_yaml.write_text(space_yaml.read_text() + "# edited\n")
    with pytest.raises(UserError, match="space.yaml: modified since the run was created"):
        resume(run, 4)
    assert RunFolder(run).load_space().name == "toy"  # readers (export, report) still read it
