"""Item bank files (``item_banks/NAME.json``): calibrated 2PL items by stable id, validated on load.

A bank holds the format version, the model and its convention (see
:mod:`evomerge.fitness.irt.model`), the number of ability dimensions, the task split, the items
(id ``dataset/condition/split/index/hash10``, a, b, flags), the runs it was fitted on with the
hashes of their files, the fit diagnostics and the backend. :func:`load_bank` validates with
pydantic and turns every problem into a :class:`~evomerge.errors.ConfigError` naming the file,
the field and the reason.

Format 2 adds ``dim`` and the model ``mirt`` (P = σ(a·θ − ‖a‖ b), ``a`` a list of D loadings,
``b`` the multidimensional difficulty); ``2pl`` items keep a scalar ``a > 0``. Format 1 files
(always ``2pl``, no ``dim``) still load.

Format 3 admits any item id (a log's ``doc_hash``, a table's own ids; run banks keep the pattern
above), sources that are log files (``reader``, no item list hash), each item's ``prompt_hash``
where the log gave one, the bank's ``fingerprint`` (:func:`prompt_fingerprint`, a record of the
items and prompts it was calibrated on) and ``origin``
(reader, filter, metric, n-shot, harness version, binarisation rule). :func:`check_items` compares a
bank with the items a candidate is to be scored on.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evomerge.errors import ConfigError
from evomerge.fitness.calibrate import Calibration
from evomerge.fitness.irt.model import ItemParams
from evomerge.fitness.responses import ResponseMatrix
from evomerge.items.records import hash_string

FORMAT_VERSION = 3
CONVENTION = "P = sigmoid(a * (theta - b))"
MIRT_CONVENTION = "P = sigmoid(a . theta - |a| * b)"
ITEM_ID = r"^[^/\s]+/[^/\s]+/[^/\s]+/\d+/[0-9a-f]{10}$"
SHA256 = r"^[0-9a-f]{64}$"


#: Location tags pydantic adds for the members of ``BankItem.a``'s union, left out of error messages.
_UNION_TAGS = ("float", "list[float]")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class BankItem(_Strict):
    id: str = Field(min_length=1)
    a: float | list[float]
    b: float
    flags: list[Literal["all_correct", "all_wrong", "unanswered"]] = []
    prompt_hash: str | None = Field(None, pattern=SHA256)


class BankSource(_Strict):
    path: str
    responses_sha256: str = Field(pattern=SHA256)
    items_sha256: str | None = Field(pattern=SHA256)
    n_records: int = Field(ge=0)
    reader: str = "run"


class ItemBank(_Strict):
    """The validated content of an item bank file."""

    model_config = ConfigDict(ignored_types=(cached_property,))

    format_version: Literal[1, 2, 3]
    model: Literal["2pl", "mirt"] = "2pl"
    convention: Literal["P = sigmoid(a * (theta - b))", "P = sigmoid(a . theta - |a| * b)"] = CONVENTION
    dim: int = Field(default=1, ge=1)
    task: str
    split: Literal["val", "test"]
    backend: str
    items: list[BankItem] = Field(min_length=1)
    sources: list[BankSource]
    diagnostics: dict[str, float | int | bool | str | None] = {}
    fingerprint: str | None = Field(None, pattern=SHA256)
    origin: dict[str, float | int | bool | str | None] = {}

    @field_validator("items")
    @classmethod
    def _unique_ids(cls, items: list[BankItem]) -> list[BankItem]:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return items

    @model_validator(mode="after")
    def _run_ids(self) -> ItemBank:
        built_in = "/" in self.task  # a built-in task's dataset/condition; an item-file task keeps its file's ids
        if built_in and (self.format_version < 3 or all(s.reader == "run" for s in self.sources)):
            bad = next((k for k, i in enumerate(self.items) if not re.match(ITEM_ID, i.id)), None)
            if bad is not None:
                raise ValueError(f"items.{bad}.id: expected a run's item id (dataset/condition/split/index/hash10), "
                                 f"got {self.items[bad].id!r}")
        return self

    @model_validator(mode="after")
    def _consistent_model(self) -> ItemBank:
        mirt = self.model == "mirt"
        expected = (2, MIRT_CONVENTION, "a list of dim loadings with a nonzero norm") if mirt else \
            (1, CONVENTION, "a discrimination > 0")
        if self.format_version < expected[0] or self.convention != expected[1] or mirt != (self.dim > 1):
            raise ValueError(f"model {self.model!r} needs format_version >= {expected[0]}, convention "
                             f"{expected[1]!r} and dim {'> 1' if mirt else '1'}; got {self.format_version}, "
                             f"{self.convention!r}, dim {self.dim}")
        for k, item in enumerate(self.items):
            a = np.atleast_1d(np.asarray(item.a, dtype=float))
            ok = (isinstance(item.a, list) and len(a) == self.dim and np.linalg.norm(a) > 0) if mirt \
                else (not isinstance(item.a, list) and a[0] > 0)
            if not ok:
                raise ValueError(f"items.{k}.a: expected {expected[2]} for model {self.model!r}, got {item.a!r}")
        return self

    @cached_property
    def params(self) -> ItemParams:
        return ItemParams(np.array([i.a for i in self.items]), np.array([i.b for i in self.items]))

    @property
    def item_ids(self) -> list[str]:
        return [i.id for i in self.items]

    @property
    def prompt_hashes(self) -> list[str | None]:
        return [i.prompt_hash for i in self.items]


def prompt_fingerprint(ids: Sequence[str], prompt_hashes: Sequence[str | None]) -> str:
    """SHA-256 over the sorted lines ``id<TAB>prompt_hash`` (empty where unknown): equal for the same
    items with the same prompts, in any order."""
    lines = sorted(f"{i}\t{p or ''}" for i, p in zip(ids, prompt_hashes))
    return hash_string("\n".join(lines))


def check_items(bank: ItemBank, bank_path: str | Path, items: Mapping[str, str | None]) -> None:
    """Exit 2 unless ``items`` (id -> prompt hash, None where unknown) are the bank's items with the
    same prompts where both sides know them; the error names the items that differ."""
    if bank.fingerprint == prompt_fingerprint(list(items), list(items.values())):
        return
    missing = [i for i in bank.item_ids if i not in items]
    extra = [i for i in items if i not in set(bank.item_ids)]
    changed = [i.id for i in bank.items if i.id in items and None not in (i.prompt_hash, items[i.id])
               and i.prompt_hash != items[i.id]]
    problems = [f"{len(ids)} {what} (first {ids[0]!r})" for ids, what in
                ((missing, "bank items not among the items"), (extra, "items not in the bank"),
                 (changed, "items whose prompt differs from the one the bank was calibrated on")) if ids]
    if problems:
        raise ConfigError(str(bank_path), "items", "the items the candidate is scored on, with the same prompts",
                          "; ".join(problems))


def bank_from_calibration(calibration: Calibration, matrix: ResponseMatrix) -> ItemBank:
    """Assemble a bank from a calibration of ``matrix``."""
    params = calibration.fit.params
    hashes = [i.prompt_hash for i in matrix.item_info] if matrix.item_info else [None] * len(matrix.item_ids)
    items = [BankItem(id=i, a=a.tolist() if params.dim > 1 else float(a), b=float(b), flags=f, prompt_hash=h)
             for i, a, b, f, h in zip(matrix.item_ids, params.a, params.b, calibration.flags, hashes)]
    diagnostics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in calibration.diagnostics.items()}
    mirt = params.dim > 1
    return ItemBank(format_version=FORMAT_VERSION, model="mirt" if mirt else "2pl",
                    convention=MIRT_CONVENTION if mirt else CONVENTION, dim=params.dim, task=matrix.task, split=matrix.split,
                    backend=calibration.fit.backend, items=items,
                    sources=[BankSource(**vars(s)) for s in matrix.sources], diagnostics=diagnostics,
                    fingerprint=prompt_fingerprint(matrix.item_ids, hashes), origin=matrix.info)


def save_bank(bank: ItemBank, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(bank.model_dump_json(indent=1) + "\n")
    return path


def load_bank(path: str | Path, task_item_ids: Sequence[str] | None = None) -> ItemBank:
    """Read and validate a bank; with ``task_item_ids`` its items must be exactly those, in order."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(str(path), "(file)", "an item bank JSON file", "no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(str(path), "(file)", "valid JSON", str(err)) from None
    try:
        bank = ItemBank.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        field = ".".join(str(k) for k in first["loc"] if k not in _UNION_TAGS) or "(root)"
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise ConfigError(str(path), field, first["msg"] + more, first.get("input") if first["loc"] else None) from None
    if task_item_ids is not None and bank.item_ids != list(task_item_ids):
        ids, task_ids = bank.item_ids, list(task_item_ids)
        k = next((i for i, (x, y) in enumerate(zip(ids, task_ids)) if x != y), min(len(ids), len(task_ids)))
        got = f"{len(ids)} items; first difference at position {k}: " \
              f"bank {ids[k] if k < len(ids) else None!r}, task {task_ids[k] if k < len(task_ids) else None!r}"
        raise ConfigError(str(path), "items", f"the task's {len(task_ids)} item ids in order", got)
    return bank
