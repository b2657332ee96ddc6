"""Weight-space merges of models sharing one architecture, as pure functions on state dicts.

``merge(name, base, finetuned, params, keys)`` runs the method registered under ``name`` in
:data:`MERGE_METHODS` (``average``, ``task_arithmetic``, ``ties``, ``dare``, ``tsv``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evomerge.core.merge import average, dare, task_arithmetic, ties, tsv  # noqa: F401  (registration)
from evomerge.core.merge.base import MERGE_METHODS, MergeMethod, MergeParams, PerLayer, layer_value
from evomerge.core.merge.task_vectors import KeyFilter, StateDict, add_update, is_trunk_key, task_vectors


def merge(
    method: str,
    base: StateDict,
    finetuned: list[StateDict],
    params: Mapping[str, Any] | None = None,
    keys: KeyFilter | None = None,
) -> StateDict:
    """Merge ``finetuned`` (all fine-tuned from ``base``) with the method named ``method``."""
    return MERGE_METHODS.get(method)(base, finetuned, params, keys)


__all__ = [
    "MERGE_METHODS",
    "KeyFilter",
    "MergeMethod",
    "MergeParams",
    "PerLayer",
    "StateDict",
    "add_update",
    "is_trunk_key",
    "layer_value",
    "merge",
    "task_vectors",
]
