"""Tensors read one at a time from a checkpoint folder or file, in the dtype they are stored in.

A :class:`TensorSource` answers names, shapes and dtypes from the files' headers alone and reads a
tensor's bytes only when asked (:meth:`TensorSource.get`), so a merge can walk a model name by name
holding one tensor per source. Formats:

* ``model.safetensors`` or a sharded ``model.safetensors.index.json`` (its ``weight_map`` names the
  shard of each tensor), read with :func:`safetensors.safe_open` (memory-mapped). ``safe_open``'s
  tensors are views of the file's private mapping, and every page a merge touches would stay in the
  process's resident set (so RSS would grow to the sources' total size) and an in-place op would
  change what a later read returns. :meth:`TensorSource.get` therefore opens the shard, copies the one
  tensor out and unmaps the shard again: what stays resident is the copy;
* ``pytorch_model.bin`` or ``pytorch_model.bin.index.json``, read with
  ``torch.load(weights_only=True, mmap=True)``: never an unrestricted unpickle, and a zip
  checkpoint's storages stay on disk until a tensor is touched (the mapping stays open for the
  source's life, so pages read from it stay resident, file-backed).

Every unreadable or inconsistent file raises :class:`~evomerge.errors.UserError` naming the file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from evomerge.errors import UserError

SAFETENSORS_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}  # fmt: skip

SAFE_SINGLE, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN_SINGLE, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
#: A repeated block in a tensor name: ``model.layers.3.mlp...`` (Llama, Mistral, Qwen...), ``h.3``
#: (GPT-2), ``encoder.layer.3`` (BERT), ``blocks.3``.
LAYER = re.compile(r"^(?P<prefix>(?:.*\.)?(?:layers|layer|h|blocks))\.(?P<index>\d+)\.(?P<rest>.+)$")


@dataclass(frozen=True)
class TensorInfo:
    """What a header says about one tensor."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    file: Path

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def nbytes_as(self, dtype: torch.dtype | None) -> int:
        """Bytes this tensor takes in ``dtype`` (its stored dtype when None or not floating point)."""
        if dtype is None or not self.dtype.is_floating_point:
            return self.nbytes
        return self.numel * dtype.itemsize


class TensorSource:
    """The tensors of one checkpoint (a model folder, or one ``.safetensors`` / ``.bin`` file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.files = self._files(self.path)
        self._handles: dict[Path, Any] = {}
        self.infos: dict[str, TensorInfo] = {}
        for f in self.files:
            for info in self._header(f):
                if info.name in self.infos:
                    raise UserError(f"{f}: tensor '{info.name}' is also in {self.infos[info.name].file}")
                self.infos[info.name] = info
        self._check_index()

    # -- locating files ---------------------------------------------------------------------------
    def _files(self, path: Path) -> list[Path]:
        if path.is_file():
            self._weight_map = None
            return [path]
        if not path.is_dir():
            raise UserError(f"{path}: no such model folder or checkpoint file")
        for index_name in (SAFE_INDEX, BIN_INDEX):
            index = path / index_name
            if index.exists():
                try:
                    weight_map = json.loads(index.read_text())["weight_map"]
                    if not isinstance(weight_map, dict):
                        raise TypeError("weight_map is not an object")
                except (OSError, ValueError, KeyError, TypeError) as e:
                    raise UserError(f"{index}: not a checkpoint index with a 'weight_map' object ({e})") from None
                self._weight_map = {str(k): path / str(v) for k, v in weight_map.items()}
                files = sorted(set(self._weight_map.values()))
                for f in files:
                    if not f.exists():
                        raise UserError(f"{index}: shard {f.name} is listed but missing")
                return files
        self._weight_map = None
        for single in (SAFE_SINGLE, BIN_SINGLE):
            if (path / single).exists():
                return [path / single]
        raise UserError(f"{path}: no {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX}")

    def _check_index(self) -> None:
        if self._weight_map is None:
            return
        for name, f in self._weight_map.items():
            info = self.infos.get(name)
            if info is None:
                raise UserError(f"{f}: the index lists tensor '{name}' in this shard but the shard lacks it")
            if info.file != f:
                raise UserError(f"{self.path}: the index puts '{name}' in {f.name}, but it is in {info.file.name}")

    # -- headers and reads ------------------------------------------------------------------------
    def _open(self, f: Path) -> Any:
        if f.suffix == ".safetensors":  # not kept: see the module docstring
            try:
                return safe_open(str(f), framework="pt", device="cpu")
            except (SafetensorError, OSError) as e:
                raise UserError(f"{f}: unreadable safetensors file (truncated or corrupt?): {e}") from None
        if f not in self._handles:
            try:
                sd = torch.load(str(f), map_location="cpu", weights_only=True, mmap=True)
            except Exception as e:  # noqa: BLE001 — the unpickler raises many kinds; all mean 'bad file'
                raise UserError(f"{f}: unreadable torch checkpoint (weights_only load failed): {e}") from None
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise UserError(f"{f}: a torch checkpoint that is not a flat dict of tensors")
            self._handles[f] = sd
        return self._handles[f]

    def _header(self, f: Path) -> list[TensorInfo]:
        h = self._open(f)
        out = []
        if isinstance(h, dict):
            for name, t in h.items():
                out.append(TensorInfo(name, tuple(t.shape), t.dtype, f))
            return out
        with h:
            for name in h.keys():
                sl = h.get_slice(name)
                code = sl.get_dtype()
                if code not in SAFETENSORS_DTYPES:
                    raise UserError(f"{f}: tensor '{name}' has dtype {code}, which evomerge does not read")
                out.append(TensorInfo(name, tuple(sl.get_shape()), SAFETENSORS_DTYPES[code], f))
        return out

    def names(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def info(self, name: str) -> TensorInfo:
        try:
            return self.infos[name]
        except KeyError:
            raise UserError(f"{self.path}: no tensor '{name}'") from None

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Tensor ``name``, read from disk now into memory of its own, in its stored dtype or ``dtype``
        (floating-point tensors only; others keep theirs)."""
        info = self.info(name)
        h = self._open(info.file)

        def own(t: torch.Tensor) -> torch.Tensor:
            if dtype is not None and t.is_floating_point() and t.dtype != dtype:
                return t.to(dtype)
            return t.clone()

        if isinstance(h, dict):
            return own(h[name])
        try:
            with h:
                return own(h.get_tensor(name))
        except (SafetensorError, OSError, RuntimeError) as e:
            raise UserError(f"{info.file}: cannot read tensor '{name}': {e}") from None

    def config(self) -> dict[str, Any]:
        """The folder's ``config.json`` ({} when there is none)."""
        f = self.path / "config.json" if self.path.is_dir() else self.path.parent / "config.json"
        if not f.exists():
            return {}
        try:
            cfg = json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{f}: not valid JSON ({e})") from None
        if not isinstance(cfg, dict):
            raise UserError(f"{f}: expected a JSON object")
        return cfg

    def close(self) -> None:
        self._handles.clear()


def is_vocab_tensor(source: TensorSource, name: str) -> bool:
    """A tensor with one row per token (embeddings, LM head): outside the repeated blocks, with
    ``shape[0]`` equal to the source's ``vocab_size``."""
    vocab = source.config().get("vocab_size")
    info = source.infos.get(name)
    return info is not None and LAYER.match(name) is None and vocab is not None and len(info.shape) >= 1 and info.shape[0] == vocab
