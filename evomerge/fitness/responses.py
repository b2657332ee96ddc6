"""Per-item responses in a run folder: the writer the driver appends to, and the matrix reader.

Format (docs/CONTRACTS.md, "Run folder"):
- ``items/<dataset>__<condition>__<split>.json``: the ordered item ids of that task's split
  (a response's item index is a position in this list);
- ``responses.jsonl``: one line per (candidate, task) evaluation, appended and flushed:
  ``{"id", "task": "dataset/condition", "split": "val"|"test", "items": [int], "correct": "0110..."}``.
A candidate may have several lines for a task (an adaptive evaluation extended later); the reader
merges them, a later answer to the same item replacing an earlier one.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from evomerge.errors import UserError, read_json, read_text
from evomerge.io.files import file_sha256

RESPONSES_FILE = "responses.jsonl"
ITEMS_DIR = "items"
_PART = r"[A-Za-z0-9_.-]+"
#: A built-in task's ``dataset/condition``, or an item-file task's name.
_TASK_KEY = re.compile(rf"^{_PART}(/{_PART})?$")


class ResponseRecord(BaseModel):
    """One line of ``responses.jsonl``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    task: str = Field(pattern=_TASK_KEY.pattern)
    split: Literal["val", "test"]
    items: list[int]
    correct: str = Field(pattern=r"^[01]*$")

    @model_validator(mode="after")
    def _same_length(self) -> ResponseRecord:
        if len(self.items) != len(self.correct):
            raise ValueError(f"{len(self.items)} items but {len(self.correct)} answers")
        if self.items and min(self.items) < 0:
            raise ValueError("negative item index")
        return self


def items_filename(task_key: str, split: str) -> str:
    """``mnist1d/all`` + ``val`` -> ``mnist1d__all__val.json`` (a safe file name)."""
    if not _TASK_KEY.match(task_key):
        raise UserError(f"task '{task_key}': expected 'dataset/condition' or a task name (letters, digits, '_', '.', '-')")
    return f"{task_key.replace('/', '__')}__{split}.json"


class ResponseLog:
    """Appends response lines to ``<run_dir>/responses.jsonl`` and writes the item id lists."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        (self.run_dir / ITEMS_DIR).mkdir(parents=True, exist_ok=True)
        self._n_items: dict[tuple[str, str], int] = {}
        self._fh = (self.run_dir / RESPONSES_FILE).open("a", encoding="utf-8")

    def register_items(self, task_key: str, split: str, item_ids: Sequence[str]) -> None:
        """Write the task split's item ids; on resume they must equal those already written."""
        path = self.run_dir / ITEMS_DIR / items_filename(task_key, split)
        ids = list(item_ids)
        if path.exists():
            if read_json(path, "a run's item id list") != ids:
                raise UserError(f"{path}: item ids differ from the task's current items; the task data changed")
        else:
            path.write_text(json.dumps(ids))
        self._n_items[(task_key, split)] = len(ids)

    def append(self, candidate_id: str, task_key: str, split: str, items: Sequence[int],
               correct: Sequence[bool]) -> None:
        """Append one evaluation's answers (item indices into the registered list) and flush."""
        n = self._n_items.get((task_key, split))
        if n is None:
            raise ValueError(f"register_items({task_key!r}, {split!r}, ...) before appending responses")
        if any(not 0 <= int(i) < n for i in items):
            raise ValueError(f"item index out of range [0, {n}) for {task_key}/{split}")
        record = ResponseRecord(id=candidate_id, task=task_key, split=split, items=[int(i) for i in items],
                                correct="".join("1" if c else "0" for c in correct))
        self._fh.write(record.model_dump_json() + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> ResponseLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class SourceRun:
    """A run folder (``reader`` ``run``) or a log file (a reader of :mod:`evomerge.fitness.readers`) a
    matrix was read from, with hashes that pin the exact files (a log file has no separate item list)."""

    path: str
    responses_sha256: str
    items_sha256: str | None
    n_records: int
    reader: str = "run"


@dataclass(frozen=True)
class ItemInfo:
    """What a log says of an item beside its id: lm-eval's ``doc_id`` (a position, only a hint),
    ``prompt_hash`` (SHA-256 of the prompt the model saw) and ``target_hash``."""

    doc_id: int | None = None
    prompt_hash: str | None = None
    target_hash: str | None = None


@dataclass(frozen=True)
class ResponseMatrix:
    """Candidates × items answers of one task split: 1.0, 0.0 or NaN (not answered); a probability
    in between where a reader kept continuous scores. ``item_info`` (one per item) and ``info``
    (reader, filter, metric, n-shot, harness version, binarisation rule) come from log readers."""

    task: str
    split: str
    candidates: list[str]
    item_ids: list[str]
    values: np.ndarray
    sources: list[SourceRun]
    item_info: list[ItemInfo] | None = None
    info: dict[str, Any] = field(default_factory=dict)


def _records(path: Path) -> list[ResponseRecord]:
    """Parse ``responses.jsonl``; a torn last line (a crash mid-append, no newline) is skipped."""
    text = read_text(path, "a run's responses.jsonl")
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            records.append(ResponseRecord.model_validate_json(line))
        except ValidationError as err:
            if number == len(lines) and not text.endswith("\n"):
                break
            raise UserError(f"{path}:{number}: not a valid response record: {err.errors()[0]['msg']}") from None
    return records


def read_responses(run_dirs: Sequence[str | Path], task_key: str, split: str = "val") -> ResponseMatrix:
    """Dense matrix of one task split over the runs; rows are ``<run name>/<candidate id>``."""
    name = items_filename(task_key, split)
    rows: dict[str, dict[int, float]] = {}
    item_ids: list[str] | None = None
    sources = []
    for run in map(Path, run_dirs):
        if not run.is_dir():
            raise UserError(f"{run}: run folder not found")
        responses = run / RESPONSES_FILE
        if not responses.is_file():
            raise UserError(f"{run}: no {RESPONSES_FILE} in this run folder")
        records = [r for r in _records(responses) if r.task == task_key and r.split == split]
        if not records:
            continue
        items_path = run / ITEMS_DIR / name
        if not items_path.is_file():
            raise UserError(f"{items_path}: missing; it lists the items of {task_key} ({split})")
        ids = read_json(items_path, "a run's item id list")
        if item_ids is not None and ids != item_ids:
            raise UserError(f"{items_path}: item ids differ from the other runs' for {task_key} ({split})")
        item_ids = ids
        for record in records:
            if record.items and max(record.items) >= len(ids):
                raise UserError(f"{responses}: candidate '{record.id}' answers item {max(record.items)}, "
                                f"but {items_path} lists {len(ids)}")
            row = rows.setdefault(f"{run.name}/{record.id}", {})
            row.update(zip(record.items, map(float, record.correct)))
        sources.append(SourceRun(str(run), file_sha256(responses), file_sha256(items_path), len(records)))
    if item_ids is None:
        raise UserError(f"no responses for task '{task_key}' ({split}) in {', '.join(map(str, run_dirs))}")
    values = np.full((len(rows), len(item_ids)), np.nan)
    for r, answers in enumerate(rows.values()):
        values[r, list(answers)] = list(answers.values())
    return ResponseMatrix(task_key, split, list(rows), item_ids, values, sources)
