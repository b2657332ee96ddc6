"""Tasks: one split of one dataset under one condition, with stable item ids."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from evomerge.data.conditions import get_condition
from evomerge.data.datasets import MNIST1D_SIZES, load_raw
from evomerge.data.splits import SPLITS, stratified_split
from evomerge.errors import unknown_name

_SPLIT_SIZES: dict[str, dict[str, int | float]] = {
    "mnist1d": dict(MNIST1D_SIZES),
    "digits": {"val": 0.2, "test": 0.2},
}


@dataclass(frozen=True, eq=False)
class TaskData:
    """The items of one (dataset, condition, split): x float32, y int64, stable item ids."""

    dataset: str
    condition: str
    split: str
    x: torch.Tensor
    y: torch.Tensor
    item_ids: tuple[str, ...]
    num_classes: int

    @property
    def key(self) -> str:
        """``dataset/condition``: how runs, banks and recipes name a task."""
        return f"{self.dataset}/{self.condition}"

    def __len__(self) -> int:
        return len(self.y)


def item_id(dataset: str, condition: str, split: str, index: int, x: np.ndarray, y: int) -> str:
    """``dataset/condition/split/index/hash10``: the hash covers the item's content and label."""
    h = hashlib.sha1(np.ascontiguousarray(x).tobytes() + int(y).to_bytes(2, "little")).hexdigest()[:10]
    return f"{dataset}/{condition}/{split}/{index}/{h}"


def parse_task_key(key: str) -> tuple[str, str]:
    """Split ``dataset/condition`` (condition defaults to ``all``)."""
    dataset, _, condition = key.partition("/")
    return dataset, condition or "all"


@lru_cache(maxsize=64)
def load_task(dataset: str, condition: str = "all", split: str = "val", seed: int = 0) -> TaskData:
    """Load one task; cached per process so workers never rebuild data per candidate."""
    if split not in SPLITS:
        raise unknown_name("split", split, SPLITS)
    raw = load_raw(dataset, seed)
    cond = get_condition(dataset, condition)
    idx = stratified_split(raw.y, _SPLIT_SIZES[dataset], seed)[split]
    rng_seed = int.from_bytes(hashlib.sha1(f"{seed}/{dataset}/{condition}/{split}".encode()).digest()[:4], "little")
    x, y, _ = cond.apply(raw.x[idx], raw.y[idx], np.random.default_rng(rng_seed))
    ids = tuple(item_id(dataset, condition, split, i, x[i], y[i]) for i in range(len(y)))
    xt, yt = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y)
    xt.requires_grad_(False)
    return TaskData(dataset, condition, split, xt, yt, ids, cond.num_classes)
