"""The Recipe: a declarative, JSON-serializable description of one merged model built from the zoo.

Two kinds, told apart by ``kind``:

* ``stitch`` — cross-architecture (seed 001, Algorithm 4): the ``trunk`` model runs up to each
  branch's ``source_layer``; an aligner maps that activation into the branch model's space at
  ``target_layer``; the branch model's tail runs on from there. The trunk's own tail and the
  branches' tails are joined in the union label space by routing coefficients (``weight``,
  one value or one per task key).
* ``weights`` — weight-space merge of fine-tunes of one ``base`` (task arithmetic, TIES, DARE,
  TSV ...), optionally with MASS input-adaptive routing over the tasks' subspaces.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, TypeAdapter, ValidationError, field_validator, model_validator

from evomerge import settings
from evomerge.errors import config_error
from evomerge.settings import Seed


class Strict(settings.Strict):
    """A settings record in which a null field takes its default (inactive conditional genes decode to null)."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_defaults(cls, data: Any) -> Any:
        return _drop_nulls(data) if isinstance(data, dict) else data


def _drop_nulls(params: dict[str, Any] | None) -> dict[str, Any]:
    """Inactive conditional genes decode to null: a null parameter means 'use the default'."""
    return {k: v for k, v in (params or {}).items() if v is not None}


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


class StitchRecipe(Strict):
    kind: Literal["stitch"]
    trunk: str
    trunk_weight: Weight = 1.0
    branches: Annotated[list[Branch], Field(min_length=1)]
    routing: Literal["mixture", "confidence", "learned"] = "mixture"
    gate: GateSpec = GateSpec()
    seed: Seed = 0


class MassSpec(Strict):
    """MASS routing (Crisostomi et al. 2025) over the tasks' subspaces at the Linear ``layer``.

    Uses the recipe's TSV ``rank``/``alpha`` for its second pass; ``enabled: false`` is a static merge."""

    enabled: bool = False
    layer: str
    route_rank: Annotated[int, Field(ge=1)] = 4
    top_k: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(gt=0)] = 0.05
    threshold: float | None = None


class WeightsRecipe(Strict):
    kind: Literal["weights"]
    base: str
    models: Annotated[list[str], Field(min_length=1)]
    method: str
    params: dict[str, Any] = {}
    mass: MassSpec | None = None
    seed: Seed = 0

    _clean = field_validator("params", mode="before")(_drop_nulls)


Recipe = Annotated[Union[StitchRecipe, WeightsRecipe], Field(discriminator="kind")]
_ADAPTER: TypeAdapter[StitchRecipe | WeightsRecipe] = TypeAdapter(Recipe)
RECIPE_KINDS = ("stitch", "weights")
#: The recipe union's tag, for error messages.
TAGS = {"kind": ("a recipe kind", RECIPE_KINDS)}


def parse_recipe(data: Any, source: str = "recipe", prefix: str = "") -> StitchRecipe | WeightsRecipe:
    """Validate a recipe dict; a ConfigError names ``source``, the field path under ``prefix`` and what was expected."""
    if isinstance(data, (StitchRecipe, WeightsRecipe)):
        return data
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise config_error(source, exc, prefix, TAGS) from None


def model_refs(recipe: StitchRecipe | WeightsRecipe) -> list[tuple[str, str]]:
    """Every zoo model id the recipe names, with its field path: ``[("trunk", id), ("branches[0].model", id)]``."""
    if isinstance(recipe, WeightsRecipe):
        return [("base", recipe.base), *((f"models[{i}]", m) for i, m in enumerate(recipe.models))]
    return [("trunk", recipe.trunk), *((f"branches[{i}].model", b.model) for i, b in enumerate(recipe.branches))]
