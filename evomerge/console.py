"""Console output: rich on a terminal, plain unwrapped lines otherwise (logs, CI, pipes)."""

from __future__ import annotations

import sys

from rich.console import Console

#: Messages and progress go to stderr so stdout stays clean for JSON output.
console = Console(stderr=True, soft_wrap=True, log_path=False)
#: Tables and results; wide when not on a terminal so piped tables are not truncated.
stdout = Console(width=None if sys.stdout.isatty() else 160)


def log(message: str) -> None:
    """One timestamped line."""
    console.log(message)
