"""The run folder on disk: space copy, evaluations log, summary, atomic JSON writes.

``evaluations.jsonl`` is appended and flushed per finished candidate; a line cut
short by a kill is dropped (and truncated away) when the folder is reopened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import UserError

if TYPE_CHECKING:
    from evomerge.search.space import SearchSpace

SPACE_FILE = "space.yaml"
EVALUATIONS_FILE = "evaluations.jsonl"
SUMMARY_FILE = "summary.json"


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=1).encode())


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def read_json_lines(path: Path, repair: bool = False) -> list[Any]:
    """Every complete JSON line of an appended log (none when it is missing). An unterminated
    last line (killed mid-write) is skipped, and with ``repair`` (the writer, before it appends
    again) also cut from the file. A complete line that is not JSON is a UserError naming it."""
    if not path.exists():
        return []
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if repair and end < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(end)
    out = []
    for number, line in enumerate(data[:end].splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except ValueError:
                raise UserError(f"{path}: line {number} is not JSON; the run folder is damaged") from None
    return out


def append_json_line(path: Path, record: Any) -> None:
    """Append one JSON line and flush it."""
    with open(path, "a") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


class RunFolder:
    """``runs/<name>/``: created fresh, or reopened for ``--resume``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def space_path(self) -> Path:
        return self.path / SPACE_FILE

    @property
    def evaluations_path(self) -> Path:
        return self.path / EVALUATIONS_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    def create(self, space_yaml: str) -> None:
        """A new run in a new or empty folder."""
        if self.path.exists() and any(self.path.iterdir()):
            raise UserError(f"{self.path}: run folder is not empty; pass --resume to continue it or another --run-dir")
        self.path.mkdir(parents=True, exist_ok=True)
        self.space_path.write_text(space_yaml)
        self.evaluations_path.write_text("")

    def require_existing(self) -> None:
        if not self.space_path.exists():
            raise UserError(f"{self.path}: not a run folder (no {SPACE_FILE})")

    def load_space(self, known_models: set[str] | None = None) -> SearchSpace:
        """The run's own copy of its space (the folder must exist)."""
        from evomerge.search.space import load_space

        self.require_existing()
        return load_space(self.space_path, known_models)

    def read_evaluations(self, repair: bool = False) -> list[dict[str, Any]]:
        """Every complete record (see :func:`read_json_lines`)."""
        return read_json_lines(self.evaluations_path, repair)

    def append(self, record: dict[str, Any]) -> None:
        append_json_line(self.evaluations_path, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
