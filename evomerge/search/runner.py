"""The search driver: engine asks, pool evaluates, results are logged, engine is told.

Order per finished candidate: append its line to ``evaluations.jsonl`` (flushed), its
answers to ``responses.jsonl``, tell the engine, checkpoint the engine. An engine
checkpoints after each ask too, so every logged id was asked in the last checkpoint.
Resuming therefore replays logged results the engine has not learned and re-submits
the candidates asked but never logged (in flight at the kill): no finished
evaluation is repeated or lost.

Each submission carries the metrics of the current Pareto front (kept incrementally), the
driver's view that every worker's IRT fitness shares (its incumbent and front threshold).

A candidate whose recipe was already evaluated (engines propose repeats: TPE re-samples a
categorical configuration, a DEAP mutation of an inactive gene leaves the recipe unchanged) is
not evaluated again: it is logged with ``repeat_of`` and the first result, and the engine is told
that result. Repeats are not evaluations, so they do not spend ``budget.evaluations``; an engine
that proposes as many repeats as the budget (a space it has exhausted) ends the run. A repeat of
a candidate still in flight waits for it.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.console import Steps, figure
from evomerge.fitness.responses import ResponseLog
from evomerge.fitness.results import EvalResult
from evomerge.search.engines import ENGINES, Candidate, Engine
from evomerge.search.pareto import add_to_front, best_index, pareto_front
from evomerge.search.progress import SearchProgress
from evomerge.search.run_folder import REPEAT_KEY, RunFolder, evaluated
from evomerge.search.space import SearchSpace, decode, dump_space

if TYPE_CHECKING:
    from evomerge.distributed.pool import Pool  # the interface the driver runs on (the layer above)

FinalEval = Callable[[dict], dict]


class SearchRunner:
    """One run of a space in a run folder (new or resumed)."""

    def __init__(self, space: SearchSpace, pool: Pool, run_dir: str | Path, *, resume: bool = False,
                 final_eval: FinalEval | None = None,
                 item_ids: Mapping[tuple[str, str], Sequence[str]] | None = None,
                 progress: bool = True):
        self.space, self.pool, self.final_eval = space, pool, final_eval
        self.folder = RunFolder(run_dir)
        if resume:
            self.folder.require_resumable()
        else:
            self.folder.create(dump_space(space))
        self.records = self.folder.read_evaluations(repair=True)
        self.engine: Engine = ENGINES.get(space.engine.name)(space, state_dir=self.folder.path)
        self.responses = ResponseLog(self.folder.path)
        for (task, split), ids in (item_ids or {}).items():
            self.responses.register_items(task, split, ids)
        self.show_progress = progress
        self.in_flight: dict[str, tuple[Candidate, dict]] = {}
        self.first: dict[str, dict[str, Any]] = {}  # recipe key -> its evaluated record
        self.waiting: dict[str, list[tuple[Candidate, dict]]] = {}  # recipe key -> repeats of one in flight
        for rec in evaluated(self.records):
            self.first.setdefault(recipe_key(rec["recipe"]), rec)
        self.front: list[tuple[list[float], dict[str, float]]] = []  # (objective values, metrics), non-dominated
        for rec in self.records:
            self._update_front(rec)
        self._elapsed_before = self.records[-1]["elapsed_s"] if self.records else 0.0
        self._start = time.perf_counter()

    # ---- bookkeeping -------------------------------------------------------------

    def elapsed_s(self) -> float:
        """Run wall time over every session (up to the last logged result of earlier ones)."""
        return self._elapsed_before + time.perf_counter() - self._start

    def values(self, record: dict[str, Any]) -> list[float] | None:
        if record["status"] != "ok":
            return None
        return self.space.record_values(record)

    def _catch_up(self) -> list[Candidate]:
        """Tell the engine logged results it missed; return in-flight candidates to re-submit."""
        told = self.engine.told()
        for rec in self.records:
            if rec["id"] not in told:
                self.engine.tell(rec["id"], self.values(rec))
        self.engine.checkpoint()
        logged = {rec["id"] for rec in self.records}
        return [c for c in self.engine.pending() if c.id not in logged]

    def _record(self, cand: Candidate, recipe: dict, result: EvalResult) -> dict[str, Any]:
        status, error, objectives = result.status, result.error, {}
        if status == "ok":
            try:
                values = self.space.objective_values(result.objectives)
                objectives = {o.name: v for o, v in zip(self.space.objectives, values)}
                violations = self.space.constraints.violations(result.objectives)
                if violations:
                    status, error = "failed", "infeasible: " + "; ".join(violations)
            except KeyError as exc:
                status, error = "failed", str(exc.args[0])
        record = {
            "id": cand.id, "status": status, "genome": cand.genome, "recipe": recipe,
            "objectives": objectives, "metrics": result.objectives, "wall_s": result.wall_s,
            "items": sum(len(r.items) for r in result.responses), "elapsed_s": self.elapsed_s(),
        }
        if result.estimates:
            record["estimates"] = [asdict(e) for e in result.estimates]
        if error is not None:
            record["error"] = error
        return record

    def _update_front(self, record: dict[str, Any]) -> None:
        values = self.values(record)
        if values is not None:
            self.front = add_to_front(self.front, values, record["metrics"], self.space.directions)

    def _finish(self, result: EvalResult, progress: SearchProgress | None) -> None:
        cand, recipe = self.in_flight.pop(result.id)
        record = self._record(cand, recipe, result)
        self.folder.append(record)
        self._update_front(record)
        for r in result.responses:
            self.responses.append(cand.id, r.task, r.split, r.items, r.correct)
        self.records.append(record)
        values = self.values(record)
        self.engine.tell(cand.id, values)
        self.engine.checkpoint()
        if progress is not None:
            progress.update(cand.id, record["status"], values[0] if values else None)
        key = recipe_key(recipe)
        self.first[key] = record
        for repeat, same in self.waiting.pop(key, []):
            self._repeat(repeat, same, record)

    def _repeat(self, cand: Candidate, recipe: dict, first: dict[str, Any]) -> None:
        """Log ``cand`` with the result of ``first`` (the same recipe) and tell the engine."""
        record = {
            "id": cand.id, "status": first["status"], "genome": cand.genome, "recipe": recipe,
            "objectives": first["objectives"], "metrics": first["metrics"], "wall_s": 0.0, "items": 0,
            "elapsed_s": self.elapsed_s(), REPEAT_KEY: first["id"],
        }
        if "error" in first:
            record["error"] = first["error"]
        self.folder.append(record)
        self.records.append(record)
        self.engine.tell(cand.id, self.values(record))
        self.engine.checkpoint()

    def _budget_left(self) -> bool:
        time_s = self.space.budget.time_s
        if time_s is not None and self.elapsed_s() >= time_s:
            return False
        evaluations, done = self.space.budget.evaluations, len(evaluated(self.records))
        repeats = len(self.records) - done + sum(map(len, self.waiting.values()))
        return repeats < evaluations and done + len(self.in_flight) < evaluations

    def _fill(self, resubmit: list[Candidate]) -> None:
        while len(self.in_flight) < self.pool.capacity and self._budget_left():
            cand = resubmit.pop(0) if resubmit else self.engine.ask()
            if cand is None:  # a generational engine waits for its batch
                return
            self.engine.checkpoint()
            recipe = decode(self.space, cand.genome)
            key = recipe_key(recipe)
            if key in self.first:
                self._repeat(cand, recipe, self.first[key])
            elif key in self.waiting or any(recipe_key(r) == key for _, r in self.in_flight.values()):
                self.waiting.setdefault(key, []).append((cand, recipe))
            else:
                self.in_flight[cand.id] = (cand, recipe)
                self.pool.submit(cand.id, recipe, [metrics for _, metrics in self.front])

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Search until the budget is spent; return (and write) the summary."""
        resubmit = self._catch_up()
        try:
            with self._progress() if self.show_progress else nullcontext() as progress:
                while True:
                    self._fill(resubmit)
                    if not self.in_flight:
                        break
                    for result in self.pool.results():
                        self._finish(result, progress)
                        self._fill(resubmit)
        except KeyboardInterrupt:
            self.folder.write_summary(self.summary(final=False))
            raise
        finally:
            self.responses.close()
        summary = self.summary(final=True)
        self.folder.write_summary(summary)
        return summary

    def _progress(self) -> SearchProgress:
        primary = self.space.objectives[0]
        done = evaluated(self.records)
        values = [v[0] for v in map(self.values, done) if v]
        return SearchProgress(self.space.budget.evaluations, len(done), objective=primary.name,
                              direction=primary.direction, values=values,
                              failures=sum(r["status"] != "ok" for r in done))

    # ---- the summary -------------------------------------------------------------

    def summary(self, final: bool = True) -> dict[str, Any]:
        """``summary.json``: best, Pareto front (re-evaluated on test when final), counts, wall time."""
        done = evaluated(self.records)
        ok = [r for r in done if r["status"] == "ok"]
        values = [self.values(r) for r in ok]
        directions = self.space.directions
        best = best_index(values, directions)
        front = pareto_front(values, directions) if len(directions) > 1 else ([best] if best is not None else [])
        members = list(dict.fromkeys(ok[i]["id"] for i in ([best] if best is not None else []) + front))
        by_id = {r["id"]: r for r in ok}
        tested: dict[str, dict[str, Any]] = {}
        retest = final and self.final_eval is not None
        with Steps("test split", len(members) if retest else 0, quiet=not self.show_progress) as steps:
            for cid in members:
                steps.begin(f"re-evaluating {cid}")
                tested[cid] = self._entry(by_id[cid], final)
                steps.advance()
        primary = [v[0] for v in values]
        return {
            "space": self.space.name,
            "engine": self.space.engine.name,
            "seed": self.space.seed,
            "complete": final,
            "best": tested[ok[best]["id"]] if best is not None else None,
            "pareto": [tested[ok[i]["id"]] for i in front],
            "evaluations": len(done),
            "failed": len(done) - len(ok),
            "repeats": len(self.records) - len(done),
            "item_evaluations": sum(r.get("items", 0) for r in done),
            "median": statistics.median(primary) if primary else None,
            "wall_s": self.elapsed_s(),
        }

    def _entry(self, record: dict[str, Any], final: bool) -> dict[str, Any]:
        entry = {k: record[k] for k in ("id", "recipe", "genome", "objectives", "estimates") if k in record}
        entry["full_test_accuracy"] = None
        if final and self.final_eval is not None:
            try:
                test = self.final_eval(record["recipe"])
                entry["test_metrics"] = test
                entry["full_test_accuracy"] = test.get("accuracy/mean")
            except Exception as exc:  # a failing re-evaluation is reported, not fatal
                entry["test_error"] = f"{type(exc).__name__}: {exc}"
        return entry


def describe(space: SearchSpace, entry: Mapping[str, Any]) -> str:
    """A summary entry's objectives by metric key, estimated accuracies with their stderr, accuracies
    with their test figure: ``accuracy/mean 0.7864 ± 0.0120 (test 0.7801), added_params 12,345``."""
    test = entry.get("test_metrics") or {}
    stderr = {e["task"]: e["stderr"] for e in entry.get("estimates", []) if e["stderr"] > 0}
    parts = []
    for o in space.objectives:
        text = f"{o.key} {figure(entry['objectives'][o.name])}"
        if o.metric == "accuracy" and o.task in stderr:
            text += f" ± {figure(stderr[o.task])}"
        if o.metric == "accuracy" and test.get(o.key) is not None:
            text += f" (test {figure(test[o.key])})"
        parts.append(text)
    return ", ".join(parts)


def recipe_key(recipe: Mapping[str, Any]) -> str:
    """A recipe's identity: its canonical JSON (equal recipes build equal candidates)."""
    return json.dumps(recipe, sort_keys=True)


def run_search(space: SearchSpace, pool: Pool, run_dir: str | Path, **kwargs: Any) -> dict[str, Any]:
    """Run (or with ``resume=True`` continue) a search; see :class:`SearchRunner`."""
    return SearchRunner(space, pool, run_dir, **kwargs).run()
