"""Embedded datasets: scikit-learn's digits and procedurally generated MNIST-1D.

Both load offline. Raw arrays are cached on disk (``cache_dir()/data``) keyed by the
generation arguments, so a second load takes milliseconds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from evomerge.cache import cache_dir
from evomerge.registry import Registry


@dataclass(frozen=True)
class RawDataset:
    """All items of a dataset before splitting: x float32 with a channel axis, y int64."""

    name: str
    x: np.ndarray
    y: np.ndarray
    num_classes: int


DATASETS: Registry[Callable[[int], RawDataset]] = Registry("dataset")

#: MNIST-1D items generated per seed: 4,000 train + 5,000 validation + 5,000 test.
MNIST1D_SIZES = {"train": 4000, "val": 5000, "test": 5000}


def _cached(key: dict, make: Callable[[], tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir() / "data" / f"{key['name']}-{digest}.npz"
    if path.exists():
        with np.load(path) as f:
            return f["x"], f["y"]
    x, y = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x=x, y=y)
    tmp.replace(path)
    return x, y


@DATASETS.register("digits")
def load_digits(seed: int) -> RawDataset:
    """scikit-learn's bundled handwritten digits: 1,797 images of 8x8, scaled to [0, 1].

    The items are fixed; ``seed`` only affects the split (see :mod:`evomerge.data.splits`).
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    return RawDataset("digits", x, d.target.astype(np.int64), 10)


@DATASETS.register("mnist1d")
def load_mnist1d(seed: int) -> RawDataset:
    """MNIST-1D (Greydanus 2020, "Scaling down deep learning"), generated offline from ``seed``.

    Uses ``mnist1d.data.make_dataset`` with the paper's default arguments (templates with
    padding, shear, translation, correlated and i.i.d. noise; length 40), never the
    downloading ``get_dataset``. Generates ``sum(MNIST1D_SIZES)`` items.
    """
    n = sum(MNIST1D_SIZES.values())

    def make() -> tuple[np.ndarray, np.ndarray]:
        from mnist1d.data import get_dataset_args, make_dataset

        args = get_dataset_args()
        args.num_samples, args.seed, args.train_split = n, seed, 1.0
        state = np.random.get_state()  # make_dataset reseeds numpy's global generator
        try:
            d = make_dataset(args)
        finally:
            np.random.set_state(state)
        return d["x"].astype(np.float32)[:, None, :], d["y"].astype(np.int64)

    x, y = _cached({"name": "mnist1d", "n": n, "seed": seed, "version": 1}, make)
    return RawDataset("mnist1d", x, y, 10)


def load_raw(name: str, seed: int) -> RawDataset:
    """Load dataset ``name`` (raises UserError listing valid names when unknown)."""
    return DATASETS.get(name)(seed)
