"""``stack`` recipes: a layer path built from several decoders' layers in a chosen order, each slot's
residual writes scaled (mergekit's ``passthrough`` slices; Sakana's data-flow merging).

Slot ``i`` contributes layers ``[start, end)`` of ``model``; the output's layers are the slots' layers
in order, renumbered, and its config's ``num_hidden_layers`` is their count. A slot's ``scale``
multiplies the projections that write into the residual stream (``o_proj`` and ``down_proj``, weights
and biases), so it scales what the slot's layers add to the hidden state. As in mergekit, the
embeddings come from the first slot's model and the final norm and LM head from the last slot's.

A stack is planned as the equivalent mergekit passthrough config (:meth:`StackRecipe.mergekit_config`,
also written into the output folder as ``mergekit_config.yml``) through
:func:`~evomerge.recipe.stream.plan_mergekit`, so it streams tensor by tensor.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
import yaml
from pydantic import Field, field_validator

from evomerge.errors import ConfigError
from evomerge.io.mergekit_config import parse_mergekit_config
from evomerge.recipe.kind import RECIPE_KINDS, RecipeKind, Strict
from evomerge.recipe.stream import MergePlan, open_source, plan_mergekit

#: The tensors a slot's ``scale`` multiplies (by substring of their name): the residual writes.
SCALED = ("o_proj", "down_proj")
#: Config fields on which every slot's model must agree with the first slot's (one family).
FAMILY = ("model_type", "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "vocab_size")


class Slot(Strict):
    """Layers ``layer_range = [start, end)`` of ``model``, residual writes times ``scale``."""

    model: str
    layer_range: tuple[Annotated[int, Field(ge=0)], Annotated[int, Field(ge=0)]]
    scale: float = 1.0

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

    def plan(self, source: str, out_dtype: torch.dtype | None, compute_dtype: torch.dtype,
             keep_embeddings_from: str | None) -> MergePlan:  # fmt: skip
        """The slots' layers streamed in order (:func:`~evomerge.recipe.stream.plan_mergekit`), after a
        check that every slot's model is of the first one's family (vocabulary aside in a backbone-only merge)."""
        fields = FAMILY[:-1] if keep_embeddings_from else FAMILY
        configs = [open_source(s.model, f"{source}: slots[{i}].model").config() for i, s in enumerate(self.slots)]
        for i, cfg in enumerate(configs[1:], 1):
            if differ := {f: cfg.get(f) for f in fields if cfg.get(f) != configs[0].get(f)}:
                want = ", ".join(f"{f} {configs[0].get(f)}" for f in differ)
                raise ConfigError(source, f"slots[{i}].model", f"a decoder of slot 0's family ({want})",
                                  f"{self.slots[i].model} with {differ}")
        data = self.mergekit_config()
        cfg = parse_mergekit_config(data, source)
        return plan_mergekit(cfg, source, compute_dtype, out_dtype, keep_embeddings_from, self.seed,
                             yaml.safe_dump(data, sort_keys=False))  # fmt: skip
