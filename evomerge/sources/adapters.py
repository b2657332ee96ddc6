"""One interface through which the core sees any model as an ordered list of named layers, and
the adapters of the sources that are not the built-in zoo.

``forward_to(x, layer)`` is the output of ``layer``; ``forward_from(h, layer, x)`` runs the rest
of the model on it, so ``forward_from(forward_to(x, l), l, x) == forward(x)`` for every layer. ``x``
(optional) is the model's full input for the batch: the layers after the cut read from it what is not
in ``h`` (a Hugging Face model's attention mask, position ids), so padded batches run on exactly.

* ``LayeredAdapter`` (:mod:`evomerge.zoo.adapter`) — the built-in zoo's nets (exact, no wasted work).
* :class:`TorchAdapter` — any ``nn.Module`` given the names of sub-modules on its main path.
  ``forward_to`` stops the forward at the layer; ``forward_from`` re-runs the forward on the
  batch's inputs (or a stored example input) with a hook that swaps the layer's output for ``h``. This is exact
  whenever nothing downstream reads an earlier activation other than through the layer
  (true for chains and for residual streams cut at whole blocks); the prefix compute is the price.
* :class:`HFAdapter` — a Hugging Face model from a local directory, cut at its repeated blocks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from evomerge.errors import UserError, unknown_name


class ModelAdapter(ABC):
    """A model seen as named layers: run up to one, run on from one, read and write weights."""

    module: nn.Module
    #: What a 2-D per-item activation ``(a, b)`` is: ``tokens`` (a sequence of ``b``-vectors),
    #: ``conv`` (``a`` channels over ``b`` positions) or ``vector`` (flattened).
    matrix_kind: str = "vector"

    @property
    @abstractmethod
    def layer_names(self) -> list[str]: ...

    @abstractmethod
    def forward_to(self, x: Any, layer: str) -> torch.Tensor: ...

    @abstractmethod
    def forward_from(self, h: torch.Tensor, layer: str, inputs: Any = None) -> torch.Tensor:
        """The model's output when ``layer`` outputs ``h``; ``inputs``: the batch's full model inputs."""

    @abstractmethod
    def example_input(self, batch: int = 2) -> Any: ...

    def forward(self, x: Any) -> torch.Tensor:
        return self.module(x)

    __call__ = forward

    def activation_shape(self, layer: str) -> tuple[int, ...]:
        """Shape of ``layer``'s output for one item (no batch axis)."""
        self.check_layer(layer)
        with torch.no_grad():
            return tuple(self.forward_to(self.example_input(2), layer).shape[1:])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, sd: Mapping[str, torch.Tensor]) -> None:
        self.module.load_state_dict(sd)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    @property
    def layered(self) -> bool:
        """Whether the layers are the whole model, so the parameters up to or after a layer are
        exactly those of the layers on that side (else the whole module is counted)."""
        return False

    def layer_module(self, layer: str) -> nn.Module:
        """The sub-module whose output is ``layer``."""
        self.check_layer(layer)
        return self.module.get_submodule(layer)

    def layer_kind(self, layer: str) -> str:
        """The layer's kind for :class:`~evomerge.core.align.shapes.Layout`: ``vector``, ``conv`` or
        ``tokens``: 1-D outputs are vectors, 3-D ``(C, H, W)`` conv maps, 2-D ones :attr:`matrix_kind`."""
        shape = self.activation_shape(layer)
        if len(shape) != 2:
            return "conv" if len(shape) == 3 else "vector"
        return self.matrix_kind

    def check_layer(self, layer: str) -> None:
        """UserError listing the valid layer names unless ``layer`` is one."""
        if layer not in self.layer_names:
            raise unknown_name(f"layer of {type(self.module).__name__}", layer, self.layer_names)


class _Stop(Exception):
    def __init__(self, value: torch.Tensor):
        self.value = value


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, tuple) else out


def _swap_first(out: Any, h: torch.Tensor) -> Any:
    return (h, *out[1:]) if isinstance(out, tuple) else h


class TorchAdapter(ModelAdapter):
    """Adapter for a plain ``nn.Module`` given sub-module names on its main path (forward hooks).

    ``output`` maps the module's raw output to logits (default: identity, or the first
    element of a tuple). ``example`` is one input (with batch axis 1) used by
    ``forward_from`` and ``activation_shape``; it is repeated along the batch axis.
    """

    def __init__(
        self,
        module: nn.Module,
        layer_names: list[str],
        example: Any,
        output: Callable[[Any], torch.Tensor] | None = None,
    ):
        self.module = module
        modules = dict(module.named_modules())
        missing = [n for n in layer_names if n not in modules]
        if missing:
            raise unknown_name(f"sub-module of {type(module).__name__}", missing[0], [n for n in modules if n])
        self._layers = list(layer_names)
        self._modules = modules
        self._example = example
        self._output = output or _first

    @property
    def layer_names(self) -> list[str]:
        return list(self._layers)

    def example_input(self, batch: int = 2) -> Any:
        def rep(t: Any) -> Any:
            return t.expand(batch, *t.shape[1:]).contiguous() if torch.is_tensor(t) else t

        if isinstance(self._example, Mapping):
            return {k: rep(v) for k, v in self._example.items()}
        return rep(self._example)

    def _call(self, x: Any) -> Any:
        return self.module(**x) if isinstance(x, Mapping) else self.module(x)

    def forward(self, x: Any) -> torch.Tensor:
        return self._output(self._call(x))

    __call__ = forward

    def forward_to(self, x: Any, layer: str) -> torch.Tensor:
        self.check_layer(layer)

        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            raise _Stop(_first(out))

        handle = self._modules[layer].register_forward_hook(hook)
        try:
            self._call(x)
        except _Stop as stop:
            return stop.value
        finally:
            handle.remove()
        raise UserError(f"layer '{layer}' did not run during the forward pass")

    def forward_from(self, h: torch.Tensor, layer: str, inputs: Any = None) -> torch.Tensor:
        """Re-run the forward on ``inputs`` (default: the example input for ``h``) with ``layer``'s
        output swapped for ``h``."""
        self.check_layer(layer)
        handle = self._modules[layer].register_forward_hook(lambda _m, _i, out: _swap_first(out, h))
        try:
            return self.forward(inputs if inputs is not None else self._input_for(h))
        finally:
            handle.remove()

    def _input_for(self, h: torch.Tensor) -> Any:
        return self.example_input(h.shape[0])


def _block_list(model: nn.Module) -> str:
    """Name of the longest ``nn.ModuleList`` in ``model``: its repeated blocks."""
    lists = [(len(m), n) for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) > 0]
    if not lists:
        raise UserError(f"{type(model).__name__} has no repeated blocks (nn.ModuleList) to cut at; pass layer names")
    return max(lists)[1]


def _hf_logits(out: Any) -> torch.Tensor:
    for name in ("logits", "last_hidden_state"):
        value = getattr(out, name, None)
        if value is not None:
            return value
    return _first(out)


class HFAdapter(TorchAdapter):
    """A Hugging Face model from a local directory, cut at its repeated blocks (``encoder.layer.i`` ...).

    The output is ``logits`` when the model has a head, else ``last_hidden_state``. ``forward_from``
    needs the batch's inputs (``attention_mask`` included) whenever the batch is padded; without them
    it runs on a dummy input of ``h``'s batch size and length with no padding.
    """

    matrix_kind = "tokens"

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        auto_class: str | None = None,
        layer_names: list[str] | None = None,
        example: Any = None,
    ) -> HFAdapter:
        """The model of a local directory, loaded by ``auto_class`` (default: the class its
        ``config.json`` names, head included; see :class:`~evomerge.sources.hf.HFSource`)."""
        from evomerge.sources.hf import HFSource

        model = HFSource.open(path=path).load_model(auto_class=auto_class)
        return cls.from_model(model, layer_names, example)

    @classmethod
    def from_model(cls, model: nn.Module, layer_names: list[str] | None = None, example: Any = None) -> HFAdapter:
        if layer_names is None:
            blocks = _block_list(model)
            layer_names = [f"{blocks}.{i}" for i in range(len(dict(model.named_modules())[blocks]))]
        if example is None:
            example = _hf_example(model)
        return cls(model, layer_names, example, output=_hf_logits)

    def _input_for(self, h: torch.Tensor) -> Any:
        example = self.example_input(h.shape[0])
        name = getattr(self.module, "main_input_name", "input_ids")
        if isinstance(example, Mapping) and name == "input_ids" and h.dim() >= 3:
            ids = torch.zeros(h.shape[0], h.shape[1], dtype=torch.long, device=h.device)
            return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        return example


def _hf_example(model: nn.Module) -> dict[str, torch.Tensor]:
    """A one-item example input built from the model's config (token ids or pixel values)."""
    cfg = model.config
    name = getattr(model, "main_input_name", "input_ids")
    if name == "pixel_values":
        size = cfg.image_size if isinstance(cfg.image_size, int) else cfg.image_size[0]
        return {name: torch.zeros(1, getattr(cfg, "num_channels", 3), size, size)}
    return {name: torch.zeros(1, min(16, getattr(cfg, "max_position_embeddings", 16)), dtype=torch.long)}


def load_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file safely: safetensors, or ``torch.load(weights_only=True)``; never a full unpickle."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling refusal is a user-facing problem
        raise UserError(f"{path}: not a weights-only torch checkpoint ({exc})") from None
    if isinstance(obj, Mapping) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path}: expected a state dict of tensors")
    return dict(obj)
