"""The run folder on disk: space copy, evaluations log, summary, atomic JSON writes.

``evaluations.jsonl`` is appended and flushed per finished candidate; a line cut
short by a kill is dropped (and truncated away) when the folder is reopened.
``run.json`` records the SHA-256 of ``space.yaml`` as written at creation, so a
reopened folder whose space was edited is refused rather than resumed wrongly.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from evomerge.errors import UserError, read_json

if TYPE_CHECKING:
    from evomerge.search.space import SearchSpace

SPACE_FILE = "space.yaml"
EVALUATIONS_FILE = "evaluations.jsonl"
SUMMARY_FILE = "summary.json"
RUN_FILE = "run.json"
REPEAT_KEY = "repeat_of"  # a record that repeats an evaluated candidate's recipe (and result)


def evaluated(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records of candidates that were evaluated: repeats (``repeat_of``) left out."""
    return [r for r in records if REPEAT_KEY not in r]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, json.dumps(obj, indent=1).encode())


def differing_fields(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths (``genes[1].low``) where two parsed YAML documents differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [f for k in dict.fromkeys([*a, *b])
                for f in differing_fields(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [f for i, (x, y) in enumerate(zip(a, b)) for f in differing_fields(x, y, f"{prefix}[{i}]")]
    return [] if a == b else [prefix or "<root>"]


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
        write_json_atomic(self.path / RUN_FILE, {"space_sha256": self.space_digest()})
        self.evaluations_path.write_text("")

    def require_existing(self) -> None:
        if not self.space_path.exists():
            raise UserError(f"{self.path}: not a run folder (no {SPACE_FILE})")

    def require_resumable(self) -> None:
        """The folder holds a run whose ``space.yaml`` is the one it was created with.

        A folder written before ``run.json`` existed has no hash to check against."""
        self.require_existing()
        run_file = self.path / RUN_FILE
        if not run_file.exists():
            return
        try:
            recorded = read_json(run_file)["space_sha256"]
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{run_file}: not a run record (expected JSON with space_sha256)") from None
        if self.space_digest() != recorded:
            raise UserError(f"{self.space_path}: modified since the run was created (its SHA-256 differs from the "
                            f"one in {run_file}); restore it, or start a new run with the edited space")

    def space_digest(self) -> str:
        """SHA-256 of ``space.yaml`` as it is on disk."""
        return hashlib.sha256(self.space_path.read_bytes()).hexdigest()

    def check_same_space(self, space_yaml: str, given: str) -> None:
        """UserError unless ``space_yaml`` (the canonical dump of ``given``) is this run's space."""
        ours = self.space_path.read_text()
        if space_yaml == ours:
            return
        fields = differing_fields(yaml.safe_load(ours), yaml.safe_load(space_yaml)) or ["field order"]
        raise UserError(f"{given}: not the space of run {self.path} (differs from {self.space_path} in: "
                        f"{', '.join(fields)}); resume without --space (the run keeps its own copy; "
                        "--budget and --workers still apply) or start a new run")

    def load_space(self, known_models: set[str] | None = None) -> SearchSpace:
        """The run's own copy of its space (the folder must exist)."""
        from evomerge.search.space import load_space

        self.require_existing()
        return load_space(self.space_path, known_models)

    def read_evaluations(self, repair: bool = False) -> list[dict[str, Any]]:
        """Every complete record, repeats included (see :func:`read_json_lines`, :func:`evaluated`)."""
        return read_json_lines(self.evaluations_path, repair)

    def append(self, record: dict[str, Any]) -> None:
        append_json_line(self.evaluations_path, record)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json_atomic(self.summary_path, summary)
