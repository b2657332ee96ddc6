"""Where evomerge keeps what it computes once: generated data, trained zoo models."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$EVOMERGE_CACHE`` if set, else ``~/.cache/evomerge``."""
    root = os.environ.get("EVOMERGE_CACHE")
    path = Path(root) if root else Path.home() / ".cache" / "evomerge"
    path.mkdir(parents=True, exist_ok=True)
    return path
