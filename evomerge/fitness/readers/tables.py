"""Plain tables of per-item results: long and wide (CSV, TSV, JSONL or parquet), and py-irt's JSONL.

- ``long``: one row per answer with fields ``model``, ``task``, ``item_id``, ``score``; rows of
  other tasks are skipped.
- ``wide``: one row per item, an ``item_id`` column and one column per model (an empty cell is a
  missing answer); a ``task`` column, if present, selects the task's rows.
- ``pyirt``: py-irt's format, one line per model: ``{"subject_id": ..., "responses": {item_id: 0/1}}``.

Item ids are the files' own, as text; scores follow the rule of :mod:`evomerge.fitness.readers.base`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from evomerge.errors import ConfigError, UserError
from evomerge.fitness.readers.base import MatrixBuilder, ReadOptions, RunReader, field_of, files_under, register, score
from evomerge.fitness.responses import ResponseMatrix
from evomerge.items.readers import READERS as ITEM_FILES
from evomerge.items.readers import reader_for


def _tables(paths: Sequence[Path], what: str) -> list[Path]:
    return [p for p in files_under(paths, "*", what) if p.suffix.lower() in {".csv", ".tsv", ".jsonl", ".parquet"}]


@register("long")
class LongReader(RunReader):
    """``model, task, item_id, score`` rows (module docstring)."""

    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        builder = MatrixBuilder(self.name, options)
        tasks: set[str] = set()
        for path in _tables(paths, "long tables (model, task, item_id, score)"):
            n = 0
            for where, rec in reader_for(path).records(path):
                task = str(field_of(rec, "task", where))
                tasks.add(task)
                if task != options.task:
                    continue
                row = builder.model(str(field_of(rec, "model", where)), str(path))
                builder.add(row, str(field_of(rec, "item_id", where)), score(field_of(rec, "score", where), where, "score",
                                                                             options), where)
                n += 1
            builder.source(path, n)
        if not builder.items and tasks:
            raise UserError(f"long: no rows of task '{options.task}'; the tables hold {', '.join(sorted(tasks))}")
        return builder.matrix()


@register("wide")
class WideReader(RunReader):
    """Items × models tables (module docstring)."""

    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        builder = MatrixBuilder(self.name, options)
        for path in _tables(paths, "wide tables (item_id, one column per model)"):
            n = 0
            for where, rec in reader_for(path).records(path):
                if "task" in rec and str(rec["task"]) != options.task:
                    continue
                item = str(field_of(rec, "item_id", where))
                for model, value in rec.items():
                    if model in ("item_id", "task") or value is None:
                        continue
                    builder.add(builder.model(model, str(path)), item, score(value, where, model, options), where)
                n += 1
            builder.source(path, n)
        return builder.matrix()


@register("pyirt")
class PyirtReader(RunReader):
    """py-irt JSONL (module docstring)."""

    def read(self, paths: Sequence[Path], options: ReadOptions) -> ResponseMatrix:
        builder = MatrixBuilder(self.name, options)
        for path in files_under(paths, "*.jsonl", "py-irt JSONL files"):
            n = 0
            for where, rec in ITEM_FILES.get("jsonl").records(path):
                responses = field_of(rec, "responses", where, "a mapping of item id to 0/1")
                if not isinstance(responses, dict):
                    raise ConfigError(where, "responses", "a mapping of item id to 0/1", responses)
                row = builder.model(str(field_of(rec, "subject_id", where)), str(path))
                for item, value in responses.items():
                    builder.add(row, str(item), score(value, where, f"responses.{item}", options), where)
                n += 1
            builder.source(path, n)
        return builder.matrix()
