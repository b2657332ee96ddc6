"""IRT fitness inside the search: one task's bank, anchors, estimator, incumbent and online refits
(a space with several tasks holds one :class:`BankFitness` per task).

Per candidate, :meth:`BankFitness.evaluate` gets ``answer(items) -> 0/1`` that runs the merged
model on those items only (the only items that cost anything) and:

1. answers the K anchors and estimates the accuracy over the bank's N items (value ± stderr);
2. if ``adaptive``, adds the most informative items while value ± z·stderr contains the
   threshold (:func:`~evomerge.fitness.adaptive.adaptive_evaluate`), up to ``max_items``: the
   incumbent, or with ``threshold: front`` the accuracy needed to join the Pareto front given the
   candidate's other objectives (:func:`~evomerge.fitness.adaptive.front_threshold` over this
   object's evaluations, estimates included; ``costs`` given to :meth:`BankFitness.evaluate`);
3. *verifies*: a candidate whose estimate beats the incumbent goes on answering, most
   informative items first in batches growing by ``VERIFY_GROWTH``, until its p-IRT interval
   value + z·stderr falls below the incumbent (a false alarm, stopped after a few hundred items:
   its estimate stands) or it has answered every item: then its value is its exact validation
   accuracy (stderr 0) and it becomes the incumbent. The first candidate answers everything. The
   incumbent is thus a true accuracy, not the maximum of noisy estimates (which is biased upward,
   the winner's curse), the search's best is always fully evaluated, and these full rows are the
   top candidates' responses that recalibration needs;
4. every ``recalibrate_every`` evaluations refits the bank (:func:`~evomerge.fitness.calibrate.
   recalibrate`) on its source runs' matrix plus every answer of this run so far (missing
   answers are missing by design given the observed ones, so MML ignores them validly), then
   re-selects ``fisher`` anchors at the run's mean ability and re-estimates source abilities.

Workers share the driver's view: before each candidate the evaluator passes the current Pareto
front's (costs, accuracy, verified) to :meth:`BankFitness.share`; a verified accuracy there raises
the incumbent (so a worker does not answer everything for its own first candidate, nor verify
what another worker has beaten) and the front's points join this worker's own evaluations in the
front threshold. What a worker has not heard of yet only lowers its threshold: extra items,
never a biased estimate. Refits use this worker's answers (plus the source runs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from evomerge.errors import ConfigError, UserError
from evomerge.fitness.adaptive import ADAPTIVE_ESTIMATORS, adaptive_evaluate, front_threshold
from evomerge.fitness.anchors import ANCHORS, Anchors
from evomerge.fitness.bank import ItemBank, load_bank
from evomerge.fitness.calibrate import recalibrate
from evomerge.fitness.estimators import ESTIMATORS, recipe_prior
from evomerge.fitness.irt.ability import ThetaPrior, estimate_ability
from evomerge.fitness.irt.model import ItemParams
from evomerge.fitness.responses import read_responses
from evomerge.settings import FitnessSettings

Answer = Callable[[np.ndarray], np.ndarray]
#: Anchor items per task when the space's ``fitness.items`` is not set.
DEFAULT_ITEMS = 50
#: Verification batches grow by this share of the items answered so far (about 17 steps from 50 to 5,000).
VERIFY_GROWTH = 0.25
#: Estimators that fit a merge's ability as a combination of its parents' (MERGE³'s, :mod:`.estimators`).
PARENT_ESTIMATORS = ("mp-irt", "gmp-irt")


@dataclass(frozen=True)
class Scored:
    """One candidate's accuracy on a task: value, stderr, the items it answered and the answers."""

    value: float
    stderr: float
    items: np.ndarray
    correct: np.ndarray
    verified: bool


def source_matrix(bank: ItemBank, bank_path: str) -> np.ndarray:
    """The response matrix the bank was fitted on, read from its source runs, checked by hash."""
    field = "sources (needed by fitness.recalibrate_every)"
    if not bank.sources:
        raise ConfigError(bank_path, field, "the source runs the bank was fitted on", "none recorded")
    logs = [s.path for s in bank.sources if s.reader != "run"]
    if logs:
        raise ConfigError(bank_path, field, "a bank fitted on run folders (a bank read from logs is not refitted)",
                          logs[0])
    try:
        matrix = read_responses([s.path for s in bank.sources], bank.task, bank.split)
    except UserError as err:
        raise ConfigError(bank_path, field, "the bank's source run folders", str(err)) from None
    recorded = {(s.path, s.responses_sha256, s.items_sha256) for s in bank.sources}
    changed = [s.path for s in matrix.sources if (s.path, s.responses_sha256, s.items_sha256) not in recorded]
    if changed or len(matrix.sources) != len(bank.sources):
        raise ConfigError(bank_path, field, "source runs unchanged since calibration (same SHA-256)",
                          ", ".join(changed) or "a source run without responses for the task")
    return matrix.values


class BankFitness:
    """Estimated accuracy on one task split from a calibrated item bank (see the module docstring)."""

    def __init__(self, settings: FitnessSettings, item_ids: Sequence[str], *, seed: int = 0,
                 source: str = "<space>", bank: str | None = None, verify: bool = True):
        """``bank``: this task's bank file (default ``settings.bank``, the single-task form); its items
        must be ``item_ids`` in order (else exit 2 naming the file and ``items``). ``verify``: a
        candidate whose estimate beats this task's incumbent answers more items until it no longer
        does (the single-task form); with several tasks the evaluator verifies on the combined
        objective instead, since a task's own incumbent is not what the search ranks by (and at a
        floor of 0 every estimate beats it, so every candidate would answer every item)."""
        bank = bank or settings.bank
        if bank is None:
            raise ConfigError(source, "fitness.bank", f"an item bank for estimator '{settings.estimator}'")
        self.settings, self.seed, self.n, self.bank_path, self.verify = settings, seed, len(item_ids), bank, verify
        self.bank = load_bank(bank, item_ids)
        self.params: ItemParams = self.bank.params
        if settings.adaptive and settings.estimator not in ADAPTIVE_ESTIMATORS:
            raise ConfigError(source, "fitness.adaptive", f"false, or an estimator of {', '.join(ADAPTIVE_ESTIMATORS)} "
                              "(items chosen by information are not a random sample)", settings.estimator)
        self.k = settings.items or DEFAULT_ITEMS
        if self.k > self.n:
            raise ConfigError(source, "fitness.items", f"at most the bank's {self.n} items", self.k)
        self.pirt_mae = self.bank.diagnostics.get("heldout_mae")
        if settings.estimator == "gpirt" and not isinstance(self.pirt_mae, float):
            raise ConfigError(bank, "diagnostics.heldout_mae", "a held-out error (calibrate with --holdout > 0) "
                              "for estimator 'gpirt'", self.pirt_mae)
        self.history = source_matrix(self.bank, bank) if settings.recalibrate_every else None
        self.anchors: Anchors = ANCHORS.get(settings.anchors)(self.params, self.k, seed=seed, theta=0.0)
        self.rows: list[tuple[np.ndarray, np.ndarray]] = []
        self.incumbent: float | None = None
        self.evaluated: list[tuple[np.ndarray, float]] = []  # (costs, accuracy) of each evaluation, for the front
        self.shared: list[tuple[np.ndarray, float]] = []  # the driver's front, from share()
        self.refits = 0
        self.source_answers: dict[str, np.ndarray] = {}
        self.source_thetas: dict[str, float | np.ndarray] = {}

    def set_sources(self, answers: Mapping[str, np.ndarray]) -> None:
        """Source models' full answers on the bank's items; their abilities (MAP under N(0, I)) anchor
        ``mpirt``'s prior and are ``mp-irt``'s parents' abilities."""
        self.source_answers = {m: np.asarray(a, dtype=float) for m, a in answers.items()}
        self.source_thetas = {m: estimate_ability(self.params, a)[0] for m, a in self.source_answers.items()}

    def prior(self, mixing: Mapping[str, float]) -> ThetaPrior:
        """``mpirt``'s ability prior: the recipe's mixing of its sources' abilities (:func:`recipe_prior`)."""
        missing = [m for m in mixing if m not in self.source_thetas]
        if missing:
            raise UserError(f"mpirt: no ability for source model(s) {', '.join(missing)}")
        return recipe_prior([self.source_thetas[m] for m in mixing], list(mixing.values()))

    def parent_thetas(self, parents: Sequence[str]) -> np.ndarray:
        """``mp-irt``'s Θ: the abilities of the recipe's parent models, one row each."""
        missing = [m for m in parents if m not in self.source_thetas]
        if missing or not parents:
            raise UserError(f"{self.settings.estimator}: no ability in bank {self.bank_path} for parent model(s) "
                            f"{', '.join(missing) or '(the recipe names none)'}")
        return np.array([np.atleast_1d(self.source_thetas[m]) for m in parents])

    def share(self, front: Sequence[tuple[np.ndarray, float, bool]]) -> None:
        """The driver's Pareto front as (costs, accuracy, verified): verified accuracies raise the
        incumbent; every point joins the front threshold (replacing the previous shared front)."""
        verified = [acc for _, acc, ok in front if ok]
        if verified:
            self.incumbent = max(verified + ([self.incumbent] if self.incumbent is not None else []))
        self.shared = [(np.asarray(c, dtype=float), acc) for c, acc, _ in front]

    def threshold(self, costs: np.ndarray | None) -> float:
        """What the adaptive step tests against: the incumbent, or the front's accuracy at ``costs``."""
        assert self.incumbent is not None
        if self.settings.threshold == "front" and costs is not None:
            return front_threshold(self.evaluated + self.shared, costs)
        return self.incumbent

    def evaluate(self, answer: Answer, prior: ThetaPrior | None = None, costs: np.ndarray | None = None,
                 parent_thetas: np.ndarray | None = None) -> Scored:
        """Anchors, adaptive extension, verification of a new best, and the periodic refit.

        ``costs``: the candidate's other objectives, smaller is better (used by ``threshold: front``);
        ``parent_thetas``: the recipe's parents' abilities (``mp-irt``, ``gmp-irt``)."""
        s = self.settings
        if s.adaptive and self.incumbent is not None:
            result = adaptive_evaluate(answer, self.params, self.anchors.items, self.threshold(costs),
                                       estimator=s.estimator, z=s.z, batch=s.batch, max_items=s.max_items, prior=prior)
            estimate, items, correct = result.estimate, result.items, result.correct
        else:
            items = self.anchors.items
            correct = np.asarray(answer(items), dtype=float)
            estimate = ESTIMATORS.get(s.estimator)(self.params, items, correct, weights=self.anchors.weights,
                                                   prior=prior, pirt_mae=self.pirt_mae, parent_thetas=parent_thetas)
        value, stderr = estimate.value, estimate.stderr
        if self.incumbent is None:  # the first candidate answers everything: the first incumbent
            rest = np.setdiff1d(np.arange(self.n), items)
            items = np.concatenate([items, rest])
            correct = np.concatenate([correct, np.asarray(answer(rest), dtype=float)])
        elif self.verify and value > self.incumbent:
            check = adaptive_evaluate(answer, self.params, items, self.incumbent, estimator="pirt", z=s.z,
                                      batch=s.batch, prior=prior, answered=correct, until_below=True,
                                      growth=VERIFY_GROWTH)
            items, correct = check.items, check.correct
            value, stderr = check.estimate.value, check.estimate.stderr
        verified = len(items) == self.n
        if verified:
            value, stderr = float(correct.mean()), 0.0
            self.incumbent = value if self.incumbent is None else max(self.incumbent, value)
        if s.recalibrate_every:  # the answers a refit adds to the source matrix
            self.rows.append((items, correct))
        if costs is not None:
            self.evaluated.append((np.asarray(costs, dtype=float), value))
        if s.recalibrate_every and len(self.rows) % s.recalibrate_every == 0:
            self.refit()
        return Scored(value, stderr, items, correct, verified)

    def complete(self, answer: Answer, scored: Scored) -> Scored:
        """Answer every item the last evaluation (``scored``) left out: its exact accuracy, which may
        raise the incumbent; the run's answers and the front's point for it are replaced (a refit
        already made at that evaluation keeps the partial row, missing by design)."""
        rest = np.setdiff1d(np.arange(self.n), scored.items)
        items = np.concatenate([scored.items, rest])
        correct = np.concatenate([scored.correct, np.asarray(answer(rest), dtype=float)])
        value = float(correct.mean())
        self.incumbent = value if self.incumbent is None else max(self.incumbent, value)
        if self.settings.recalibrate_every:
            self.rows[-1] = (items, correct)
        if self.evaluated:
            self.evaluated[-1] = (self.evaluated[-1][0], value)
        return Scored(value, 0.0, items, correct, True)

    def refit(self) -> None:
        """Refit on the source runs' matrix plus this run's answers; follow with anchors and abilities."""
        assert self.history is not None, "refit needs fitness.recalibrate_every (the source matrix)"
        rows = np.full((len(self.rows), self.n), np.nan)
        for r, (items, correct) in enumerate(self.rows):
            rows[r, items] = correct
        fit = recalibrate(self.history, rows, backend=self.bank.backend, holdout=0.0, seed=self.seed,
                          dim=self.params.dim).fit
        self.params, self.refits = fit.params, self.refits + 1
        if self.settings.anchors == "fisher":
            theta = fit.theta[-len(rows):].mean(axis=0)
            self.anchors = ANCHORS.get("fisher")(self.params, self.k, theta=theta)
        self.set_sources(self.source_answers)
