"""The built-in zoo's adapter (:class:`LayeredAdapter`) and :func:`as_adapter`, which wraps any model
in the right one (see :mod:`evomerge.sources.adapters` for the interface)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from evomerge.errors import UserError
from evomerge.sources.adapters import HFAdapter, ModelAdapter, TorchAdapter
from evomerge.zoo.models import LayeredNet


class LayeredAdapter(ModelAdapter):
    """Adapter for built-in ``LayeredNet`` models."""

    def __init__(self, net: LayeredNet):
        self.module = net
        self.matrix_kind = {"cnn": "conv", "transformer": "tokens"}.get(getattr(net, "arch", None), "vector")

    @property
    def layered(self) -> bool:
        return True

    def layer_module(self, layer: str) -> nn.Module:
        self.check_layer(layer)
        return self.module.layers[layer]

    @property
    def layer_names(self) -> list[str]:
        return self.module.layer_names

    def forward_to(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        return self.module.forward_to(x, layer)

    def forward_from(self, h: torch.Tensor, layer: str, inputs: Any = None) -> torch.Tensor:
        return self.module.forward_from(h, layer)

    def example_input(self, batch: int = 2) -> torch.Tensor:
        device = next(self.module.parameters()).device
        return torch.zeros(batch, *self.module.input_shape, device=device)


def as_adapter(obj: Any, **kwargs: Any) -> ModelAdapter:
    """Wrap a model in the right adapter: LayeredNet, HF directory path, or module + layer names."""
    if isinstance(obj, ModelAdapter):
        return obj
    if isinstance(obj, LayeredNet):
        return LayeredAdapter(obj)
    if isinstance(obj, (str, Path)):
        return HFAdapter.from_pretrained(obj, **kwargs)
    if isinstance(obj, nn.Module) and hasattr(obj, "config"):
        return HFAdapter.from_model(obj, **kwargs)
    if isinstance(obj, nn.Module):
        return TorchAdapter(obj, **kwargs)
    raise UserError(f"cannot adapt an object of type {type(obj).__name__}")
