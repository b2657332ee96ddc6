"""A run's candidate over Hugging Face sources, exported as a Hugging Face model folder.

The recipe names the space's models; :meth:`~evomerge.recipe.kind.RecipeKind.with_models` turns the
names into the sources' folders, and the recipe's streamed plan is executed into ``out`` as
``evomerge merge`` does. Beside the shards, config and tokenizer the folder holds ``recipe.json``
(the recipe over folders, which ``evomerge merge`` runs again), ``mergekit.yaml`` where mergekit can
build the merge (:meth:`~evomerge.recipe.kind.RecipeKind.mergekit_config`) and ``manifest.json``
(:class:`HFManifest`). All of them are written before the folder is renamed into place, so an
interrupted export leaves no folder that looks complete.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from evomerge.errors import ConfigError, UserError
from evomerge.recipe.export import library_versions, read_validated
from evomerge.recipe.kind import NoMergekitConfig, RecipeKind
from evomerge.recipe.stream import WriteOptions, execute
from evomerge.recipe.to_mergekit import DIFFERENCES
from evomerge.sources import HFSource
from evomerge.io.files import file_sha256

if TYPE_CHECKING:
    from evomerge.search.space import SearchSpace

HF_FORMAT = "evomerge-hf-export/1"
MANIFEST = "manifest.json"
Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class SourceFiles(BaseModel):
    """One source model: its name in the space, its folder, architecture and weight files' sha256."""

    name: str
    path: str
    architecture: str
    weights_sha256: dict[str, Sha256]


class HFManifest(BaseModel):
    """``manifest.json`` of an export over Hugging Face sources."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[HF_FORMAT]  # type: ignore[valid-type]
    candidate: str
    run: str
    space: str
    seed: int
    recipe: dict[str, Any]
    recipe_paths: dict[str, Any]
    backbone_only: bool
    sources: list[SourceFiles]
    fitness: dict[str, Any]
    mergekit: dict[str, Any]
    versions: dict[str, str]
    shards_sha256: dict[str, Sha256]


def uses_hf_sources(space: SearchSpace, recipe: RecipeKind) -> bool:
    """Whether ``recipe`` reads a model the space gives as a Hugging Face folder."""
    return any(isinstance(space.sources.get(m), HFSource) for _, m in recipe.model_refs())


def export_hf(space: SearchSpace, record: dict[str, Any], recipe: RecipeKind, run: Path, out: Path,
              options: WriteOptions) -> Path:  # fmt: skip
    """Merge the candidate ``record`` (its recipe parsed: ``recipe``) of the run in ``run`` into ``out``;
    see the module docstring."""
    sources: dict[str, HFSource] = {}
    for path, name in recipe.model_refs():
        source = space.sources.get(name)
        if not isinstance(source, HFSource):
            raise ConfigError(space.source, f"recipe.{path}", "a model given as a Hugging Face folder (source: hf) "
                              "in a recipe over Hugging Face sources", name)
        sources[name] = source
    paths = recipe.with_models({n: str(s.path) for n, s in sources.items()}, space.source)
    keep = paths.model_refs()[0][1] if space.backbone_only else None
    plan = paths.plan(space.source, options.dtype, options.compute_dtype, keep)
    paths_json = paths.model_dump(mode="json")
    plan.extra_files["recipe.json"] = json.dumps(paths_json, indent=2) + "\n"
    mergekit = _mergekit(paths, space.backbone_only)
    if "yaml" in mergekit:
        plan.extra_files["mergekit.yaml"] = mergekit.pop("yaml")
    manifest = {
        "format": HF_FORMAT, "candidate": record["id"], "run": str(run.resolve()), "space": space.name,
        "seed": space.seed, "recipe": recipe.model_dump(mode="json"), "recipe_paths": paths_json,
        "backbone_only": space.backbone_only, "fitness": {k: record.get(k) for k in ("objectives", "test_metrics", "full_test_accuracy")},
        "mergekit": mergekit, "versions": library_versions(),
    }  # fmt: skip

    def finish(folder: Path) -> None:  # hashing inside the merge's folder: a taken --out fails before any of it
        manifest["sources"] = [{"name": n, "path": str(s.path), "architecture": s.architecture,
                                "weights_sha256": {f.name: file_sha256(f) for f in s.tensors().files}}
                               for n, s in sources.items()]  # fmt: skip
        manifest["shards_sha256"] = {f.name: file_sha256(f) for f in sorted(folder.glob("*.safetensors"))}
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")

    return execute(plan, out, options.max_shard_bytes, options.device, options.progress, finish)


def _mergekit(recipe: RecipeKind, backbone_only: bool) -> dict[str, Any]:
    """``{file, differences, yaml}`` of the equivalent mergekit config, or ``{file: None, reason}``."""
    if backbone_only:
        return {"file": None, "reason": "a backbone-only merge keeps the base's embeddings and LM head; mergekit "
                                        "merges them (or stops on their vocabularies)"}
    try:
        config = recipe.mergekit_config()
    except NoMergekitConfig as exc:
        return {"file": None, "reason": str(exc)}
    differences = DIFFERENCES.get(config["merge_method"])
    header = ["# mergekit-yaml mergekit.yaml OUT: this export's merge with mergekit's semantics (written by evomerge export)"]
    header += [f"# differs from evomerge: {differences}"] if differences else ["# the same tensors as evomerge's (float32)"]
    return {"file": "mergekit.yaml", "differences": differences,
            "yaml": "\n".join(header) + "\n" + yaml.safe_dump(config, sort_keys=False)}


def read_hf_manifest(folder: str | Path) -> HFManifest | None:
    """The folder's manifest when it is an export over Hugging Face sources, else None."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        fmt = json.loads(path.read_text()).get("format")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return None
    return read_validated(HFManifest, path, "an evomerge export manifest") if fmt == HF_FORMAT else None


def verify_shards(folder: str | Path, manifest: HFManifest) -> None:
    """Every weight shard the manifest lists is there with the sha256 it recorded, and no other; a
    UserError names the first that differs."""
    folder = Path(folder)
    present = {f.name for f in folder.glob("*.safetensors")}
    if extra := sorted(present - set(manifest.shards_sha256)):
        raise UserError(f"{folder / extra[0]}: a weight shard {folder / MANIFEST} does not list")
    for name, recorded in manifest.shards_sha256.items():
        if name not in present:
            raise UserError(f"{folder / name}: missing (listed in {folder / MANIFEST})")
        if (actual := file_sha256(folder / name)) != recorded:
            raise UserError(f"{folder / name}: sha256 {actual} differs from the {recorded} {folder / MANIFEST} "
                            "records: the weights were changed after export")
