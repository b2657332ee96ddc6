"""Byte sizes as users write them (``5GB``, ``500MB``, ``2GiB``): parsed without importing torch, so
the command line can show its defaults cheaply."""

from __future__ import annotations

import re

from evomerge.errors import UserError

DEFAULT_SHARD_SIZE = "5GB"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}  # fmt: skip


def parse_size(text: str | int, field: str = "--max-shard-size") -> int:
    """Bytes in ``text``: an integer, or a number with a unit (``500MB``, ``2GiB``, ``5G``)."""
    if isinstance(text, int):
        size = text
    else:
        m = _SIZE.match(str(text))
        unit = (m.group(2) or "").upper() if m else None
        if not m or unit not in _UNITS:
            raise UserError(f"{field}: expected a size such as 5GB, 500MB or 2GiB, got {text!r}")
        size = int(float(m.group(1)) * _UNITS[unit])
    if size <= 0:
        raise UserError(f"{field}: expected a positive size, got {text!r}")
    return size
