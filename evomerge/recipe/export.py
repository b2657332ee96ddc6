"""Export a run's candidate as a self-contained model folder, and load it back.

Folder layout::

    model.safetensors   every tensor the merged model uses (sources' layers, maps, gate, heads)
    config.json         format, recipe, the source architectures, tasks, data seed: enough to rebuild
    manifest.json       provenance: sources with the sha256 of their trained weights, the recipe,
                        fitness figures, evomerge and library versions, seed, sha256 of the weights

Loading rebuilds the module's structure from bare architectures by materializing the recipe in
skeleton mode (no trained weights, no data), then loads ``model.safetensors`` strictly; a MASS
merge stores its base, task vectors and heads and is rebuilt from them.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from evomerge import __version__
from evomerge.errors import UserError
from evomerge.recipe.materialize import Materialized, build_mass, materialize
from evomerge.recipe.merged import MassMerge
from evomerge.recipe.schema import WeightsRecipe, parse_recipe
from evomerge.search.run_folder import RunFolder, read_json
from evomerge.zoo.adapter import LayeredAdapter
from evomerge.zoo.catalog import Zoo, file_sha256, new_net
from evomerge.zoo.specs import ModelSpec

FORMAT = "evomerge-export/1"
LIBRARIES = ("torch", "numpy", "scipy", "pot", "optuna", "deap", "ray", "transformers", "safetensors", "pydantic")


class SkeletonSources:
    """Source models as bare architectures (untrained): the structure to load exported weights into."""

    def __init__(self, specs: dict[str, ModelSpec], seed: int):
        self.specs, self.seed = specs, seed
        self._adapters: dict[str, LayeredAdapter] = {}

    def spec(self, model_id: str) -> ModelSpec:
        return self.specs[model_id]

    def adapter(self, model_id: str) -> LayeredAdapter:
        if model_id not in self._adapters:
            net = new_net(self.specs[model_id], 0).eval().requires_grad_(False)
            self._adapters[model_id] = LayeredAdapter(net)
        return self._adapters[model_id]


def recipe_models(recipe: Any) -> list[str]:
    """Zoo ids a recipe uses."""
    r = parse_recipe(recipe)
    if isinstance(r, WeightsRecipe):
        return [r.base, *r.models]
    return [r.trunk, *(b.model for b in r.branches)]


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    if isinstance(module, MassMerge):
        m = module.mass
        out |= {f"mass_parts.base.{k}": v.clone().contiguous() for k, v in m.base.items()}
        for t, (tau, head) in enumerate(zip(m.taus, m.heads)):
            out |= {f"mass_parts.tau.{t}.{k}": v.clone().contiguous() for k, v in tau.items()}
            out |= {f"mass_parts.head.{t}.{k}": v.clone().contiguous() for k, v in head.items()}
    return out


def _versions() -> dict[str, str]:
    found = {"evomerge": __version__, "python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return found


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


def export_candidate(run_dir: str | Path, out: str | Path, candidate: str = "best") -> Path:
    """Materialize a run's candidate from the zoo and write it as a model folder."""
    run_dir, out = Path(run_dir), Path(out)
    folder = RunFolder(run_dir)
    space = folder.load_space()
    record = find_candidate(folder, candidate)
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


def save_export(
    out: Path,
    built: Materialized,
    recipe: Any,
    specs: dict[str, ModelSpec],
    zoo_seed: int,
    tasks: dict[str, str],
    manifest: dict[str, Any],
) -> Path:
    """Write ``model.safetensors``, ``config.json`` and ``manifest.json`` (``manifest`` adds provenance)."""
    out.mkdir(parents=True, exist_ok=True)
    weights = out / "model.safetensors"
    save_file(_tensors(built.module), str(weights))
    recipe = parse_recipe(recipe).model_dump(mode="json")
    config = {
        "format": FORMAT,
        "recipe": recipe,
        "sources": {i: s.model_dump() for i, s in specs.items()},
        "zoo_seed": zoo_seed,
        "tasks": tasks,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    manifest = {
        "format": FORMAT,
        **manifest,
        "zoo_seed": zoo_seed,
        "recipe": recipe,
        "params": built.params,
        "added_params": built.added_params,
        "weights_sha256": file_sha256(weights),
        "versions": _versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported merged model (eval mode) and return it with its config."""
    path = Path(path)
    cfg_path, weights = path / "config.json", path / "model.safetensors"
    if not cfg_path.exists() or not weights.exists():
        raise UserError(f"{path}: not an evomerge export (needs config.json and model.safetensors)")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != FORMAT:
        raise UserError(f"{cfg_path}: field 'format': expected '{FORMAT}', got {config.get('format')!r}")
    sources = SkeletonSources({i: ModelSpec(**s) for i, s in config["sources"].items()}, config["zoo_seed"])
    built = materialize(config["recipe"], sources, skeleton=True)
    tensors = load_file(str(weights))
    module = built.module
    if isinstance(module, MassMerge):
        recipe = parse_recipe(config["recipe"])
        assert isinstance(recipe, WeightsRecipe)
        n = len(module.tasks)

        def part(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        taus = [part(f"mass_parts.tau.{t}.") for t in range(n)]
        heads = [part(f"mass_parts.head.{t}.") for t in range(n)]
        module = MassMerge(build_mass(module.mass.module, part("mass_parts.base."), taus, heads, recipe), module.tasks)
        tensors = {k: v for k, v in tensors.items() if not k.startswith("mass_parts.")}
    try:
        module.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise UserError(f"{weights}: weights do not fit the rebuilt model: {exc}") from None
    return module.eval(), config
