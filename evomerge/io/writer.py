"""A Hugging Face-standard sharded safetensors writer under a byte budget, inside a folder that
appears at its final path only once complete.

:class:`ShardedWriter` buffers tensors until the next one would take the buffer past
``max_shard_bytes`` (mergekit's ``TensorWriter`` rule, in bytes rather than parameters), then writes
the buffer as one shard and frees it; so at most one shard's worth of output is ever held. On
:meth:`ShardedWriter.finish` the shards are named ``model-0000i-of-0000N.safetensors`` and
``model.safetensors.index.json`` (``metadata.total_size`` and ``weight_map``) is written, as
``transformers``' ``save_pretrained`` does; one shard is plain ``model.safetensors``.

:func:`atomic_folder` gives a hidden temporary sibling of the output folder and renames it into
place only when the body finished; on any error it is removed. An interrupted process leaves at
most a ``.NAME.partial-PID`` folder, never a folder that looks like a finished model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import save_file

from evomerge.errors import UserError

#: The shard budget ``evomerge merge`` and ``evomerge export`` write under unless told otherwise.
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


class ShardedWriter:
    """Writes tensors into ``folder`` as byte-bounded safetensors shards plus an index."""

    def __init__(self, folder: str | Path, max_shard_bytes: int):
        self.folder = Path(folder)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[tuple[Path, list[str]]] = []
        self._names: set[str] = set()
        self.total_bytes = 0
        self.folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._names:
            raise ValueError(f"tensor '{name}' written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self.flush()
        self._names.add(name)
        self._buffer[name] = tensor.detach().to("cpu").contiguous()
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def flush(self) -> None:
        """Write the buffered tensors as the next shard and free them."""
        if not self._buffer:
            return
        path = self.folder / f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buffer, str(path), metadata={"format": "pt"})
        self._shards.append((path, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def finish(self) -> list[Path]:
        """Flush, give the shards their final names, write the index; the files written."""
        self.flush()
        n = len(self._shards)
        if n == 0:
            raise UserError("the merge produced no tensors")
        if n == 1:
            final = self.folder / "model.safetensors"
            self._shards[0][0].rename(final)
            return [final]
        weight_map: dict[str, str] = {}
        out = []
        for i, (path, names) in enumerate(self._shards):
            final = self.folder / f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            path.rename(final)
            out.append(final)
            weight_map.update({k: final.name for k in names})
        index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return out


@contextmanager
def atomic_folder(out: str | Path) -> Iterator[Path]:
    """A temporary folder renamed to ``out`` when the ``with`` body ends without error.

    ``out`` must not exist, or be an empty folder (a finished model is never overwritten).
    """
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out}: output folder exists and is not empty; choose a new --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        out.rmdir()
    tmp.rename(out)
