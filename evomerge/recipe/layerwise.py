"""Layer-wise weight merges of decoders of one family: one merge method, its parameters given per
layer group x tensor filter.

This is the shape of mergekit-evolve's genotype (``mergekit/evo/genome.py``: layer groups x models x
filters x parameters; read, not copied). The decoder's ``L`` layers fall into ``G`` groups of
consecutive layers, layer ``i`` into group ``floor(i G / L)`` (mergekit's ``layer_granularity = L / G``
when ``G`` divides ``L``). Inside a layer a tensor belongs to the filter ``attention`` (its module
path starts with ``self_attn``, ``attn``, ``attention`` or ``self_attention``), ``mlp`` (``mlp``,
``feed_forward``, ``ffn``, ``block_sparse_moe``) or ``rest`` (norms and anything else). Tensors
outside the repeated layers are ``rest`` of the first group when their name holds ``embed`` and of
the last group otherwise (final norm, LM head): mergekit's planner merges them with the first and
the last slice's parameters.

Each cell ``(group, filter)`` holds the method's parameters (``density``, ``lam``, per-task
``weights``, a TSV ``rank`` ...; per-model values are the lists the method takes); ``params`` gives
defaults shared by every cell. A cell left out keeps its tensors at the base.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Annotated, Any, ClassVar, Literal, NamedTuple

import torch
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from evomerge.core.merge import MERGE_METHODS, MergeParams
from evomerge.errors import ConfigError, FieldIssue, UserError, config_error
from evomerge.io.tensors import TensorSource
from evomerge.recipe.kind import RECIPE_KINDS, RecipeKind, Strict, _drop_nulls
from evomerge.recipe.stream import LAYER, MergePlan, plan_recipe

Filter = Literal["attention", "mlp", "rest"]
FILTERS: tuple[Filter, ...] = ("attention", "mlp", "rest")
ATTENTION = frozenset({"self_attn", "attn", "attention", "self_attention"})
MLP = frozenset({"mlp", "feed_forward", "ffn", "block_sparse_moe"})


class Cell(NamedTuple):
    group: int
    filter: Filter


def num_layers(names: Iterable[str]) -> int:
    """How many repeated layers the tensor ``names`` span (highest layer index + 1; 0 when none)."""
    return max((int(m["index"]) + 1 for n in names if (m := LAYER.match(n))), default=0)


def tensor_cell(name: str, layers: int, groups: int) -> Cell:
    """The (layer group, filter) of tensor ``name`` in a decoder of ``layers`` layers cut into ``groups``.

    ``model.layers.3.self_attn.q_proj.weight`` with 4 layers in 2 groups is ``Cell(1, "attention")``.
    """
    m = LAYER.match(name)
    if m is None:
        return Cell(0 if "embed" in name else groups - 1, "rest")
    index = int(m["index"])
    if index >= layers:
        raise UserError(f"tensor '{name}': layer {index} of a model with {layers} layers")
    head = m["rest"].split(".", 1)[0]
    return Cell(index * groups // layers, "attention" if head in ATTENTION else "mlp" if head in MLP else "rest")


class LayerGroup(Strict):
    """One layer group's parameters per filter (None: that filter's tensors keep the base)."""

    attention: dict[str, Any] | None = None
    mlp: dict[str, Any] | None = None
    rest: dict[str, Any] | None = None

    _clean = field_validator(*FILTERS, mode="before")(_drop_nulls)


@RECIPE_KINDS.register("layerwise")
class LayerwiseRecipe(RecipeKind):
    """``method`` over fine-tunes ``models`` of ``base``, parameters per layer group x filter."""

    kind: Literal["layerwise"] = "layerwise"
    base: str
    models: Annotated[list[str], Field(min_length=1)]
    method: str
    groups: Annotated[list[LayerGroup], Field(min_length=1)]
    params: dict[str, Any] = {}
    in_place: ClassVar[bool] = True
    tensorwise: ClassVar[bool] = True

    _cells: dict[Cell, MergeParams] = PrivateAttr(default_factory=dict)
    _clean = field_validator("params", mode="before")(_drop_nulls)

    @model_validator(mode="after")
    def _parse_cells(self) -> LayerwiseRecipe:
        """Every cell's parameters, validated by the method (a bad one names ``groups[g].filter.field``)."""
        if self.method not in MERGE_METHODS:
            raise FieldIssue("method", f"a merge method ({', '.join(MERGE_METHODS.names())})", self.method)
        m = MERGE_METHODS.get(self.method)
        shared = dict(self.params)
        if "seed" in m.Params.model_fields:
            shared.setdefault("seed", self.seed)
        for g, group in enumerate(self.groups):
            for f in FILTERS:
                cell = getattr(group, f)
                if cell is None:
                    continue
                try:
                    self._cells[Cell(g, f)] = m.parse({**shared, **cell})
                except ConfigError as e:
                    raise FieldIssue(f"groups[{g}].{f}.{e.field}", e.expected) from None
        return self

    def resolver(self, layers: int) -> Callable[[str], MergeParams | None]:
        """Tensor name -> its cell's parsed parameters (None: keep the base), for ``layers`` layers."""
        if len(self.groups) > layers:
            raise ConfigError("layer-wise recipe", "groups", f"at most {layers} groups (the model's layers)", len(self.groups))
        return lambda name: self._cells.get(tensor_cell(name, layers, len(self.groups)))

    def model_refs(self) -> list[tuple[str, str]]:
        return [("base", self.base), *((f"models[{i}]", m) for i, m in enumerate(self.models))]

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """``base + merge(tau_1..tau_T)`` with each tensor's cell's parameters (:func:`~evomerge.recipe.stream.plan_recipe`)."""
        layers = num_layers(TensorSource(self.base).names())
        return plan_recipe(self.method, self.base, self.models, self.resolver(layers), None, out_dtype, compute_dtype,
                           keep_embeddings_from)  # fmt: skip

    def mergekit_config(self) -> dict[str, Any]:
        """One mergekit slice per layer group (:func:`~evomerge.recipe.to_mergekit.task_vector_config`)."""
        from evomerge.recipe.to_mergekit import task_vector_config

        return task_vector_config(self.method, self.base, self.models, self._cells, len(self.groups))


def parse_layerwise(data: Any, source: str = "recipe") -> LayerwiseRecipe:
    """Validate a layer-wise recipe; a ConfigError names ``source`` and the field path."""
    if isinstance(data, LayerwiseRecipe):
        return data
    try:
        return LayerwiseRecipe.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, exc) from None
