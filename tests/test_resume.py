"""Resuming a run folder: engine state is data only."""

from __future__ import annotations

import json
import pathlib
import pickle
from pathlib import Path

import pytest
import yaml
from search_fakes import ITEM_IDS, ToyEvaluator, toy_space, two_objectives
from test_runner import InterruptOnce, fake_cli, records, search  # noqa: F401  (fake_cli: a fixture)

from evomerge.cli import main
from evomerge.distributed.pool import InProcessPool
from evomerge.errors import UserError
from evomerge.search.engines.base import candidate_id
from evomerge.search.runner import run_search
from evomerge.search.space import load_space, with_overrides

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
    assert {p.name for p in run.iterdir()} >= {"optuna_trials.jsonl", "space.yaml"}
    assert not list(run.glob("*.pkl")) and not list(run.glob("*.db"))
    for line in (run / "optuna_trials.jsonl").read_text().splitlines():
        json.loads(line)


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
    journal.write_text(good + '{"ask": 4, "par')  # cut short by a kill: skipped and cut away
    resume(run, 6)
    assert [r["id"] for r in records(run)] == [candidate_id(i) for i in range(6)]
    assert all(json.loads(line) for line in journal.read_text().splitlines())
