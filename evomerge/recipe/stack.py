"""``stack`` recipes: a layer path built from several decoders' layers in a chosen order, each slot's
residual writes scaled (mergekit's ``passthrough`` slices; Sakana's data-flow merging).

Slot ``i`` contributes layers ``[start, end)`` of ``model``; the output's layers are the slots' layers
in order, renumbered, and its config's ``num_hidden_layers`` is their count. A slot's ``scale``
multiplies the projections that write into the residual stream (``o_proj`` and ``down_proj``, weights
and biases), so it scales what the slot's layers add to the hidden state. As in mergekit, the
embeddings come from the first slot's model and the final norm and LM head from the last slot's.

A slot may be given as ``{model, start, length}`` (a search's genes; ``length`` 1 when left out or
null): ``layer_range`` is ``[start, start + length)``.

A stack is planned as the equivalent mergekit passthrough config (:meth:`StackRecipe.mergekit_config`,
also written into the output folder as ``mergekit_config.yml``) through
:func:`~evomerge.recipe.stream.plan_mergekit`, so it streams tensor by tensor. A search over Hugging
Face sources builds it as a view over the resident source models instead (:meth:`StackRecipe.view`,
:func:`~evomerge.recipe.stack_view.stack_view`): the same logits, no weight copied.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

import torch
import yaml
from pydantic import Field, field_validator, model_validator
from torch import nn

from evomerge.errors import ConfigError
from evomerge.io.mergekit_config import parse_mergekit_config
from evomerge.recipe.kind import RECIPE_KINDS, RecipeKind, Strict
from evomerge.recipe.stack_view import held_params, stack_view
from evomerge.recipe.stream import MergePlan, open_source, plan_mergekit

if TYPE_CHECKING:
    from evomerge.recipe.stitch_view import FitTexts

#: The tensors a slot's ``scale`` multiplies (by substring of their name): the residual writes.
SCALED = ("o_proj", "down_proj")
#: Config fields on which every slot's model must agree with the first slot's (one family).
FAMILY = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size")


class Slot(Strict):
    """Layers ``layer_range = [start, end)`` of ``model``, residual writes times ``scale``."""

    model: str
    layer_range: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    scale: float = 1.0

    @model_validator(mode="before")
    @classmethod
    def _start_length(cls, data: Any) -> Any:
        """``{start, length}`` (integers, no ``layer_range``; ``length`` null or left out: 1) is
        ``layer_range: [start, start + length]``."""
        if not isinstance(data, dict) or "layer_range" in data:
            return data
        start, length = data.get("start"), 1 if data.get("length") is None else data["length"]
        if type(start) is not int or type(length) is not int:
            return data
        return {k: v for k, v in data.items() if k not in ("start", "length")} | {"layer_range": [start, start + length]}

    @field_validator("layer_range")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if value[1] <= value[0]:
            raise ValueError("a range [start, end) with end > start")
        return value


@RECIPE_KINDS.register("stack")
class StackRecipe(RecipeKind):
    kind: Literal["stack"] = "stack"
    slots: Annotated[list[Slot], Field(min_length=1)]
    as_view: ClassVar[bool] = True

    def model_refs(self) -> list[tuple[str, str]]:
        return [(f"slots[{i}].model", s.model) for i, s in enumerate(self.slots)]

    def mergekit_config(self) -> dict[str, Any]:
        """The mergekit passthrough config that builds this stack (``mergekit-yaml`` gives the same tensors)."""

        def source(s: Slot) -> dict[str, Any]:
            entry: dict[str, Any] = {"model": s.model, "layer_range": list(s.layer_range)}
            if s.scale != 1.0:
                entry["parameters"] = {"scale": [*({"filter": f, "value": s.scale} for f in SCALED), {"value": 1.0}]}
            return entry

        return {"merge_method": "passthrough", "slices": [{"sources": [source(s)]} for s in self.slots]}

    def check_sources(self, configs: Mapping[str, Mapping[str, Any]], source: str, prefix: str = "",
                      tasks: Sequence[str] = (), vocab: bool = True) -> None:  # fmt: skip
        """Every slot's model of the first one's family (``vocab``: its vocabulary too), every range
        within its model's ``num_hidden_layers``."""
        fields = FAMILY if vocab else FAMILY[:-1]
        first = configs[self.slots[0].model]
        for i, s in enumerate(self.slots):
            cfg, where = configs[s.model], ".".join(p for p in (prefix, f"slots[{i}]") if p)
            if differ := {f: cfg.get(f) for f in fields if cfg.get(f) != first.get(f)}:
                want = ", ".join(f"{f} {first.get(f)}" for f in differ)
                raise ConfigError(source, f"{where}.model", f"a decoder of slot 0's family ({want})", f"{s.model} with {differ}")
            if s.layer_range[1] > (n := cfg.get("num_hidden_layers", 0)):
                raise ConfigError(source, f"{where}.layer_range", f"a range within the {n} layers of '{s.model}'",
                                  list(s.layer_range))

    def view(self, models: Mapping[str, nn.Module], fit: FitTexts | None = None) -> nn.Module:
        """The stack over the resident ``models`` (:func:`~evomerge.recipe.stack_view.stack_view`), checked first."""
        self.check_sources({m: models[m].config.to_dict() for m in {s.model for s in self.slots}}, "recipe")
        return stack_view([(s.model, models[s.model], s.layer_range, s.scale) for s in self.slots])

    def view_params(self, module: nn.Module) -> int:
        """The materialized stack's parameters (:func:`~evomerge.recipe.stack_view.held_params`)."""
        return held_params(module)

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """The slots' layers streamed in order (:func:`~evomerge.recipe.stream.plan_mergekit`), after a
        check that every slot's model is of the first one's family (vocabulary aside in a backbone-only merge)."""
        configs = {s.model: open_source(s.model, f"{source}: slots[{i}].model").config() for i, s in enumerate(self.slots)}
        self.check_sources(configs, source, vocab=keep_embeddings_from is None)
        data = self.mergekit_config()
        cfg = parse_mergekit_config(data, source)
        return plan_mergekit(cfg, source, compute_dtype, out_dtype, keep_embeddings_from, self.seed,
                             yaml.safe_dump(data, sort_keys=False))  # fmt: skip
