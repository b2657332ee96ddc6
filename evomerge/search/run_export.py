"""A run's candidate exported: the run folder's side of :mod:`evomerge.recipe.export` (zoo models)
and of :mod:`evomerge.search.hf_export` (Hugging Face sources)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evomerge.errors import UserError, read_json
from evomerge.recipe.export import recipe_models, save_export
from evomerge.recipe.materialize import materialize
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stream import WriteOptions
from evomerge.search.hf_export import export_hf, uses_hf_sources
from evomerge.search.run_folder import RunFolder, evaluated
from evomerge.zoo.catalog import Zoo


def find_candidate(folder: RunFolder, candidate: str = "best") -> dict[str, Any]:
    """The candidate's record: ``best`` (from summary.json) or an id (from evaluations.jsonl)."""
    summary = read_json(folder.summary_path) if folder.summary_path.exists() else {}
    front = {c["id"]: c for c in [summary.get("best") or {}, *summary.get("pareto", [])] if c}
    if candidate == "best":
        if not summary.get("best"):
            raise UserError(f"{folder.summary_path}: no best candidate recorded (is the run finished?)")
        return summary["best"]
    if candidate in front:
        return front[candidate]
    rows = [r for r in folder.read_evaluations() if r.get("id") == candidate]
    if not rows:
        raise UserError(f"{folder.evaluations_path}: no candidate '{candidate}'")
    if rows[-1].get("status") != "ok":
        raise UserError(f"{folder.evaluations_path}: candidate '{candidate}' failed ({rows[-1].get('error')}); nothing to export")
    return rows[-1]


def best_single_model(folder: RunFolder, space: Any) -> str | None:
    """The id of the run's best evaluated candidate (by the space's first objective) that is one model
    (:attr:`~evomerge.recipe.kind.RecipeKind.single_model`), or None."""
    objective = space.objectives[0]
    sign = 1 if objective.direction == "max" else -1
    rows = [r for r in evaluated(folder.read_evaluations()) if r.get("status") == "ok" and objective.name in r.get("objectives", {})
            and parse_recipe(r["recipe"], str(folder.evaluations_path), "recipe").single_model]
    return max(rows, key=lambda r: sign * r["objectives"][objective.name])["id"] if rows else None


def export_candidate(run_dir: str | Path, out: str | Path, candidate: str = "best", options: WriteOptions = WriteOptions()) -> Path:
    """Write a run's candidate as a model folder: merged from its Hugging Face sources (written as
    ``options`` say), or materialized from the zoo."""
    run_dir, out = Path(run_dir), Path(out)
    folder = RunFolder(run_dir)
    space = folder.load_space()
    record = find_candidate(folder, candidate)
    recipe = parse_recipe(record["recipe"], f"{folder.path} (candidate {record.get('id')})", "recipe")
    if uses_hf_sources(space, recipe):
        if not recipe.single_model:
            try:
                recipe.plan(f"{folder.path} (candidate {record.get('id')})", None, options.compute_dtype, None)
            except UserError as err:
                alt = best_single_model(folder, space)
                hint = f"; the run's best candidate that is one model is {alt} (evomerge export {run_dir} --candidate {alt})"
                raise UserError(f"{err}{hint if alt else ''}") from None
        return export_hf(space, record, recipe, run_dir, out, options)
    zoo = Zoo(seed=space.zoo.seed)
    ids = recipe_models(record["recipe"])
    zoo.build(workers=1, ids=ids, progress=True)
    built = materialize(record["recipe"], zoo)
    tasks = {t.name: f"{t.dataset}/{t.condition}" for t in space.tasks}
    manifest = {
        "candidate": record["id"],
        "run": str(run_dir.resolve()),
        "space": space.name,
        "seed": space.seed,
        "sources": [{"id": i, "sha256": zoo.record(i)["sha256"], "weights": zoo.weights_path(i).name,
                     "test_accuracy": zoo.record(i)["test_accuracy"]} for i in ids],
        "fitness": {"objectives": record.get("objectives"), "full_test_accuracy": record.get("full_test_accuracy"),
                    "test_metrics": record.get("test_metrics")},
    }
    return save_export(out, built, record["recipe"], {i: zoo.spec(i) for i in ids}, space.zoo.seed, tasks, manifest)
