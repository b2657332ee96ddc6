"""Readers of past evaluations (``evomerge calibrate --from NAME``), one registry keyed by format:
``lm-eval`` and ``details`` (:mod:`.harness`), ``long``, ``wide`` and ``pyirt`` (:mod:`.tables`).
Each returns one task's :class:`~evomerge.fitness.responses.ResponseMatrix`; see docs/run_logs.md."""

from collections.abc import Sequence
from pathlib import Path

from evomerge.fitness.readers import harness, tables  # noqa: F401  (registration)
from evomerge.fitness.readers.base import READERS, ReadOptions, RunReader
from evomerge.fitness.responses import ResponseMatrix


def read_matrix(reader: str, paths: Sequence[str | Path], options: ReadOptions) -> ResponseMatrix:
    """The matrix of ``options.task`` read from ``paths`` by the reader named ``reader``."""
    return READERS.get(reader).read([Path(p) for p in paths], options)


__all__ = ["READERS", "ReadOptions", "RunReader", "read_matrix"]
