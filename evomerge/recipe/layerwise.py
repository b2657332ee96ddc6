"""Layer-wise weight merges of decoders of one family: one merge method, its parameters given per
layer group x tensor filter.

This is the shape of mergekit-evolve's genotype (``mergekit/evo/genome.py``: layer groups x models x
filters x parameters; read, not copied). The decoder's ``L`` layers fall into ``G`` groups of
consecutive layers, layer ``i`` into group ``floor(i G / L)`` (mergekit's ``layer_granularity = L / G``
when ``G`` divides ``L``). Inside a layer a tensor belongs to the filter ``attention`` (its module
path starts with ``self_attn``, ``attn``, ``attention`` or ``self_attention``), ``mlp`` (``mlp``,
``feed_forward``, ``ffn``, ``block_sparse_moe``; BERT's feed-forward ``intermediate`` and ``output``) or ``rest`` (norms and anything else). Tensors
outside the repeated layers are ``rest`` of the first group when their name holds ``embed`` and of
the last group otherwise (final norm, LM head): mergekit's planner merges them with the first and
the last slice's parameters.

Each cell ``(group, filter)`` holds the method's parameters (``density``, ``lam``, per-task
``weights``, a TSV ``rank`` ...; per-model values are the lists the method takes); ``params`` gives
defaults shared by every cell. A cell left out keeps its tensors at the base.

The cells come as a list (``groups[g].attention`` ...) or as a grid: ``groups: G`` with ``grid``
mapping each parameter to a nested list of shape ``[G][len(filters)]`` (a per-model value adds a
``[len(models)]`` axis), over ``filters`` (default all three; a filter left out keeps the base). The
grid is what an array gene fills; it expands into the same cells the list gives.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from types import UnionType
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union, get_args, get_origin

import torch
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from evomerge.core.merge import MERGE_METHODS, MergeMethod, MergeParams
from evomerge.errors import ConfigError, FieldIssue, UserError, config_error
from evomerge.io.tensors import TensorSource
from evomerge.recipe.kind import RECIPE_KINDS, NoMergekitConfig, RecipeKind, Strict, _drop_nulls
from evomerge.recipe.mass_view import MASS_NO_MERGEKIT, MassSpec, Routable
from evomerge.recipe.stream import LAYER, MergePlan, plan_recipe

Filter = Literal["attention", "mlp", "rest"]
FILTERS: tuple[Filter, ...] = ("attention", "mlp", "rest")
ATTENTION = frozenset({"self_attn", "attn", "attention", "self_attention"})
MLP = frozenset({"mlp", "feed_forward", "ffn", "block_sparse_moe", "intermediate", "output"})  # BERT: intermediate, output


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
    return Cell(index * groups // layers, module_filter(m["rest"].split(".", 1)[0]))


def module_filter(head: str) -> Filter:
    """The filter of a layer's tensors under module ``head`` (``self_attn`` -> ``attention``, ``mlp`` -> ``mlp``)."""
    return "attention" if head in ATTENTION else "mlp" if head in MLP else "rest"


class LayerGroup(Strict):
    """One layer group's parameters per filter (None: that filter's tensors keep the base)."""

    attention: dict[str, Any] | None = None
    mlp: dict[str, Any] | None = None
    rest: dict[str, Any] | None = None

    _clean = field_validator(*FILTERS, mode="before")(_drop_nulls)


@RECIPE_KINDS.register("layerwise")
class LayerwiseRecipe(Routable, RecipeKind):
    """``method`` over fine-tunes ``models`` of ``base``, parameters per layer group x filter."""

    kind: Literal["layerwise"] = "layerwise"
    base: str
    models: Annotated[list[str], Field(min_length=1)]
    method: str
    #: the cells group by group, or the number of layer groups of ``grid``
    groups: Union[Annotated[list[LayerGroup], Field(min_length=1)], int]
    grid: dict[str, Any] = {}
    filters: Annotated[list[Filter], Field(min_length=1)] = list(FILTERS)
    params: dict[str, Any] = {}
    #: MASS routing over the models (Hugging Face sources: :mod:`evomerge.recipe.mass_view`)
    mass: MassSpec | None = None
    tensorwise: ClassVar[bool] = True

    _cells: dict[Cell, MergeParams] = PrivateAttr(default_factory=dict)
    _clean = field_validator("params", "grid", mode="before")(_drop_nulls)

    @field_validator("groups", mode="before")
    @classmethod
    def _groups_form(cls, value: Any) -> Any:
        if isinstance(value, list) or (type(value) is int and value >= 1):
            return value
        raise FieldIssue("", "a list of layer groups, or the number of layer groups of a grid (an int >= 1)", value)

    @property
    def num_groups(self) -> int:
        """``G``, the number of layer groups."""
        return self.groups if isinstance(self.groups, int) else len(self.groups)

    @model_validator(mode="after")
    def _parse_cells(self) -> LayerwiseRecipe:
        """Every cell's parameters, validated by the method (a bad one names ``groups[g].filter.field``,
        or ``grid.field[g][f]``)."""
        if self.method not in MERGE_METHODS:
            raise FieldIssue("method", f"a merge method ({', '.join(MERGE_METHODS.names())})", self.method)
        m = MERGE_METHODS.get(self.method)
        shared = dict(self.params)
        if "seed" in m.Params.model_fields:
            shared.setdefault("seed", self.seed)
        cells = self._list_cells() if isinstance(self.groups, list) else self._grid_cells(m)
        for cell, params, path in cells:
            try:
                self._cells[cell] = m.parse({**shared, **params})
            except ConfigError as e:
                raise FieldIssue(path(e.field), e.expected, e.got) from None
        return self

    def _list_cells(self) -> Iterator[tuple[Cell, dict[str, Any], Callable[[str], str]]]:
        """The cells ``groups`` lists, each with the path of a field in it (a grid, or filters other than
        the default, take ``groups: G``)."""
        for field, given in (("grid", bool(self.grid)), ("filters", self.filters != list(FILTERS))):
            if given:
                raise FieldIssue(field, f"no {field} beside a list of groups (a grid takes groups: G, the number "
                                 "of layer groups)", getattr(self, field))
        for g, group in enumerate(self.groups):
            for f in FILTERS:
                cell = getattr(group, f)
                if cell is not None:
                    yield Cell(g, f), cell, lambda field, g=g, f=f: f"groups[{g}].{f}.{field}"

    def _grid_cells(self, m: MergeMethod) -> Iterator[tuple[Cell, dict[str, Any], Callable[[str], str]]]:
        """The cells of ``grid`` over ``filters``, each with the path of a field in it; the grid's
        parameters and shape are checked first (``grid.weights[1][0]``: one value per model)."""
        G, models, fields = self.groups, len(self.models), m.Params.model_fields
        for i, f in enumerate(self.filters):
            if f in self.filters[:i]:
                raise FieldIssue(f"filters[{i}]", "a filter listed once", f)
        for name, value in self.grid.items():
            if name not in fields:
                raise FieldIssue(f"grid.{name}", f"a parameter of method '{self.method}' ({', '.join(fields)})", name)
            per_model = _list_only(fields[name].annotation)
            if not _is_list(value, G):
                raise FieldIssue(f"grid.{name}", f"a list of {G} entries (one per layer group)", value)
            for g, row in enumerate(value):
                if not _is_list(row, len(self.filters)):
                    raise FieldIssue(f"grid.{name}[{g}]", f"a list of {len(self.filters)} entries (one per filter: "
                                     f"{', '.join(self.filters)})", row)
                for i, v in enumerate(row):
                    if v is not None and (per_model or isinstance(v, list)) and not _is_list(v, models):
                        raise FieldIssue(f"grid.{name}[{g}][{i}]", f"{'' if per_model else 'one value or '}a list of "
                                         f"{models} values (one per model)", v)
        for g in range(G):
            for i, f in enumerate(self.filters):
                cell = _drop_nulls({name: value[g][i] for name, value in self.grid.items()})
                yield Cell(g, f), cell, lambda field, g=g, i=i: _grid_path(field, g, i, self.grid)

    def resolver(self, layers: int) -> Callable[[str], MergeParams | None]:
        """Tensor name -> its cell's parsed parameters (None: keep the base), for ``layers`` layers."""
        groups = self.num_groups
        if groups > layers:
            raise ConfigError("layer-wise recipe", "groups", f"at most {layers} groups (the model's layers)", groups)
        return lambda name: self._cells.get(tensor_cell(name, layers, groups))

    def model_refs(self) -> list[tuple[str, str]]:
        return [("base", self.base), *((f"models[{i}]", m) for i, m in enumerate(self.models))]

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """``base + merge(tau_1..tau_T)`` with each tensor's cell's parameters (:func:`~evomerge.recipe.stream.plan_recipe`)."""
        self.check_static(source)
        layers = num_layers(TensorSource(self.base).names())
        return plan_recipe(self.method, self.base, self.models, self.resolver(layers), None, out_dtype, compute_dtype,
                           keep_embeddings_from)  # fmt: skip

    def mergekit_config(self) -> dict[str, Any]:
        """One mergekit slice per layer group (:func:`~evomerge.recipe.to_mergekit.task_vector_config`)."""
        from evomerge.recipe.to_mergekit import task_vector_config

        if self.routed:
            raise NoMergekitConfig(MASS_NO_MERGEKIT)
        return task_vector_config(self.method, self.base, self.models, self._cells, self.num_groups)


def _is_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length


def _list_only(annotation: Any) -> bool:
    """Whether a method parameter's type takes only lists (a per-model parameter such as ``weights``)."""
    options = get_args(annotation) if get_origin(annotation) in (Union, UnionType) else (annotation,)
    return all(get_origin(a) is list or a is type(None) for a in options)


def _grid_path(field: str, g: int, i: int, grid: dict[str, Any]) -> str:
    """Where a method's error about parameter ``field`` in grid cell ``(g, i)`` points: the grid
    entry when ``grid`` gives that parameter, else the shared ``params``."""
    return f"grid.{field}[{g}][{i}]" if field in grid else f"params.{field}"


def parse_layerwise(data: Any, source: str = "recipe") -> LayerwiseRecipe:
    """Validate a layer-wise recipe; a ConfigError names ``source`` and the field path."""
    if isinstance(data, LayerwiseRecipe):
        return data
    try:
        return LayerwiseRecipe.model_validate(data)
    except ValidationError as exc:
        raise config_error(source, exc) from None
