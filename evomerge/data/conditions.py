"""Task conditions: named views of a dataset that select, transform or relabel items.

These are what task-conditioned alignment conditions on and what the zoo's task
distributions differ by. A condition is pure: the same items and seed give the same view.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from evomerge.errors import unknown_name


@dataclass(frozen=True)
class Condition:
    """A view of a dataset.

    kind: ``subset`` (keep ``classes``), ``transform`` (apply ``transform`` to x) or
    ``relabel`` (map labels through ``relabel``; ``num_classes`` changes).
    Every 10-class view keeps the global labels 0..9, so class subsets share one label space.
    """

    name: str
    kind: str
    description: str
    classes: tuple[int, ...] | None = None
    transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = field(default=None, compare=False)
    relabel: Callable[[np.ndarray], np.ndarray] | None = field(default=None, compare=False)
    num_classes: int = 10

    def apply(self, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return (x', y', kept_index) for the items of this view."""
        keep = np.arange(len(y))
        if self.classes is not None:
            keep = np.flatnonzero(np.isin(y, self.classes))
            x, y = x[keep], y[keep]
        if self.transform is not None:
            x = self.transform(x, rng).astype(np.float32)
        if self.relabel is not None:
            y = self.relabel(y).astype(np.int64)
        return x, y, keep


def _noise(sigma: float) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    return lambda x, rng: x + sigma * rng.standard_normal(x.shape).astype(np.float32)


def _roll(shift: int) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    return lambda x, rng: np.roll(x, shift, axis=-1)


def _mixture(*transforms: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
    """Each item gets one of ``transforms``, chosen uniformly at random (seeded)."""

    def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        which = rng.integers(0, len(transforms), len(x))
        out = x.copy()
        for k, t in enumerate(transforms):
            out[which == k] = t(x[which == k], rng)
        return out

    return apply


def _reverse(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x[..., ::-1].copy()


def _negate(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return -x


def _common() -> list[Condition]:
    return [
        Condition("all", "subset", "every item, labels 0-9"),
        Condition("classes_0_4", "subset", "items of classes 0-4", classes=(0, 1, 2, 3, 4)),
        Condition("classes_5_9", "subset", "items of classes 5-9", classes=(5, 6, 7, 8, 9)),
        Condition("parity", "relabel", "every item, labelled even (0) / odd (1)", relabel=lambda y: y % 2, num_classes=2),
    ]


_CONDITIONS: dict[str, list[Condition]] = {
    "mnist1d": _common()
    + [
        Condition("noise", "transform", "additive Gaussian noise, sigma 0.4", transform=_noise(0.4)),
        Condition("shift", "transform", "circular shift by 20 of 40 steps", transform=_roll(20)),
        Condition("reverse", "transform", "time reversal", transform=_reverse),
        Condition("negate", "transform", "sign flip", transform=_negate),
        Condition(
            "mixed", "transform", "each item clean, noisy, shifted, reversed or negated (uniform, seeded)",
            transform=_mixture(lambda x, rng: x, _noise(0.4), _roll(20), _reverse, _negate),
        ),
    ],
    "digits": _common()
    + [
        Condition("noise", "transform", "additive Gaussian noise, sigma 0.3", transform=_noise(0.3)),
        Condition("shift", "transform", "circular shift right by 2 pixels", transform=_roll(2)),
        Condition("rot90", "transform", "rotation by 90 degrees", transform=lambda x, rng: np.rot90(x, 1, axes=(-2, -1)).copy()),
        Condition("flip", "transform", "horizontal mirror", transform=_reverse),
        Condition("invert", "transform", "intensity inversion 1 - x", transform=lambda x, rng: 1.0 - x),
    ],
}


def list_conditions(dataset: str) -> list[Condition]:
    """The conditions defined for ``dataset``."""
    if dataset not in _CONDITIONS:
        raise unknown_name("dataset", dataset, _CONDITIONS)
    return list(_CONDITIONS[dataset])


def get_condition(dataset: str, name: str) -> Condition:
    """Condition ``name`` of ``dataset``; UserError listing the valid names otherwise."""
    conds = {c.name: c for c in list_conditions(dataset)}
    if name not in conds:
        raise unknown_name(f"condition for dataset '{dataset}'", name, conds)
    return conds[name]
