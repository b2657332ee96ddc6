"""A model of the built-in zoo by id: trained (once, then cached) by :class:`~evomerge.zoo.catalog.Zoo`
when first needed, seen through :class:`~evomerge.zoo.adapter.LayeredAdapter`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import PrivateAttr, ValidationInfo, model_validator

from evomerge.errors import FieldIssue
from evomerge.settings import Seed
from evomerge.sources.base import Source, source_kind

if TYPE_CHECKING:
    from torch import nn

    from evomerge.zoo.adapter import LayeredAdapter
    from evomerge.zoo.catalog import Zoo


@source_kind("zoo")
class ZooSource(Source):
    """``id``: a zoo model id; ``seed``: the zoo's seed. Opened with ``context={"zoo": zoo}`` it uses
    that :class:`Zoo` (and its seed and specs) instead of a new default one."""

    id: str
    seed: Seed = 0
    _zoo: Zoo = PrivateAttr()

    @model_validator(mode="after")
    def _check(self, info: ValidationInfo) -> ZooSource:
        from evomerge.zoo.catalog import Zoo

        zoo = (info.context or {}).get("zoo") or Zoo(seed=self.seed)
        if self.id not in zoo.specs:
            raise FieldIssue("id", f"a zoo model id (one of {', '.join(zoo.ids())})", self.id)
        self._zoo, self.seed = zoo, zoo.seed
        return self

    @classmethod
    def of(cls, zoo: Zoo, model_id: str) -> ZooSource:
        """The model ``model_id`` of ``zoo``."""
        return cls.open(context={"zoo": zoo}, id=model_id, seed=zoo.seed)

    def default_name(self) -> str:
        return self.id

    @property
    def config(self) -> dict[str, Any]:
        return self._zoo.spec(self.id).model_dump(mode="json")

    @property
    def architecture(self) -> str:
        return self._zoo.spec(self.id).arch

    def weights(self) -> Path:
        self._zoo.ensure_built(self.id)
        return self._zoo.weights_path(self.id)

    def load_model(self, device: str = "cpu") -> nn.Module:
        return self._zoo.load(self.id).to(device)

    def adapter(self, device: str = "cpu", model: nn.Module | None = None) -> LayeredAdapter:
        from evomerge.zoo.adapter import LayeredAdapter

        return LayeredAdapter(model if model is not None else self.load_model(device))
