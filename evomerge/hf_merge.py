"""Weight-space merges of Hugging Face models of one architecture, from and to local directories, streamed.

The models' tensors are read one at a time from their checkpoints (:class:`~evomerge.io.tensors.TensorSource`),
merged per tensor by a registered method (:data:`evomerge.core.merge.MERGE_METHODS`, through
:func:`evomerge.recipe.stream.plan_recipe`) and written as sharded safetensors with the base's
``config.json`` and tokenizer (:func:`evomerge.recipe.stream.execute`). Every tensor of the checkpoint
is kept, a causal LM's ``lm_head`` included, so the class named in ``config.json``'s ``architectures``
(``LlamaForCausalLM``, ``BertForSequenceClassification`` ...) reloads it with ``from_pretrained``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from evomerge.core.merge import KeyFilter
from evomerge.errors import UserError
from evomerge.io.writer import parse_size
from evomerge.recipe.stream import execute, plan_recipe
from evomerge.sources.hf import HFSource


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
    auto_class: str | None = None,
    max_shard_size: str | int = "5GB",
    device: str = "cpu",
) -> Path:
    """Merge the models in ``finetuned`` (fine-tuned from ``base``) with ``method``; write to ``out``.

    ``auto_class`` is accepted for older callers and not needed: the output keeps the base's
    ``config.json``, whose ``architectures`` picks the class. Raises :class:`UserError` when a
    directory is not a model of the base's class and shapes, or ``out`` exists and is not empty.
    """
    base_arch = HFSource.open("merge_pretrained", "base", path=base).architecture
    for i, path in enumerate(finetuned):
        arch = HFSource.open("merge_pretrained", f"finetuned[{i}]", path=path).architecture
        if arch != base_arch:
            raise UserError(f"{path}: a {arch}, but the base {base} is a {base_arch}")
    plan = plan_recipe(method, base, finetuned, params, keys)
    return execute(plan, out, parse_size(max_shard_size), device=device, progress=False)
