"""Item bank files (``item_banks/NAME.json``): calibrated 2PL items by stable id, validated on load.

A bank holds the format version, the model and its convention (P = σ(a (θ − b)), see
:mod:`evomerge.fitness.irt.model`), the task split, the items (id ``dataset/condition/split/
index/hash10``, a, b, flags), the runs it was fitted on with the hashes of their files, the fit
diagnostics and the backend. :func:`load_bank` validates with pydantic and turns every problem
into a :class:`~evomerge.errors.ConfigError` naming the file, the field and the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evomerge.errors import ConfigError
from evomerge.fitness.calibrate import Calibration
from evomerge.fitness.irt.model import ItemParams
from evomerge.fitness.responses import ResponseMatrix

FORMAT_VERSION = 1
CONVENTION = "P = sigmoid(a * (theta - b))"
ITEM_ID = r"^[^/\s]+/[^/\s]+/[^/\s]+/\d+/[0-9a-f]{10}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


class BankItem(_Strict):
    id: str = Field(pattern=ITEM_ID)
    a: float = Field(gt=0)
    b: float
    flags: list[Literal["all_correct", "all_wrong", "unanswered"]] = []


class BankSource(_Strict):
    path: str
    responses_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    items_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    n_records: int = Field(ge=0)


class ItemBank(_Strict):
    """The validated content of an item bank file."""

    model_config = ConfigDict(ignored_types=(cached_property,))

    format_version: Literal[1]
    model: Literal["2pl"] = "2pl"
    convention: Literal["P = sigmoid(a * (theta - b))"] = CONVENTION
    task: str
    split: Literal["val", "test"]
    backend: str
    items: list[BankItem] = Field(min_length=1)
    sources: list[BankSource]
    diagnostics: dict[str, float | int | bool | str | None] = {}

    @field_validator("items")
    @classmethod
    def _unique_ids(cls, items: list[BankItem]) -> list[BankItem]:
        seen: set[str] = set()
        for item in items:
            if item.id in seen:
                raise ValueError(f"item id {item.id!r} appears twice")
            seen.add(item.id)
        return items

    @cached_property
    def params(self) -> ItemParams:
        return ItemParams(np.array([i.a for i in self.items]), np.array([i.b for i in self.items]))

    @property
    def item_ids(self) -> list[str]:
        return [i.id for i in self.items]


def bank_from_calibration(calibration: Calibration, matrix: ResponseMatrix) -> ItemBank:
    """Assemble a bank from a calibration of ``matrix``."""
    params = calibration.fit.params
    items = [BankItem(id=i, a=float(a), b=float(b), flags=f)
             for i, a, b, f in zip(matrix.item_ids, params.a, params.b, calibration.flags)]
    diagnostics = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                   for k, v in calibration.diagnostics.items()}
    return ItemBank(format_version=FORMAT_VERSION, task=matrix.task, split=matrix.split,
                    backend=calibration.fit.backend, items=items,
                    sources=[BankSource(**vars(s)) for s in matrix.sources], diagnostics=diagnostics)


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
        field = ".".join(map(str, first["loc"])) or "(root)"
        more = f" (and {err.error_count() - 1} more problems)" if err.error_count() > 1 else ""
        raise ConfigError(str(path), field, first["msg"] + more, first.get("input")) from None
    if task_item_ids is not None and bank.item_ids != list(task_item_ids):
        ids, task_ids = bank.item_ids, list(task_item_ids)
        k = next((i for i, (x, y) in enumerate(zip(ids, task_ids)) if x != y), min(len(ids), len(task_ids)))
        got = f"{len(ids)} items; first difference at position {k}: " \
              f"bank {ids[k] if k < len(ids) else None!r}, task {task_ids[k] if k < len(task_ids) else None!r}"
        raise ConfigError(str(path), "items", f"the task's {len(task_ids)} item ids in order", got)
    return bank
