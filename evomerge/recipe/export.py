"""Export a run's candidate as a self-contained model folder, and load it back.

Folder layout::

    model.safetensors   every tensor the merged model uses (sources' layers, maps, gate, heads)
    config.json         format, recipe, the source architectures, tasks, data seed: enough to rebuild
    manifest.json       provenance: sources with the sha256 of their trained weights, the recipe,
                        fitness figures, evomerge and library versions, seed, sha256 of the weights

Loading rebuilds the module's structure from bare architectures by materializing the recipe in
skeleton mode (no trained weights, no data), then loads ``model.safetensors`` strictly; a MASS
merge stores its base, task vectors and heads and is rebuilt from them. Loading checks the folder
against its manifest first: the weights' and the config's sha256 and the recipe must be the ones
recorded at export; a folder without a manifest loads with an :class:`ExportWarning`.
"""

from __future__ import annotations

import json
import platform
import warnings
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from evomerge import __version__
from evomerge.errors import ConfigError, UserError, config_error, read_json
from evomerge.recipe.materialize import Materialized, build_mass, materialize
from evomerge.recipe.merged import MassMerge
from evomerge.recipe.schema import WeightsRecipe, parse_recipe
from evomerge.settings import Seed
from evomerge.zoo.adapter import LayeredAdapter
from evomerge.io.files import file_sha256
from evomerge.zoo.catalog import Zoo, new_net
from evomerge.zoo.specs import ModelSpec, default_specs

FORMAT = "evomerge-export/1"
LIBRARIES = ("torch", "numpy", "scipy", "pot", "optuna", "deap", "ray", "transformers", "safetensors", "pydantic", "mergekit")


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
    return [model for _, model in parse_recipe(recipe).model_refs()]


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    if isinstance(module, MassMerge):
        m = module.mass
        out |= {f"mass_parts.base.{k}": v.clone().contiguous() for k, v in m.base.items()}
        for t, (tau, head) in enumerate(zip(m.taus, m.heads)):
            out |= {f"mass_parts.tau.{t}.{k}": v.clone().contiguous() for k, v in tau.items()}
            out |= {f"mass_parts.head.{t}.{k}": v.clone().contiguous() for k, v in head.items()}
    return out


def library_versions() -> dict[str, str]:
    """evomerge's, Python's and the installed libraries' versions."""
    found = {"evomerge": __version__, "python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            found[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            continue
    return found


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
        "config_sha256": file_sha256(out / "config.json"),
        "versions": library_versions(),
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


class ExportWarning(UserWarning):
    """An export that loads but cannot be checked (no manifest)."""


Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class ExportConfig(BaseModel):
    """``config.json``: what rebuilding the model needs."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[FORMAT]  # type: ignore[valid-type]
    recipe: dict[str, Any]
    sources: dict[str, ModelSpec]
    zoo_seed: Seed
    tasks: dict[str, str]


class SourceRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: str
    sha256: Sha256 | None = None


class Manifest(BaseModel):
    """The fields of ``manifest.json`` that loading and ``evaluate`` check (others are kept as written)."""

    model_config = ConfigDict(extra="allow")

    format: Literal[FORMAT]  # type: ignore[valid-type]
    recipe: dict[str, Any]
    zoo_seed: Seed
    weights_sha256: Sha256
    config_sha256: Sha256 | None = None
    sources: list[SourceRecord] = []
    fitness: dict[str, Any] = {}


def read_validated(model: type[BaseModel], path: Path, what: str) -> Any:
    """``path``'s JSON as ``model``; anything else is a ConfigError naming the file and field."""
    data = read_json(path, what)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise config_error(str(path), exc) from None


def _first_difference(a: Any, b: Any, path: str) -> tuple[str, Any, Any] | None:
    """The first field path where two JSON values differ, with both values there."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            found = _first_difference(a.get(k), b.get(k), f"{path}.{k}")
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return next((d for i, (x, y) in enumerate(zip(a, b)) if (d := _first_difference(x, y, f"{path}[{i}]"))), None)
    return None if a == b else (path, a, b)


def read_manifest(path: str | Path) -> Manifest | None:
    """The export's validated ``manifest.json``, or None when it has none."""
    manifest_path = Path(path) / "manifest.json"
    if not manifest_path.exists():
        return None
    return read_validated(Manifest, manifest_path, "an evomerge export manifest")


def verify_export(path: str | Path) -> tuple[ExportConfig, dict[str, torch.Tensor], Manifest | None]:
    """Read an export's config, weights and manifest, and check them against each other.

    Every problem is a :class:`UserError` naming the file: unreadable or invalid files, weights that
    are not a complete safetensors file, weights or config whose sha256 or recipe differ from what the
    manifest recorded at export. Without a manifest nothing can be checked: an :class:`ExportWarning`.
    """
    path = Path(path)
    cfg_path, weights, manifest_path = path / "config.json", path / "model.safetensors", path / "manifest.json"
    if not cfg_path.exists() or not weights.exists():
        raise UserError(f"{path}: not an evomerge export (needs config.json and model.safetensors)")
    config = read_validated(ExportConfig, cfg_path, "an evomerge export config")
    recipe = parse_recipe(config.recipe, str(cfg_path), "recipe").model_dump(mode="json")
    try:
        tensors = load_file(str(weights))
    except (SafetensorError, OSError) as exc:
        raise UserError(f"{weights}: not a complete safetensors file ({exc}); the export is damaged") from None
    manifest = read_manifest(path)
    if manifest is None:
        warnings.warn(f"{path}: no manifest.json, so the weights, the recipe and the accuracy cannot be checked "
                      "against the export's record", ExportWarning, stacklevel=2)
        return config, tensors, None
    if (actual := file_sha256(weights)) != manifest.weights_sha256:
        raise UserError(f"{weights}: sha256 {actual} differs from {manifest_path}'s weights_sha256 "
                        f"{manifest.weights_sha256}: the weights were changed after export")
    recorded = parse_recipe(manifest.recipe, str(manifest_path), "recipe").model_dump(mode="json")
    if diff := _first_difference(recipe, recorded, "recipe"):
        field, now, then = diff
        raise ConfigError(str(cfg_path), field, f"{then!r} as {manifest_path} records (one of the two was edited after export)", now)
    if config.zoo_seed != manifest.zoo_seed:
        raise ConfigError(str(cfg_path), "zoo_seed", f"{manifest.zoo_seed} as {manifest_path} records", config.zoo_seed)
    if manifest.config_sha256 is not None and (actual := file_sha256(cfg_path)) != manifest.config_sha256:
        raise UserError(f"{cfg_path}: sha256 {actual} differs from {manifest_path}'s config_sha256 "
                        f"{manifest.config_sha256}: the config was changed after export")
    return config, tensors, manifest


def check_sources(config: ExportConfig, manifest: Manifest, zoo_root: Path | None = None) -> tuple[list[str], list[str]]:
    """Compare the manifest's source hashes with the local zoo's trained weights where those are built.

    Returns the mismatches (messages) and the ids that could not be checked (not built here)."""
    specs = {s.id: s for s in default_specs()} | config.sources
    try:
        zoo = Zoo(seed=config.zoo_seed, cache_dir_=zoo_root, specs=list(specs.values()))
    except UserError:  # a source's base model is unknown here: nothing to compare with
        return [], [s.id for s in manifest.sources]
    mismatches, unchecked = [], []
    for source in manifest.sources:
        if source.sha256 is None or source.id not in config.sources or not zoo.is_built(source.id):
            unchecked.append(source.id)
        elif (actual := file_sha256(zoo.weights_path(source.id))) != source.sha256:
            mismatches.append(f"source {source.id}: the zoo's {zoo.weights_path(source.id)} has sha256 {actual}, "
                              f"the manifest records {source.sha256} (the sources were trained differently here)")
    return mismatches, unchecked


def load_exported(path: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild an exported merged model (eval mode) and return it with its config.

    The folder is checked first (:func:`verify_export`): a damaged or tampered export is a
    :class:`UserError` naming the file; one without a manifest loads with an :class:`ExportWarning`."""
    path = Path(path)
    config, tensors, _ = verify_export(path)
    sources = SkeletonSources(config.sources, config.zoo_seed)
    try:
        built = materialize(config.recipe, sources, skeleton=True)
    except (KeyError, ValueError) as exc:
        raise UserError(f"{path / 'config.json'}: the recipe cannot be rebuilt ({exc})") from None
    module = built.module
    if isinstance(module, MassMerge):
        recipe = parse_recipe(config.recipe)
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
        raise UserError(f"{path / 'model.safetensors'}: weights do not fit the rebuilt model: {exc}") from None
    return module.eval(), config.model_dump(mode="json")
