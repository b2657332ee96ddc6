"""The reader interface, its options, and the matrix builder every reader fills.

A reader turns files of past evaluations into one :class:`~evomerge.fitness.responses.ResponseMatrix`
of one task: models × items, stable item ids, per-item :class:`~evomerge.fitness.responses.ItemInfo`.

Scores. Every score must be a number in [0, 1] (``true``/``false`` read as 1/0); anything else
is a :class:`~evomerge.errors.ConfigError` naming the file, line and field. The rule, the same
for every reader and every task: a score ``s`` becomes 1 when ``s >= threshold`` (default 0.5)
and 0 otherwise, so 0/1 metrics (``acc``, ``exact_match``) pass unchanged and a continuous
one (``f1``, a probability) is cut at the threshold; with ``keep_probabilities`` ``s`` itself is
kept as the probability of a correct answer (the ``mml`` backend fits such soft responses).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from evomerge.errors import ConfigError, UserError
from evomerge.fitness.responses import ItemInfo, ResponseMatrix, SourceRun
from evomerge.io.files import file_sha256
from evomerge.registry import Registry


class ReadOptions(BaseModel):
    """What to read: the task and, for logs with several, the filter and metric (lm-eval's names),
    the field to join leaderboard v1 rows on, and the binarisation rule (module docstring)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    task: str = Field(min_length=1)
    split: Literal["val", "test"] = "val"
    filter: str | None = None
    metric: str | None = None
    join_on: str | None = None
    threshold: float = Field(0.5, gt=0.0, le=1.0)
    keep_probabilities: bool = False

    def rule(self) -> str:
        return "kept as probabilities" if self.keep_probabilities else f"1 if score >= {self.threshold} else 0"


class RunReader(ABC):
    """Reads files of past evaluations into one task's response matrix."""

    name: str

    @abstractmethod
    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        """The matrix of ``options.task`` over ``paths`` (files or folders, as the reader documents)."""


READERS: Registry[RunReader] = Registry("run-log reader")


def register(name: str) -> Callable[[type[RunReader]], type[RunReader]]:
    def deco(cls: type[RunReader]) -> type[RunReader]:
        cls.name = name
        READERS.register(name)(cls())
        return cls

    return deco


def score(value: Any, where: str, field: str, options: ReadOptions) -> float:
    """A logged score as a response under the module's rule; ``where`` names file and line."""
    if isinstance(value, str):
        text = value.strip().lower()
        value = {"true": 1.0, "false": 0.0}.get(text, text)
        try:
            value = float(value)
        except ValueError:
            raise ConfigError(where, field, "a score in [0, 1]", value) from None
    if isinstance(value, bool):
        value = float(value)
    if not isinstance(value, (int, float)) or not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ConfigError(where, field, "a score in [0, 1] (a metric that is not a share correct cannot be a response)",
                          value)
    return float(value) if options.keep_probabilities else float(value >= options.threshold)


def field_of(record: dict[str, Any], name: str, where: str, expected: str = "a value") -> Any:
    """``record[name]``, or a ConfigError naming ``where`` and the missing field."""
    if record.get(name) is None:
        raise ConfigError(where, name, f"{expected} (the field is required)")
    return record[name]


def files_under(paths: Sequence[Path], pattern: str, what: str) -> list[Path]:
    """Each path as given if a file, else the files matching ``pattern`` below it, sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            found.extend(sorted(path.rglob(pattern)))
        else:
            raise UserError(f"{path}: no such file or folder ({what})")
    return found


class MatrixBuilder:
    """Collects (model, item, response) triples with their provenance into a :class:`ResponseMatrix`.

    Items keep the order of first appearance; a model answering an item twice, a model name read
    from two places, or an item whose ``prompt_hash`` differs between logs is a UserError."""

    def __init__(self, reader: str, options: ReadOptions):
        self.reader, self.options = reader, options
        self.rows: dict[str, dict[str, float]] = {}
        self.items: dict[str, ItemInfo] = {}
        self.item_where: dict[str, str] = {}
        self.model_source: dict[str, str] = {}
        self.sources: list[SourceRun] = []
        self.info: dict[str, Any] = {"reader": reader, "binarisation": options.rule()}

    def model(self, name: str, source: str) -> dict[str, float]:
        """The row of a new model; the same name from another source is an error."""
        if name in self.model_source and self.model_source[name] != source:
            raise UserError(f"model '{name}' read twice: from {self.model_source[name]} and {source}; "
                            "keep one log per model")
        self.model_source[name] = source
        return self.rows.setdefault(name, {})

    def add(self, row: dict[str, float], item_id: str, value: float, where: str, info: ItemInfo = ItemInfo()) -> None:
        if item_id in row:
            raise ConfigError(where, "item", "each item once per model (two rows have this id; identical "
                              "documents?)", item_id)
        known = self.items.get(item_id)
        if known is None:
            self.items[item_id], self.item_where[item_id] = info, where
        elif known.prompt_hash and info.prompt_hash and known.prompt_hash != info.prompt_hash:
            raise ConfigError(where, "prompt_hash", f"the prompt of item {item_id[:16]} as at {self.item_where[item_id]} "
                              "(a different n-shot, template or chat format?)", info.prompt_hash)
        row[item_id] = value

    def source(self, path: Path, n_records: int, items_file: Path | None = None) -> None:
        self.sources.append(SourceRun(str(path), file_sha256(path), items_file and file_sha256(items_file),
                                      n_records, self.reader))

    def matrix(self) -> ResponseMatrix:
        if not self.items:
            raise UserError(f"{self.reader}: no responses for task '{self.options.task}' in the files given")
        ids = list(self.items)
        index = {item: k for k, item in enumerate(ids)}
        values = np.full((len(self.rows), len(ids)), np.nan)
        for r, answers in enumerate(self.rows.values()):
            values[r, [index[i] for i in answers]] = list(answers.values())
        info = [self.items[i] for i in ids]
        return ResponseMatrix(self.options.task, self.options.split, list(self.rows), ids, values, self.sources,
                              info if any(i != ItemInfo() for i in info) else None, self.info)
