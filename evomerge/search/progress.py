"""Live search progress: a rich bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from evomerge.console import console as default_console


def _fmt_duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class SearchProgress:
    """Evaluations done / budget, best and median of the primary objective, failures, ETA."""

    def __init__(self, total: int, done: int = 0, *, objective: str, direction: str,
                 values: list[float] | None = None, failures: int = 0, console: Console | None = None):
        self.console = console or default_console
        self.total, self.done, self.start_done = total, done, done
        self.objective, self.direction = objective, direction
        self.values = list(values or [])
        self.failures = failures
        self.start = time.perf_counter()
        self._bar: Progress | None = None
        self._task: Any = None

    def __enter__(self) -> SearchProgress:
        if self.console.is_terminal:
            self._bar = Progress(
                TextColumn("[bold]search"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                TextColumn("eta"), TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                console=self.console, transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("search", total=self.total, completed=self.done, stats=self.stats())
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def stats(self) -> str:
        if not self.values:
            best = median = "-"
        else:
            pick = max if self.direction == "max" else min
            best, median = f"{pick(self.values):.4g}", f"{statistics.median(self.values):.4g}"
        return f"{self.objective}: best {best} median {median} | failures {self.failures}"

    def eta_s(self) -> float | None:
        new = self.done - self.start_done
        if new <= 0:
            return None
        return (self.total - self.done) * (time.perf_counter() - self.start) / new

    def update(self, candidate_id: str, status: str, value: float | None) -> None:
        """Count one finished candidate (``value``: its primary objective, None if failed)."""
        self.done += 1
        if value is None:
            self.failures += 1
        else:
            self.values.append(value)
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, stats=self.stats())
            return
        eta = self.eta_s()
        shown = f"{value:.4g}" if value is not None else "-"
        self.console.print(
            f"[{self.done}/{self.total}] {candidate_id} {status} {self.objective}={shown} | {self.stats()}"
            f" | eta {_fmt_duration(eta) if eta is not None else '-'}",
            highlight=False, markup=False,
        )
