"""Console output: rich on a terminal, plain unwrapped lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console

#: Messages and progress go to stderr so stdout stays clean for JSON output.
console = Console(stderr=True, soft_wrap=True, log_path=False)
#: Tables and results; wide when not on a terminal so piped tables are not truncated.
stdout = Console(width=None if sys.stdout.isatty() else 160)


def log(message: str, *, to: Console = console) -> None:
    """One timestamped line: rich's log on a terminal; otherwise a plain line, never wrapped or padded."""
    if to.is_terminal:
        to.log(message, markup=False)
    else:
        to.print(f"[{time.strftime('%H:%M:%S')}] {message}", markup=False, highlight=False, soft_wrap=True)


def figure(value: float | None) -> str:
    """A number for people: whole numbers with thousands separators (12,345), small ones to four
    decimals (0.7864), others to one (123.4); None as '-'."""
    if value is None:
        return "-"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:.4f}" if abs(value) < 10 else f"{value:,.1f}"


class Steps:
    """Progress over ``total`` steps: a rich bar with elapsed time on a terminal, plain lines
    ``label [i/n] ...`` otherwise; ``quiet`` (or no steps) shows nothing."""

    def __init__(self, label: str, total: int, *, quiet: bool = False, console: Console = console):
        self.label, self.total, self.done, self.console = label, total, 0, console
        self.quiet = quiet or total == 0
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> Steps:
        if self.console.is_terminal and not self.quiet:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(TextColumn(f"[bold]{self.label}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("{task.description}"), console=self.console)
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    def _line(self, i: int, text: str) -> None:
        if not self.quiet:
            log(f"{self.label} [{i}/{self.total}] {text}", to=self.console)

    def begin(self, what: str) -> None:
        """Work on the next step starts: the bar's description, or a plain line."""
        if self._bar is not None:
            self._bar.update(self._task, description=what)
        else:
            self._line(self.done + 1, what)

    def advance(self, note: str | None = None) -> None:
        """A step finished; ``note`` is logged (above the bar on a terminal)."""
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done)
        if note:
            self._line(self.done, note)
