"""A layer stack as a view over resident decoders: no weight is copied, no model is saved or reloaded.

The view of slots ``(model_i, [start_i, end_i), scale_i)`` is a new causal LM of the first slot model's
class and config, with ``num_hidden_layers`` the number of stacked layers (and, where the config has
``layer_types``, each stacked layer's own type), whose decoder layers are the slots' layers, in order.
It computes what the materialized stack (:class:`~evomerge.recipe.stack.StackRecipe`, mergekit's
``passthrough`` slices; Sakana's data-flow merging) computes:

- each stacked layer is a shallow copy of its source layer sharing every parameter, with its attention
  module's ``layer_idx`` set to its new index (the KV cache's slot for it);
- a slot's ``scale`` multiplies the output of its layers' residual writes (``o_proj``, ``down_proj``:
  ``scale * (W x + b)``, mergekit's scaled weights and biases) through :class:`Scaled`;
- the embeddings (and every other module of the decoder outside its layers, e.g. the rotary embedding)
  come from the first slot's model, the final norm and LM head from the last slot's (the first's LM
  head when the config ties it to the embeddings, as the exported model does).

The source models are never modified: building any number of views leaves them as they were.
Decoder-only Hugging Face models whose layers are ``model.model.layers`` (Llama, Mistral, Qwen2...).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from evomerge.errors import UserError


class Scaled(nn.Module):
    """``scale`` times the output of ``inner`` (shared, not copied)."""

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs) * self.scale


def _shallow(module: nn.Module) -> nn.Module:
    """A copy of ``module`` sharing its parameters, buffers and submodules, with dicts of its own
    (submodules, hooks...), so that setting an attribute or a submodule on it leaves ``module`` alone."""
    out = copy.copy(module)
    out.__dict__ = {k: copy.copy(v) if isinstance(v, dict) else v for k, v in module.__dict__.items()}
    return out


def decoder_layers(model: nn.Module, name: str) -> nn.ModuleList:
    """``model.model.layers``; a model without them is a UserError naming ``name``."""
    layers = getattr(getattr(model, "model", None), "layers", None)
    if not isinstance(layers, nn.ModuleList) or not hasattr(model, "lm_head"):
        raise UserError(f"model '{name}' ({type(model).__name__}) is not a decoder-only causal LM with its layers in "
                        "model.model.layers and an lm_head: a stack is viewed only over such models")
    return layers


def _stacked_layer(layer: nn.Module, index: int, scale: float) -> nn.Module:
    out = _shallow(layer)
    attn = out.self_attn = _shallow(layer.self_attn)
    attn.layer_idx = index
    if hasattr(out, "layer_idx"):
        out.layer_idx = index
    if scale != 1.0:
        attn.o_proj = Scaled(layer.self_attn.o_proj, scale)
        out.mlp = _shallow(layer.mlp)
        out.mlp.down_proj = Scaled(layer.mlp.down_proj, scale)
    return out


def stack_view(slots: Sequence[tuple[str, nn.Module, tuple[int, int], float]]) -> nn.Module:
    """The view of ``slots`` = ``(name, model, (start, end), scale)`` (see the module docstring), ranges
    within the models' layers; ``name`` names the model in errors."""
    for name, model, _, _ in slots:
        decoder_layers(model, name)
    first, last = slots[0][1], slots[-1][1]
    layers = [(m, i, scale) for _, m, (start, end), scale in slots for i in range(start, end)]
    config = copy.deepcopy(first.config)
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = [m.config.layer_types[i] for m, i, _ in layers]
    with torch.device("meta"):
        view = type(first)(config)
    for child, module in first.model.named_children():
        setattr(view.model, child, module)
    view.model.layers = nn.ModuleList(_stacked_layer(m.model.layers[i], k, s) for k, (m, i, s) in enumerate(layers))
    view.model.norm = last.model.norm
    view.lm_head = first.lm_head if getattr(config.get_text_config(), "tie_word_embeddings", False) else last.lm_head
    view.generation_config = copy.deepcopy(first.generation_config)
    return view.eval()


def held_params(model: nn.Module) -> int:
    """The parameters ``model``'s checkpoint holds (a view's: the materialized stack's): each decoder
    layer's once per use (a layer stacked twice counts twice), everything else once (tied tensors once)."""
    layers = decoder_layers(model, type(model).__name__)
    in_layers = {id(p) for p in layers.parameters()}
    return (sum(p.numel() for layer in layers for p in layer.parameters())
            + sum(p.numel() for p in model.parameters() if id(p) not in in_layers))
