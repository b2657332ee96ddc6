"""Shared machinery of the Optuna engines: a study driven through ``ask``/``tell``.

Genes are suggested define-by-run, so a conditional gene is suggested only when
its ``when`` conditions hold. With a state directory the study lives in
``<run>/study.db`` (SQLite) and the sampler is pickled to ``<run>/sampler.pkl`` at
each checkpoint (Optuna's documented way to resume a sampler's random stream).
A failed candidate is told the worst finite values.
"""

from __future__ import annotations

import pickle
import sqlite3
import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any

import optuna
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.trial import Trial, TrialState

from evomerge.search.engines.base import Candidate, Engine, candidate_id, worst_values
from evomerge.search.run_folder import write_bytes_atomic
from evomerge.search.space import CategoricalGene, IntGene, SearchSpace, is_active, mask_inactive

STUDY_FILE = "study.db"
SAMPLER_FILE = "sampler.pkl"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggest(trial: Trial, gene: Any) -> Any:
    """Ask the trial for one gene's value with the matching Optuna distribution."""
    if isinstance(gene, CategoricalGene):
        return trial.suggest_categorical(gene.name, gene.choices)
    if isinstance(gene, IntGene):
        return trial.suggest_int(gene.name, gene.low, gene.high, step=gene.step, log=gene.log)
    return trial.suggest_float(gene.name, gene.low, gene.high, log=gene.log)


def sqlite_storage(path: Path) -> optuna.storages.RDBStorage:
    """Optuna's SQLite storage in write-ahead-log mode without a sync per commit.

    A killed process loses nothing committed (only a power cut could); the default
    rollback journal syncs the disk several times per trial, which dominated ask/tell.
    """

    def connect() -> sqlite3.Connection:
        conn = sqlite3.connect(path, timeout=60)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        return conn

    return optuna.storages.RDBStorage(f"sqlite:///{path}", engine_kwargs={"creator": connect})


class OptunaEngine(Engine):
    """An Optuna study with the sampler each subclass builds."""

    def __init__(self, space: SearchSpace, state_dir: Path | None = None):
        super().__init__(space, state_dir)
        sampler_path = self.state_dir / SAMPLER_FILE if self.state_dir else None
        if sampler_path and sampler_path.exists():
            sampler = pickle.loads(sampler_path.read_bytes())
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ExperimentalWarning)
                sampler = self.make_sampler()
        self.study = optuna.create_study(
            study_name=space.name,
            storage=sqlite_storage(self.state_dir / STUDY_FILE) if self.state_dir else None,
            sampler=sampler,
            directions=["maximize" if d == "max" else "minimize" for d in space.directions],
            load_if_exists=True,
        )

    @abstractmethod
    def make_sampler(self) -> BaseSampler:
        """The Optuna sampler, seeded with ``self.seed``."""

    def ask(self) -> Candidate:
        trial = self.study.ask()
        genome: dict[str, Any] = {}
        for gene in self.space.genes:
            genome[gene.name] = suggest(trial, gene) if is_active(gene, genome) else None
        return Candidate(candidate_id(trial.number), genome)

    def tell(self, candidate_id: str, objectives: list[float] | None) -> None:
        values = objectives if objectives is not None else worst_values(self.space.directions)
        self.study.tell(int(candidate_id[1:]), list(values))

    def pending(self) -> list[Candidate]:
        out = []
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            try:
                out.append(Candidate(candidate_id(t.number), mask_inactive(self.space, t.params)))
            except ValueError:  # killed while its genes were being suggested: never evaluated
                self.study.tell(t.number, state=TrialState.FAIL)
        return out

    def told(self) -> set[str]:
        finished = (TrialState.COMPLETE, TrialState.FAIL)
        return {candidate_id(t.number) for t in self.study.get_trials(deepcopy=False, states=finished)}

    def checkpoint(self) -> None:
        if self.state_dir:
            write_bytes_atomic(self.state_dir / SAMPLER_FILE, pickle.dumps(self.study.sampler))
