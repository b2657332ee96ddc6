"""Deterministic stratified train / validation / test splits."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def stratified_split(y: np.ndarray, sizes: dict[str, int | float], seed: int) -> dict[str, np.ndarray]:
    """Index arrays for ``train``/``val``/``test``, stratified by label, fixed by ``seed``.

    ``sizes`` gives each split as a count or as a fraction of ``len(y)``. Indices within
    each split are sorted so item order is stable.
    """
    n = len(y)
    counts = {k: int(round(v * n)) if isinstance(v, float) else int(v) for k, v in sizes.items()}
    counts["train"] = n - counts["val"] - counts["test"] if "train" not in sizes else counts["train"]
    idx = np.arange(n)
    rest, test = train_test_split(idx, test_size=counts["test"], stratify=y, random_state=seed)
    train, val = train_test_split(rest, test_size=counts["val"], train_size=counts["train"], stratify=y[rest], random_state=seed + 1)
    return {"train": np.sort(train), "val": np.sort(val), "test": np.sort(test)}
