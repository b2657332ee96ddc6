"""The Recipe: a declarative, JSON-serializable description of one merged model; :func:`parse_recipe`
validates one through :data:`~evomerge.recipe.kind.RECIPE_KINDS` by its ``kind``.

The kinds built from the zoo (``layerwise`` and ``stack``, over Hugging Face decoders, are in
:mod:`evomerge.recipe.layerwise` and :mod:`evomerge.recipe.stack`):

* ``stitch`` — cross-architecture (seed 001, Algorithm 4): the ``trunk`` model runs up to each
  branch's ``source_layer``; an aligner maps that activation into the branch model's space at
  ``target_layer``; the branch model's tail runs on from there. The trunk's own tail and the
  branches' tails are joined in the union label space by routing coefficients (``weight``,
  one value or one per task key). Over Hugging Face causal LMs of one tokenizer a stitch is a view over
  the resident models whose next-token distributions are routed per position
  (:mod:`evomerge.recipe.stitch_view`).
* ``weights`` — weight-space merge of fine-tunes of one ``base`` (task arithmetic, TIES, DARE,
  TSV ...), optionally with MASS input-adaptive routing over the tasks' subspaces.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError, field_validator

from evomerge.core.merge import MERGE_METHODS, MergeParams
from evomerge.errors import ConfigError, UserError, config_error
from evomerge.recipe import layerwise, stack  # noqa: F401  (registration)
from evomerge.recipe.kind import RECIPE_KINDS, NoMergekitConfig, RecipeKind, Strict, _drop_nulls
from evomerge.recipe.layerwise import FILTERS, Cell
from evomerge.recipe.mass_view import MASS_NO_MERGEKIT, MassSpec, Routable
from evomerge.recipe.to_mergekit import task_vector_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from evomerge.core.probe import ActivationCache
    from evomerge.recipe.materialize import Materialized, Sources
    from evomerge.recipe.stitch_view import FitTexts
    from evomerge.recipe.stream import MergePlan


class AlignerSpec(Strict):
    name: str
    params: dict[str, Any] = {}
    center: Literal["condition", "global"] = "condition"

    _clean = field_validator("params", mode="before")(_drop_nulls)


class FitSpec(Strict):
    """Which items the aligner is fitted on, and how they are split into conditions.

    Over zoo models: ``conditioning`` ``none`` (one condition: the fit task), ``class`` (one condition
    per class of the fit task), ``transformation`` (one condition per task view in ``conditions``, e.g.
    ``[all, reverse]``); ``task`` defaults to the branch model's dataset with condition ``all``.
    Over Hugging Face sources (a view): the training items (``split: train``) of the space's tasks named in
    ``conditions`` (else ``task``, else every task), ``items`` split evenly over them; ``none`` pools them
    into one condition, ``task`` makes each task a condition (seed 001's task-conditioned alignment).
    """

    task: str | None = None
    conditioning: Literal["none", "class", "transformation", "task"] = "none"
    conditions: list[str] = []
    items: Annotated[int, Field(ge=16)] = 1000


class TuneSpec(Strict):
    """Stitch tuning: only the map trains on the task loss (``epochs = 0``: zero-shot).

    ``task`` defaults to the branch model's own training task, so the branch stays its specialist.
    """

    epochs: Annotated[int, Field(ge=0)] = 0
    lr: Annotated[float, Field(gt=0)] = 1e-3
    task: str | None = None


Weight = Union[Annotated[float, Field(ge=0)], dict[str, Annotated[float, Field(ge=0)]]]


class Branch(Strict):
    model: str
    source_layer: str
    target_layer: str
    aligner: AlignerSpec
    fit: FitSpec = FitSpec()
    tune: TuneSpec = TuneSpec()
    weight: Weight = 1.0


class GateSpec(Strict):
    """The learned router (``routing: learned``): a linear gate on the trunk's ``layer`` (default: the
    one before its head) and the paths' log-probabilities, fitted on ``items`` training items of
    ``task`` (default: the trunk's dataset, condition ``all``)."""

    layer: str | None = None
    task: str | None = None
    items: Annotated[int, Field(ge=16)] = 2000
    epochs: Annotated[int, Field(ge=1)] = 300


@RECIPE_KINDS.register("stitch")
class StitchRecipe(RecipeKind):
    kind: Literal["stitch"]
    as_view: ClassVar[bool] = True
    trunk: str
    trunk_weight: Weight = 1.0
    branches: Annotated[list[Branch], Field(min_length=1)]
    routing: Literal["mixture", "confidence", "learned"] = "mixture"
    gate: GateSpec = GateSpec()

    def model_refs(self) -> list[tuple[str, str]]:
        return [("trunk", self.trunk), *((f"branches[{i}].model", b.model) for i, b in enumerate(self.branches))]

    def mixing(self, task_key: str) -> dict[str, float]:
        """The routing weights for ``task_key``, summed per model."""
        from evomerge.recipe.merged import weight_for

        mixing = {self.trunk: weight_for(self.trunk_weight, task_key)}
        for br in self.branches:
            mixing[br.model] = mixing.get(br.model, 0.0) + weight_for(br.weight, task_key)
        return mixing

    def build(self, sources: Sources, cache: ActivationCache | None, skeleton: bool) -> Materialized:
        from evomerge.recipe.materialize import build_stitch

        return build_stitch(self, sources, cache, skeleton)

    def fit_tasks(self, fit: FitSpec, tasks: Sequence[str]) -> list[str]:
        """The tasks a view's fit reads: ``conditions``, else ``task``, else every task."""
        return list(fit.conditions) or ([fit.task] if fit.task else list(tasks))

    def check_sources(self, configs: Mapping[str, Mapping[str, Any]], source: str, prefix: str = "",
                      tasks: Sequence[str] = ()) -> None:  # fmt: skip
        """Over Hugging Face causal LMs: one vocabulary (the trunk's tokenizer reads for every model),
        layers that are blocks of their models, fit tasks of the space, conditioning ``none`` or ``task``,
        no stitch tuning (it runs on zoo models only)."""
        from evomerge.recipe.stitch_view import block_names

        def at(field: str) -> str:
            return ".".join(p for p in (prefix, field) if p)

        vocab = configs[self.trunk].get("vocab_size")
        checks = [(f"branches[{i}]", b) for i, b in enumerate(self.branches)]
        for where, br in checks:
            if configs[br.model].get("vocab_size") != vocab:
                raise ConfigError(source, at(f"{where}.model"), f"a model of the trunk's vocabulary ({vocab} tokens): "
                                  "a stitch of language models reads one tokenizer", br.model)
            for field, model, layer in (("source_layer", self.trunk, br.source_layer), ("target_layer", br.model, br.target_layer)):
                if layer not in (names := block_names(configs[model])):
                    raise ConfigError(source, at(f"{where}.{field}"), f"a block of '{model}' ({', '.join(names)})", layer)
            if br.fit.conditioning not in ("none", "task"):
                raise ConfigError(source, at(f"{where}.fit.conditioning"), "none or task over Hugging Face sources",
                                  br.fit.conditioning)
            for t in self.fit_tasks(br.fit, tasks):
                if t not in tasks:
                    raise ConfigError(source, at(f"{where}.fit"), "a task of the space with training items (split: train): "
                                  f"{', '.join(tasks) or 'none'}", t)
            if br.tune.epochs:
                raise ConfigError(source, at(f"{where}.tune.epochs"), "0: stitch tuning runs on zoo models only",
                                  br.tune.epochs)
        if self.gate.layer is not None and self.gate.layer not in (names := block_names(configs[self.trunk])):
            raise ConfigError(source, at("gate.layer"), f"a block of '{self.trunk}' ({', '.join(names)})", self.gate.layer)
        if self.gate.task is not None and self.gate.task not in tasks:
            raise ConfigError(source, at("gate.task"), "a task of the space with training items (split: train): "
                              f"{', '.join(tasks) or 'none'}", self.gate.task)

    def view(self, models: Mapping[str, nn.Module], fit: FitTexts | None = None) -> nn.Module:
        """The stitched causal LM over the resident ``models`` (:mod:`evomerge.recipe.stitch_view`),
        its maps and router fitted on ``fit``'s training texts."""
        from evomerge.recipe.stitch_view import stitch_view

        if fit is None:
            raise UserError("a stitch over Hugging Face sources is fitted on its tasks' training texts; none were given")
        return stitch_view(self, models, fit)

    def view_params(self, module: nn.Module) -> int:
        """The trunk, the maps, the branches' tails and the router (:meth:`~evomerge.recipe.stitch_view.StitchedLM.num_params`)."""
        return module.num_params()

    @property
    def single_model(self) -> bool:
        return False

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        raise UserError(f"{source}: a stitch runs models of different architectures side by side (a trunk, maps, "
                        "other models' tails, a router); no single Hugging Face model holds it, so it is not "
                        "merged into a folder: its figures are the run's (summary.json)")


@RECIPE_KINDS.register("weights")
class WeightsRecipe(Routable, RecipeKind):
    kind: Literal["weights"]
    tensorwise: ClassVar[bool] = True
    base: str
    models: Annotated[list[str], Field(min_length=1)]
    method: str
    params: dict[str, Any] = {}
    mass: MassSpec | None = None

    _clean = field_validator("params", mode="before")(_drop_nulls)

    def model_refs(self) -> list[tuple[str, str]]:
        return [("base", self.base), *((f"models[{i}]", m) for i, m in enumerate(self.models))]

    def build(self, sources: Sources, cache: ActivationCache | None, skeleton: bool) -> Materialized:
        from evomerge.recipe.materialize import build_weights

        return build_weights(self, sources)

    def resolver(self, layers: int) -> Callable[[str], MergeParams | None]:
        """The same parsed ``params`` for every tensor (a DARE seed defaults to the recipe's)."""
        m = MERGE_METHODS.get(self.method)
        parsed = m.parse({**({"seed": self.seed} if "seed" in m.Params.model_fields else {}), **self.params})
        return lambda name: parsed

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """``base + merge(tau_1..tau_T)`` by ``method``, tensor by tensor (:func:`~evomerge.recipe.stream.plan_recipe`)."""
        from evomerge.recipe.stream import plan_recipe

        self.check_static(source)
        return plan_recipe(self.method, self.base, self.models, self.resolver(0), None, out_dtype, compute_dtype,
                           keep_embeddings_from)

    def mergekit_config(self) -> dict[str, Any]:
        """One layer group whose filters all take ``params`` (:func:`~evomerge.recipe.to_mergekit.task_vector_config`)."""
        if self.routed:
            raise NoMergekitConfig(MASS_NO_MERGEKIT)
        parsed = MERGE_METHODS.get(self.method).parse(self.params)
        return task_vector_config(self.method, self.base, self.models, {Cell(0, f): parsed for f in FILTERS}, 1)


def parse_recipe(data: Any, source: str = "recipe", prefix: str = "") -> RecipeKind:
    """Validate a recipe dict as the kind its ``kind`` names; a ConfigError names ``source``, the field
    path under ``prefix`` and what was expected (an unknown kind: the registered kinds)."""
    if isinstance(data, RecipeKind):
        return data
    where = ".".join(p for p in (prefix, "kind") if p)
    if not isinstance(data, dict):
        raise ConfigError(source, prefix or "<root>", "a mapping of recipe fields", type(data).__name__)
    name = data.get("kind")
    if not isinstance(name, str) or name not in RECIPE_KINDS:
        raise ConfigError(source, where, f"a recipe kind ({', '.join(RECIPE_KINDS.names())})", name)
    try:
        return RECIPE_KINDS.get(name).model_validate(data)
    except ValidationError as exc:
        raise config_error(source, exc, prefix) from None
