"""Item-file readers (``jsonl``, ``csv``, ``parquet``) behind one interface, and :func:`load_items`.

A reader yields ``(where, record)`` pairs, ``where`` naming the file and line (or row) so that every
problem with a record is reported there. :func:`load_items` maps each record's fields through the
``format`` block (:mod:`evomerge.items.records`), checks them, gives each item its id and split.
"""

from __future__ import annotations

import csv
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from evomerge.errors import ConfigError, UserError, read_text
from evomerge.items.records import (
    ClassificationFormat,
    GenerationFormat,
    Item,
    ItemSet,
    MultipleChoiceFormat,
    assign_splits,
    doc_hash,
    parse_format,
    split_name,
)
from evomerge.registry import Registry

Record = tuple[str, dict[str, Any]]


class ItemReader(ABC):
    """Reads one file format into records (one mapping per item)."""

    name: str
    suffixes: tuple[str, ...] = ()

    @abstractmethod
    def records(self, path: Path) -> Iterator[Record]:
        """``(where, record)`` for each item, ``where`` = ``file:line`` or ``file:row``."""


READERS: Registry[ItemReader] = Registry("item-file reader")


def register(name: str, *suffixes: str):
    def deco(cls: type[ItemReader]) -> type[ItemReader]:
        cls.name, cls.suffixes = name, suffixes
        READERS.register(name)(cls())
        return cls

    return deco


@register("jsonl", ".jsonl", ".json")
class JsonlReader(ItemReader):
    """One JSON object per line; blank lines are skipped."""

    def records(self, path: Path) -> Iterator[Record]:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ConfigError(where, "<line>", f"one JSON object ({exc.msg} at column {exc.colno})") from None
                if not isinstance(record, dict):
                    raise ConfigError(where, "<line>", "one JSON object", type(record).__name__)
                yield where, record


@register("csv", ".csv", ".tsv")
class CsvReader(ItemReader):
    """A header row naming the fields, then one item per row (``.tsv``: tab-separated).

    Cells are strings; a list (``choices``, a tensor ``input``) is written as JSON in its cell; an
    empty cell is a missing value.
    """

    def records(self, path: Path) -> Iterator[Record]:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            header = next(reader, None)
            if not header:
                raise ConfigError(f"{path}:1", "<header>", "a header row naming the fields")
            start = reader.line_num
            for row in reader:
                where = f"{path}:{start + 1}"
                start = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(header):
                    raise ConfigError(where, "<row>", f"{len(header)} cells like the header", len(row))
                yield where, {k: (v if v != "" else None) for k, v in zip(header, row)}


@register("parquet", ".parquet")
class ParquetReader(ItemReader):
    """A parquet table (read with pyarrow), one item per row; ``where`` names the row (1-based)."""

    def records(self, path: Path) -> Iterator[Record]:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as exc:  # noqa: BLE001 - any pyarrow failure means an unreadable file
            raise ConfigError(str(path), "<file>", f"a parquet file ({exc})") from None
        for i, record in enumerate(table.to_pylist(), 1):
            yield f"{path}:row {i}", record


def format_block(spec: str) -> tuple[Any, str]:
    """A ``--format`` argument: a YAML file holding the block (or a space-like file with a ``format``
    key), or the block inline. Returns the block and the name errors should cite."""
    import yaml

    path = Path(spec)
    try:
        is_file = path.is_file()
    except OSError:  # an inline block longer than a file name may be (ENAMETOOLONG) is not a file
        is_file = False
    source = spec if is_file else "--format"
    try:
        block = yaml.safe_load(read_text(path, "a format block") if is_file else spec)
    except yaml.YAMLError as exc:
        raise ConfigError(source, "<yaml>", f"valid YAML ({getattr(exc, 'problem', exc)})") from None
    if isinstance(block, dict) and "format" in block and "type" not in block:
        block = block["format"]
    return block, source


def reader_for(path: Path, name: str | None = None) -> ItemReader:
    """The reader named ``name``, else the one whose suffix the file has."""
    if name is not None:
        return READERS.get(name)
    for reader_name in READERS:
        reader = READERS.get(reader_name)
        if path.suffix.lower() in reader.suffixes:
            return reader
    raise UserError(f"{path}: unknown item-file type '{path.suffix}'; name a reader ({', '.join(READERS.names())})")


def _field(record: Mapping[str, Any], name: str, where: str) -> Any:
    if name not in record or record[name] is None:
        raise ConfigError(where, name, "a value (the format block names this field)")
    return record[name]


def _json_cell(value: Any) -> Any:
    """A CSV cell holding a JSON list or number becomes that value."""
    if isinstance(value, str) and value.strip()[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _integer(value: Any, where: str, name: str, expected: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
        raise ConfigError(where, name, expected, value)
    return int(value)


def _classification(fmt: ClassificationFormat, rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    import numpy as np
    import torch

    raw = _json_cell(_field(rec, fmt.input, where))
    if isinstance(raw, str):
        x: Any = raw
    else:
        try:
            arr = np.asarray(raw, dtype=np.float32)
        except (TypeError, ValueError):
            raise ConfigError(where, fmt.input, "a text or a (nested) list of numbers of one shape", raw) from None
        if arr.ndim == 0 or not np.isfinite(arr).all():
            raise ConfigError(where, fmt.input, "a text or a (nested) list of finite numbers", raw)
        x = torch.from_numpy(arr)
    label = _integer(_field(rec, fmt.label, where), where, fmt.label, "an integer class label")
    if label < 0:
        raise ConfigError(where, fmt.label, "a class label >= 0", label)
    return {"input": x, "label": label}


def _multiple_choice(fmt: MultipleChoiceFormat, rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    context = _field(rec, fmt.context, where)
    if not isinstance(context, str):
        raise ConfigError(where, fmt.context, "a text", context)
    choices = _json_cell(_field(rec, fmt.choices, where))
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ConfigError(where, fmt.choices, "a list of two or more non-empty texts", choices)
    gold = _field(rec, fmt.gold, where)
    if isinstance(gold, str) and gold in choices:  # lm-eval: a string target is looked up among the choices
        index = choices.index(gold)
    else:
        index = _integer(gold, where, fmt.gold, "an index into the choices or one of the choice texts")
    if not 0 <= index < len(choices):
        raise ConfigError(where, fmt.gold, f"an index below {len(choices)} (the number of choices)", gold)
    return {"context": context, "choices": tuple(choices), "gold": index}


def _generation(fmt: GenerationFormat, rec: Mapping[str, Any], where: str) -> dict[str, Any]:
    prompt = _field(rec, fmt.prompt, where)
    if not isinstance(prompt, str) or not prompt:
        raise ConfigError(where, fmt.prompt, "a non-empty text", prompt)
    target = _field(rec, fmt.target, where)
    if isinstance(target, list):  # lm-eval's multiple targets: correct when any matches
        if not target or not all(isinstance(t, (str, int, float)) for t in target):
            raise ConfigError(where, fmt.target, "a text, a number or a non-empty list of them", target)
        targets = tuple(str(t) for t in target)
    elif isinstance(target, (str, int, float)) and not isinstance(target, bool):
        if isinstance(target, float) and not math.isfinite(target):
            raise ConfigError(where, fmt.target, "a text or a finite number", target)
        targets = (str(target),)  # lm-eval casts the target to the response's type (str)
    else:
        raise ConfigError(where, fmt.target, "a text, a number or a list of them", target)
    return {"prompt": prompt, "targets": targets}


_CONVERT = {"classification": _classification, "multiple_choice": _multiple_choice, "generation": _generation}


def load_items(
    path: str | Path,
    format: Mapping[str, Any] | ClassificationFormat | MultipleChoiceFormat | GenerationFormat,
    *,
    reader: str | None = None,
    seed: int = 0,
    val_fraction: float = 0.5,
    name: str | None = None,
) -> ItemSet:
    """Read an item file through its ``format`` block into an :class:`ItemSet`.

    Every problem raises :class:`~evomerge.errors.ConfigError` naming the file and line (or row) and
    the field: a malformed line, a missing field, a value of the wrong kind, a duplicate id.
    """
    path = Path(path)
    fmt = parse_format(format, str(path))
    if not path.is_file():
        raise ConfigError(str(path), "<file>", "an existing item file")
    if not 0.0 <= val_fraction <= 1.0:
        raise ConfigError(str(path), "val_fraction", "a fraction in [0, 1]", val_fraction)
    convert = _CONVERT[fmt.type]
    ids, declared, fields, wheres, docs = [], [], [], [], []
    for where, rec in reader_for(path, reader).records(path):
        fields.append(convert(fmt, rec, where))
        given = rec.get(fmt.id)
        ids.append(str(given) if given not in (None, "") else doc_hash(rec))
        declared.append(split_name(rec.get(fmt.split), where, fmt.split))
        wheres.append(where)
        docs.append(rec)
    if not ids:
        raise ConfigError(str(path), "<file>", "at least one item")
    splits = assign_splits(ids, declared, seed, val_fraction)
    items = tuple(Item(*row) for row in zip(ids, splits, fields, wheres, docs))
    return ItemSet(name or path.stem, fmt, items)
