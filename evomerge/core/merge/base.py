"""The merge-method interface, its registry, and per-layer coefficients.

Every method has one calling convention (mergekit-style)::

    merged = MERGE_METHODS.get(name)(base, finetuned, params, keys)

``base`` and each ``finetuned[t]`` are state dicts of one architecture. Only floating-point
tensors whose key passes ``keys`` are merged; every other entry is copied from ``base``.
A method combines the per-task updates (task vectors) of one key into one update,
``merged[k] = base[k] + combine_key(k, [tau_1[k], ..., tau_T[k]])``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, TypeVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from evomerge.core.merge.task_vectors import KeyFilter, StateDict, add_update, task_vectors
from evomerge.errors import ConfigError
from evomerge.registry import Registry

V = TypeVar("V")
PerLayer = V | dict[str, V]
"""A value, or a mapping from layer prefixes (``"layers.fc1"``, a full key, or ``"*"`` for
every other key) to values; the longest prefix that matches a key on a ``.`` boundary wins."""


def layer_value(spec: PerLayer[V], key: str, where: str) -> V:
    """The value ``spec`` gives parameter ``key`` (see :data:`PerLayer`)."""
    if not isinstance(spec, dict):
        return spec
    hits = [p for p in spec if p != "*" and (key == p or key.startswith(p + "."))]
    if hits:
        return spec[max(hits, key=len)]
    if "*" in spec:
        return spec["*"]
    raise ConfigError("merge params", where, f"a layer prefix matching '{key}' or a '*' entry", sorted(spec))


class MergeParams(BaseModel):
    """Base of every method's parameters: unknown fields are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class MergeMethod(ABC):
    """One weight-space merge: parse parameters, combine task vectors key by key."""

    name: ClassVar[str]
    Params: ClassVar[type[MergeParams]] = MergeParams
    #: True when each merged tensor is a function of that tensor's values alone (so the merge can
    #: stream name by name, :meth:`merge_tensor`); a method needing a whole-model view sets False.
    streams: ClassVar[bool] = True

    def parse(self, params: Mapping[str, Any] | MergeParams | None) -> MergeParams:
        """Validate ``params``; a bad field raises :class:`ConfigError` naming it."""
        if isinstance(params, self.Params):
            return params
        try:
            return self.Params.model_validate(dict(params or {}))
        except ValidationError as e:
            err = e.errors()[0]
            field = str(err["loc"][0]) if err["loc"] else "(params)"
            expected = err["msg"][:1].lower() + err["msg"][1:]
            raise ConfigError(f"merge method '{self.name}' params", field, expected, err.get("input")) from None

    def __call__(
        self,
        base: StateDict,
        finetuned: list[StateDict],
        params: Mapping[str, Any] | MergeParams | None = None,
        keys: KeyFilter | None = None,
    ) -> StateDict:
        return self.merge_task_vectors(base, task_vectors(base, finetuned, keys), params)

    def merge_task_vectors(
        self, base: StateDict, taus: list[StateDict], params: Mapping[str, Any] | MergeParams | None = None
    ) -> StateDict:
        """``base`` plus the combined update of the task vectors ``taus`` (all with the same keys)."""
        p = self.parse(params)
        return add_update(base, {k: self.combine_key(k, [t[k] for t in taus], p) for k in taus[0]})

    def merge_tensor(self, key: str, base: torch.Tensor, finetuned: Iterable[torch.Tensor], params: MergeParams) -> torch.Tensor:
        """One merged tensor, ``base + combine_key(key, [x_t - base])``, in the inputs' dtype.

        ``params`` is already parsed (:meth:`parse`); the caller casts the inputs (float32 for the
        same numbers as :meth:`__call__`) and the result. ``finetuned`` is iterated once, so a lazy
        iterable holds one fine-tuned tensor at a time beside the updates.
        """
        return self.merge_deltas(key, base, [x - base for x in finetuned], params)

    def merge_deltas(self, key: str, base: torch.Tensor, deltas: list[torch.Tensor], params: MergeParams,
                     factors: list[Any] | None = None) -> torch.Tensor:  # fmt: skip
        """``base + combine_key(key, deltas)`` from the updates ``deltas`` themselves, so a caller
        that keeps the task vectors (and their :meth:`factor` s, ``factors``) merges without
        re-reading the fine-tunes. Neither ``deltas`` nor ``factors`` is changed."""
        if factors is None:
            return base + self.combine_key(key, deltas, params)
        return base + self.combine_factored(key, deltas, factors, params)

    def factor(self, key: str, delta: torch.Tensor) -> Any:
        """Work on one task's update of ``key`` that no parameter changes, so a caller merging the
        same sources many times can do it once and cache it (TSV: the SVD). None: nothing to cache."""
        return None

    def combine_factored(self, key: str, deltas: list[torch.Tensor], factors: list[Any], params: Any) -> torch.Tensor:
        """:meth:`combine_key` given ``factors[t] = factor(key, deltas[t])``, the same numbers."""
        return self.combine_key(key, deltas, params)

    @abstractmethod
    def combine_key(self, key: str, deltas: list[torch.Tensor], params: Any) -> torch.Tensor:
        """The merged update of parameter ``key`` from the tasks' updates ``deltas``."""


MERGE_METHODS: Registry[MergeMethod] = Registry("merge method")

M = TypeVar("M", bound=type[MergeMethod])


def register_method(cls: M) -> M:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    MERGE_METHODS.register(cls.name)(cls())
    return cls
