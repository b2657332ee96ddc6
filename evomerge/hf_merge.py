"""Weight-space merges of Hugging Face models of one architecture, from and to local directories.

Models are loaded through :class:`~evomerge.zoo.adapter.HFAdapter` (``AutoModel*.from_pretrained``,
local files only), merged as state dicts by any registered method
(:data:`evomerge.core.merge.MERGE_METHODS`), and the result is written with ``save_pretrained``
(safetensors) into the base model's class and config, so the same ``AutoModel*`` class reloads it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evomerge.core.merge import KeyFilter, merge
from evomerge.errors import UserError
from evomerge.zoo.adapter import HFAdapter


def exclude_prefixes(prefixes: Sequence[str]) -> KeyFilter:
    """Key filter that leaves out (keeps the base's) every entry under one of ``prefixes``
    (e.g. ``["classifier."]`` when each fine-tune has its own task head)."""
    return lambda key: not any(key.startswith(p) for p in prefixes)


def merge_pretrained(
    method: str,
    base: str | Path,
    finetuned: Sequence[str | Path],
    out: str | Path,
    params: Mapping[str, Any] | None = None,
    keys: KeyFilter | None = None,
    auto_class: str = "AutoModel",
) -> Path:
    """Merge the models in ``finetuned`` (fine-tuned from ``base``) with ``method``; save to ``out``.

    Raises :class:`UserError` when a directory is not a model of the base's class and shapes.
    """
    base_model = HFAdapter.from_pretrained(base, auto_class).module
    states = []
    for path in finetuned:
        model = HFAdapter.from_pretrained(path, auto_class).module
        if type(model) is not type(base_model):
            raise UserError(f"{path}: a {type(model).__name__}, but the base {base} is a {type(base_model).__name__}")
        states.append(model.state_dict())
    merged = merge(method, base_model.state_dict(), states, params, keys)
    base_model.load_state_dict(merged)
    out = Path(out)
    base_model.save_pretrained(str(out))
    return out
