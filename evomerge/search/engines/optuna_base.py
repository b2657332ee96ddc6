"""Shared machinery of the Optuna engines: a study driven through ``ask``/``tell``.

Genes are suggested define-by-run (an array gene element by element, as the
space's ``scalar_genes``), so a conditional gene is suggested only when its
``when`` conditions hold. The study lives in memory. With a state directory
every ask (trial number, params, distributions, and the sampler's trial and study
attributes named in ``journal_attrs``, plain data) and every tell (values) is
appended as one JSON line to ``<run>/optuna_trials.jsonl``; a reopened engine
rebuilds the study from those lines, a trial asked and not told becoming RUNNING
again. Nothing is pickled, and nothing read from the run folder is unpickled.

The space's ``engine.initial`` genomes are the first trials (``enqueue_trial``).
Before each ask the study gets a fresh sampler seeded from (seed, trial number),
so what is asked depends only on the seed and the trials so far: a resumed run
asks exactly what an uninterrupted one would.
A failed candidate is told the worst finite values.
"""

from __future__ import annotations

import warnings
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import optuna
from optuna.distributions import distribution_to_json, json_to_distribution
from optuna.exceptions import ExperimentalWarning
from optuna.samplers import BaseSampler
from optuna.trial import Trial, TrialState, create_trial

from evomerge.errors import UserError
from evomerge.search.engines.base import Candidate, Engine, candidate_id, worst_values
from evomerge.search.run_folder import append_json_line, read_json_lines
from evomerge.search.space import CategoricalGene, IntGene, SearchSpace, is_active, mask_inactive

TRIALS_FILE = "optuna_trials.jsonl"
optuna.logging.set_verbosity(optuna.logging.WARNING)


def suggest(trial: Trial, gene: Any) -> Any:
    """Ask the trial for one gene's value with the matching Optuna distribution."""
    if isinstance(gene, CategoricalGene):
        return trial.suggest_categorical(gene.name, gene.choices)
    if isinstance(gene, IntGene):
        return trial.suggest_int(gene.name, gene.low, gene.high, step=gene.step, log=gene.log)
    return trial.suggest_float(gene.name, gene.low, gene.high, log=gene.log)


def trial_seed(seed: int, number: int) -> int:
    """The sampler seed for trial ``number`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, number]).generate_state(1)[0])


class OptunaEngine(Engine):
    """An Optuna study with the sampler each subclass builds."""

    #: prefixes of the trial and study system attributes the sampler reads back (plain data), journaled
    journal_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, space: SearchSpace, state_dir: Path | None = None):
        super().__init__(space, state_dir)
        self.journal = self.state_dir / TRIALS_FILE if self.state_dir else None
        self._study_attrs: dict[str, Any] = {}  # the study attributes journaled so far
        self.study = optuna.create_study(
            study_name=space.name, storage=optuna.storages.InMemoryStorage(), sampler=self._sampler(0),
            directions=["maximize" if d == "max" else "minimize" for d in space.directions],
        )
        if self.journal:
            self._replay(read_json_lines(self.journal, repair=True))

    @abstractmethod
    def make_sampler(self, seed: int) -> BaseSampler:
        """The Optuna sampler, seeded with ``seed``."""

    def _sampler(self, number: int) -> BaseSampler:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return self.make_sampler(trial_seed(self.seed, number))

    def _replay(self, lines: list[Any]) -> None:
        """Rebuild the study from the journal's lines, in trial-number order."""
        asked: dict[int, dict] = {}
        told: dict[int, list[float]] = {}
        try:
            for line in lines:
                if "ask" in line:
                    asked[int(line["ask"])] = line
                    self._study_attrs.update(line["study_attrs"])
                else:
                    told[int(line["tell"])] = [float(v) for v in line["values"]]
            if sorted(asked) != list(range(len(asked))) or not set(told) <= set(asked):
                raise ValueError("trial numbers are not 0, 1, 2, ... or a tell has no ask")
            for number in range(len(asked)):
                line = asked[number]
                values = told.get(number)
                mask_inactive(self.space, line["params"])  # every active gene has its value
                self.study.add_trial(create_trial(
                    state=TrialState.RUNNING if values is None else TrialState.COMPLETE, values=values,
                    params=line["params"], system_attrs=line["attrs"],
                    distributions={k: json_to_distribution(v) for k, v in line["distributions"].items()},
                ))
            for key, value in self._study_attrs.items():
                self.study._storage.set_study_system_attr(self.study._study_id, key, value)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise UserError(f"{self.journal}: not the Optuna trial journal of this run ({exc})") from None

    def ask(self) -> Candidate:
        number = len(self.study.get_trials(deepcopy=False))
        self.study.sampler = self._sampler(number)
        if number < len(self.space.initial_genomes):  # a warm start: the sampler draws only what it leaves out
            self.study.enqueue_trial(self.space.initial_genomes[number])
        trial = self.study.ask()
        genome: dict[str, Any] = {}
        for gene in self.space.scalar_genes:
            genome[gene.name] = suggest(trial, gene) if is_active(gene, genome) else None
        if self.journal:
            frozen = self.study.get_trials(deepcopy=False)[trial.number]
            study_attrs = {k: v for k, v in self.study._storage.get_study_system_attrs(self.study._study_id).items()
                           if k.startswith(self.journal_attrs) and self._study_attrs.get(k) != v}
            self._study_attrs.update(study_attrs)
            append_json_line(self.journal, {
                "ask": trial.number, "params": frozen.params, "study_attrs": study_attrs,
                "attrs": {k: v for k, v in frozen.system_attrs.items() if k.startswith(self.journal_attrs)},
                "distributions": {k: distribution_to_json(d) for k, d in frozen.distributions.items()},
            })
        return Candidate(candidate_id(trial.number), genome)

    def tell(self, candidate_id: str, objectives: list[float] | None) -> None:
        values = list(objectives if objectives is not None else worst_values(self.space.directions))
        number = int(candidate_id[1:])
        self.study.tell(number, values)
        if self.journal:
            append_json_line(self.journal, {"tell": number, "values": values})

    def pending(self) -> list[Candidate]:
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        return [Candidate(candidate_id(t.number), mask_inactive(self.space, t.params)) for t in running]

    def told(self) -> set[str]:
        return {candidate_id(t.number) for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}

    def checkpoint(self) -> None:
        """Nothing to do: each ask and tell is journaled as it happens."""
