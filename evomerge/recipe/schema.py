"""The Recipe: a declarative, JSON-serializable description of one merged model; :func:`parse_recipe`
validates one through :data:`~evomerge.recipe.kind.RECIPE_KINDS` by its ``kind``.

The kinds built from the zoo (``layerwise`` and ``stack``, over Hugging Face decoders, are in
:mod:`evomerge.recipe.layerwise` and :mod:`evomerge.recipe.stack`):

* ``stitch`` — cross-architecture (seed 001, Algorithm 4): the ``trunk`` model runs up to each
  branch's ``source_layer``; an aligner maps that activation into the branch model's space at
  ``target_layer``; the branch model's tail runs on from there. The trunk's own tail and the
  branches' tails are joined in the union label space by routing coefficients (``weight``,
  one value or one per task key).
* ``weights`` — weight-space merge of fine-tunes of one ``base`` (task arithmetic, TIES, DARE,
  TSV ...), optionally with MASS input-adaptive routing over the tasks' subspaces.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, Union

from pydantic import Field, ValidationError, field_validator

from evomerge.core.merge import MERGE_METHODS, MergeParams
from evomerge.errors import ConfigError, config_error
from evomerge.recipe import layerwise, stack  # noqa: F401  (registration)
from evomerge.recipe.kind import RECIPE_KINDS, NoMergekitConfig, RecipeKind, Strict, _drop_nulls
from evomerge.recipe.layerwise import FILTERS, Cell
from evomerge.recipe.to_mergekit import task_vector_config

if TYPE_CHECKING:
    import torch

    from evomerge.core.probe import ActivationCache
    from evomerge.recipe.materialize import Materialized, Sources
    from evomerge.recipe.stream import MergePlan


class AlignerSpec(Strict):
    name: str
    params: dict[str, Any] = {}
    center: Literal["condition", "global"] = "condition"

    _clean = field_validator("params", mode="before")(_drop_nulls)


class FitSpec(Strict):
    """Which items the aligner is fitted on, and how they are split into conditions.

    ``conditioning``: ``none`` (one condition: the fit task), ``class`` (one condition per class
    of the fit task), ``transformation`` (one condition per task view in ``conditions``, e.g.
    ``[all, reverse]``). ``task`` defaults to the branch model's dataset with condition ``all``.
    """

    task: str | None = None
    conditioning: Literal["none", "class", "transformation"] = "none"
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
class MassSpec(Strict):
    """MASS routing (Crisostomi et al. 2025) over the tasks' subspaces at the Linear ``layer``.

    Uses the recipe's TSV ``rank``/``alpha`` for its second pass; ``enabled: false`` is a static merge."""

    enabled: bool = False
    layer: str
    route_rank: Annotated[int, Field(ge=1)] = 4
    top_k: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(gt=0)] = 0.05
    threshold: float | None = None


@RECIPE_KINDS.register("weights")
class WeightsRecipe(RecipeKind):
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

    @property
    def in_place(self) -> bool:
        """Over model sources every floating tensor merges with ``params``; MASS routing needs a module of its own."""
        return self.mass is None or not self.mass.enabled

    def resolver(self, layers: int) -> Callable[[str], MergeParams | None]:
        """The same parsed ``params`` for every tensor (a DARE seed defaults to the recipe's)."""
        m = MERGE_METHODS.get(self.method)
        parsed = m.parse({**({"seed": self.seed} if "seed" in m.Params.model_fields else {}), **self.params})
        return lambda name: parsed

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """``base + merge(tau_1..tau_T)`` by ``method``, tensor by tensor (:func:`~evomerge.recipe.stream.plan_recipe`)."""
        from evomerge.recipe.stream import plan_recipe

        if not self.in_place:
            raise ConfigError(source, "mass", "no MASS routing (it needs the whole model resident; export the run instead)")
        return plan_recipe(self.method, self.base, self.models, self.resolver(0), None, out_dtype, compute_dtype,
                           keep_embeddings_from)

    def mergekit_config(self) -> dict[str, Any]:
        """One layer group whose filters all take ``params`` (:func:`~evomerge.recipe.to_mergekit.task_vector_config`)."""
        if self.mass is not None and self.mass.enabled:
            raise NoMergekitConfig("MASS routing chooses a merge per input; mergekit writes one static model")
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
