"""The :class:`Source` protocol, the registry of source kinds and :func:`open_source`.

A source is a typed record (its fields are what a space file writes under ``models``) with methods
that give the model's config, its tensors read lazily from the checkpoint's headers, the loaded
module, an adapter over it and, for text models, its tokenizer. Opening a source checks what can be
checked cheaply (the directory, ``config.json``, the checkpoint's headers); every problem is a
:class:`~evomerge.errors.ConfigError` naming the file and field.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import PrivateAttr, ValidationError, model_validator

from evomerge.errors import ConfigError, UserError, config_error
from evomerge.io.tensors import TensorSource
from evomerge.registry import Registry
from evomerge.settings import Strict

if TYPE_CHECKING:
    from torch import nn

    from evomerge.sources.adapters import ModelAdapter

S = TypeVar("S", bound="Source")


class Source(Strict, ABC):
    """Where one model comes from. ``name`` is how recipes refer to it (default: derived from the
    location); ``kind`` is its registry name (``zoo``, ``hf``, ``torch``)."""

    kind: ClassVar[str]
    name: str = ""
    _tensors: TensorSource | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _default_name(self) -> Source:
        self.name = self.name or self.default_name()
        return self

    @classmethod
    def open(cls: type[S], file: str = "<source>", field: str = "", context: dict[str, Any] | None = None,
             **fields: Any) -> S:
        """The source with these fields, checked; a problem is a ConfigError naming ``file`` and
        the field under ``field`` (``context``: validation context a kind reads)."""
        try:
            return cls.model_validate(fields, context=context)
        except ValidationError as exc:
            raise config_error(file, exc, prefix=field) from None

    @abstractmethod
    def default_name(self) -> str: ...

    @property
    @abstractmethod
    def config(self) -> dict[str, Any]:
        """The model's configuration (``config.json`` of a Hugging Face folder, a zoo spec...)."""

    @property
    @abstractmethod
    def architecture(self) -> str:
        """The model class; sources of one architecture can be merged weight by weight."""

    @abstractmethod
    def weights(self) -> Path:
        """The checkpoint file or folder that :meth:`tensors` reads."""

    def tensors(self) -> TensorSource:
        """The checkpoint's tensors: names, shapes and dtypes from the headers, each read on demand."""
        if self._tensors is None:
            self._tensors = TensorSource(self.weights())
        return self._tensors

    @abstractmethod
    def load_model(self, device: str = "cpu") -> nn.Module:
        """A freshly loaded module with the trained weights, in eval mode with gradients off; the
        caller keeps it (each call loads again)."""

    @abstractmethod
    def adapter(self, device: str = "cpu", model: nn.Module | None = None) -> ModelAdapter:
        """The model as named layers (``forward_to`` / ``forward_from`` with the full inputs):
        around ``model`` (one this source loaded, e.g. a worker's resident copy) or a new load."""

    def tokenizer(self) -> Any:
        """The text model's tokenizer (or an image model's processor); a UserError when it has none."""
        raise UserError(f"model '{self.name}' ({self.kind} source) has no tokenizer: it takes tensor inputs")


SOURCES: Registry[type[Source]] = Registry("model source")


def source_kind(kind: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: register a :class:`Source` class under the YAML name ``kind``."""

    def deco(cls: type[S]) -> type[S]:
        cls.kind = kind
        SOURCES.register(kind)(cls)
        return cls

    return deco


def open_source(entry: Mapping[str, Any], file: str = "<source>", field: str = "",
                context: dict[str, Any] | None = None) -> Source:
    """The source an entry such as ``{name: a, source: hf, path: models/a}`` describes; an unknown
    ``source`` or a bad field is a ConfigError naming ``file`` and the field under ``field``
    (``context``: see :meth:`Source.open`, e.g. ``{"zoo": zoo}``)."""
    fields = dict(entry)
    kind = fields.pop("source", None)
    where = f"{field}.source" if field else "source"
    if kind not in SOURCES:
        raise ConfigError(file, where, f"a model source ({', '.join(SOURCES.names())})", kind)
    return SOURCES.get(kind).open(file, field, context, **fields)
