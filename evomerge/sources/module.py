"""A torch module built by a Python factory (``package.module:Class`` plus keyword arguments) with its
weights from a safetensors checkpoint (never unpickled), seen through
:class:`~evomerge.sources.adapters.TorchAdapter`."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import Field, model_validator

from evomerge.errors import FieldIssue, UserError
from evomerge.sources.base import Source, source_kind

if TYPE_CHECKING:
    from torch import nn

    from evomerge.sources.adapters import TorchAdapter


def import_factory(path: str) -> Callable[..., Any]:
    """The callable a ``package.module:attribute`` path names; a FieldIssue on ``module`` otherwise."""
    module, _, attr = path.partition(":")
    try:
        found: Any = importlib.import_module(module)
        for part in attr.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise FieldIssue("module", "an importable 'package.module:Class' (or factory)", f"{path} ({exc})") from None
    if not callable(found):
        raise FieldIssue("module", "a class or factory function", path)
    return found


@source_kind("torch")
class TorchSource(Source):
    """``module(**kwargs)`` builds the module; ``checkpoint`` (``.safetensors``) holds its state dict.
    ``layers``: sub-module names on the main path (default: the module's direct children);
    ``input_shape``: one input's shape without the batch axis (zeros of it are the example input)."""

    module: Annotated[str, Field(pattern=r"^[\w.]+:[\w.]+$")]
    kwargs: dict[str, Any] = {}
    checkpoint: Path
    layers: list[str] | None = None
    input_shape: list[Annotated[int, Field(ge=1)]] | None = None

    @model_validator(mode="after")
    def _check(self) -> TorchSource:
        import_factory(self.module)
        if self.checkpoint.suffix != ".safetensors" or not self.checkpoint.is_file():
            raise FieldIssue("checkpoint", "an existing .safetensors file", str(self.checkpoint))
        self.tensors()  # the header read now: a truncated or garbage file fails here
        return self

    def default_name(self) -> str:
        return self.checkpoint.stem

    @property
    def config(self) -> dict[str, Any]:
        return {"module": self.module, "kwargs": self.kwargs}

    @property
    def architecture(self) -> str:
        return self.module

    def weights(self) -> Path:
        return self.checkpoint

    def load_model(self, device: str = "cpu") -> nn.Module:
        from torch import nn

        model = import_factory(self.module)(**self.kwargs)
        if not isinstance(model, nn.Module):
            raise UserError(f"{self.module}(**kwargs) returned a {type(model).__name__}, not a torch module")
        tensors = self.tensors()
        try:
            model.load_state_dict({n: tensors.get(n) for n in tensors.names()}, strict=True)
        except RuntimeError as exc:
            raise UserError(f"{self.checkpoint}: the weights do not fit {self.module}: {exc}") from None
        return model.to(device).eval().requires_grad_(False)

    def adapter(self, device: str = "cpu", model: nn.Module | None = None) -> TorchAdapter:
        import torch

        from evomerge.sources.adapters import TorchAdapter

        model = model if model is not None else self.load_model(device)
        layers = self.layers if self.layers is not None else [n for n, _ in model.named_children()]
        example = torch.zeros(1, *self.input_shape, device=device) if self.input_shape else None
        return TorchAdapter(model, layers, example)
