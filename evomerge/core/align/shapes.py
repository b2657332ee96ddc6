"""How activations of any layer kind become rows of a matrix, and back.

Rules (one place for every aligner and the stitch):

* ``vector`` ``(B, F)``: one row per sample.
* ``conv`` ``(B, C, *spatial)`` (channels first) and ``tokens`` ``(B, T, D)`` (channels last) are
  *positional*. When both sides of a map are positional with the same number of positions
  (``prod(spatial)`` or ``T``), a map acts per position, like a 1×1 convolution: rows are
  ``(B·P, channels)`` (model stitching as in Lenc & Vedaldi 2015, Bansal et al. 2021).
* Otherwise both sides are flattened to one row per sample, ``(B, prod(shape))``.

``kind="auto"`` reads 1-D shapes as ``vector``, 3-D ``(C, H, W)`` as ``conv`` and 2-D shapes
as ``vector`` (flattened): a 2-D shape is ambiguous between ``(C, L)`` and ``(T, D)``, so
per-position maps need the kind stated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch import Tensor

KINDS = ("auto", "vector", "conv", "tokens")


@dataclass(frozen=True)
class Layout:
    """An activation shape (no batch axis) and where its channels are; ``channel_axis=None``: flatten."""

    shape: tuple[int, ...]
    channel_axis: int | None

    @classmethod
    def of(cls, shape: tuple[int, ...], kind: str = "auto") -> Layout:
        shape = tuple(int(s) for s in shape)
        if kind not in KINDS:
            raise ValueError(f"layer kind must be one of {KINDS}, got {kind!r}")
        if kind == "auto":
            kind = "conv" if len(shape) == 3 else "vector"
        if kind == "vector" or len(shape) < 2:
            return cls(shape, None)
        return cls(shape, 0 if kind == "conv" else len(shape) - 1)

    @property
    def positional(self) -> bool:
        return self.channel_axis is not None

    @property
    def positions(self) -> int:
        return math.prod(self.shape) // self.features

    @property
    def features(self) -> int:
        return self.shape[self.channel_axis] if self.positional else math.prod(self.shape)

    def flat(self) -> Layout:
        return Layout(self.shape, None)

    def to_rows(self, x: Tensor) -> Tensor:
        """``(B, *shape) -> (B·P, features)``."""
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"activation shape {tuple(x.shape[1:])} does not match the fitted {self.shape}")
        if not self.positional:
            return x.reshape(x.shape[0], -1)
        if self.channel_axis == 0:  # (B, C, *spatial) -> (B, *spatial, C)
            x = x.movedim(1, -1)
        return x.reshape(-1, self.features)

    def from_rows(self, rows: Tensor, batch: int) -> Tensor:
        """Inverse of :meth:`to_rows`."""
        if not self.positional:
            return rows.reshape(batch, *self.shape)
        if self.channel_axis == 0:
            spatial = self.shape[1:]
            return rows.reshape(batch, *spatial, self.features).movedim(-1, 1)
        return rows.reshape(batch, *self.shape)


def pair_layouts(a: Layout, b: Layout) -> tuple[Layout, Layout]:
    """Keep per-position rows only if both sides are positional with equal position counts."""
    if a.positional and b.positional and a.positions == b.positions:
        return a, b
    return a.flat(), b.flat()
