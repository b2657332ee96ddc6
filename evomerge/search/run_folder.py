"""The run folder on disk: space copy, evaluations log, summary, atomic JSON writes.

``evaluations.jsonl`` is appended and flushed per finished candidate; a line cut
short by a kill is dropped (and truncated away) when the folder is reopened.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import UserError, read_json  # noqa: F401  (read_json: also imported from here)

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
        """Every complete record. An unterminated last line (killed mid-write) is skipped, and with
        ``repair`` (the driver, before it appends again) also cut from the file."""
        if not self.evaluations_path.exists():
            return []
        data = self.evaluations_path.read_bytes()
        end = data.rfind(b"\n") + 1
        if repair and end < len(data):
            with open(self.evaluations_path, "r+b") as fh:
                fh.truncate(end)
        return [json.loads(line) for line in data[:end].splitlines() if line.strip()]

    def append(self, record: dict[str, Any]) -> None:
        with open(self.evaluations_path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
            fh.flush()

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
