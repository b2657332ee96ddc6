"""Item sets (stable ids, splits, read from JSONL / CSV / parquet through a ``format`` block) and the
scorers that give a model's per-item answers on them (classification, multiple choice, generation)."""

from evomerge.items.builtin import builtin_items, task_items
from evomerge.items.readers import READERS, ItemReader, load_items
from evomerge.items.records import (
    ClassificationFormat,
    GenerationFormat,
    Item,
    ItemSet,
    MultipleChoiceFormat,
    doc_hash,
    parse_format,
    prompt_hash,
)
from evomerge.items.scorers import SCORERS, ScoreResult, Scorer, make_scorer

__all__ = [
    "READERS", "SCORERS", "ClassificationFormat", "GenerationFormat", "Item", "ItemReader", "ItemSet",
    "MultipleChoiceFormat", "ScoreResult", "Scorer", "builtin_items", "doc_hash", "load_items", "make_scorer",
    "parse_format", "prompt_hash", "task_items",
]
