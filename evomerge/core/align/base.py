"""The aligner interface: fit on paired activations (per condition, weighted), return a torch map.

An aligner sees rows (see :mod:`evomerge.core.align.shapes`), centred per condition, and fits a
*core* map between centred rows; the module it returns is

    T(a) = core(rows(a) - μ_a) + μ_b,

with ``(μ_a, μ_b)`` one condition's means (``as_module(condition=name)``) or their weighted
average over the fitted conditions (the default, for inputs of unknown condition). Conditions
contribute to every fit by their weight, each spread evenly over its rows (row weight
``w_c / n_c`` with ``Σ w_c = 1``). Fitting runs in float64; modules are float32.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from evomerge.core.align.shapes import Layout, pair_layouts
from evomerge.errors import UserError, unknown_name
from evomerge.registry import Registry

CENTERING = ("condition", "global")


@dataclass
class ConditionPair:
    """Activations of the same items at A's layer (``a``) and B's layer (``b``) for one condition."""

    a: Tensor
    b: Tensor
    weight: float = 1.0
    name: str = "all"


@dataclass
class Rows:
    """Centred float64 rows per condition and the normalized condition weights."""

    a: list[Tensor]
    b: list[Tensor]
    weights: list[float]

    def stacked(self) -> tuple[Tensor, Tensor, Tensor]:
        """All rows stacked, with per-row weights ``w_c / n_c`` (summing to 1)."""
        w = torch.cat([torch.full((len(a),), wc / len(a), dtype=torch.float64) for a, wc in zip(self.a, self.weights)])
        return torch.cat(self.a), torch.cat(self.b), w


def weighted_cov(a: Tensor, b: Tensor, w: Tensor) -> Tensor:
    """``Σ_i w_i a_i b_iᵀ`` (rows already centred)."""
    return (a * w[:, None]).T @ b


def shrink(c: Tensor, reg: float) -> Tensor:
    """``C + reg · mean(diag C) · I``: ridge relative to the average variance, so ``reg`` is unit-free."""
    scale = float(torch.diagonal(c).mean()) if c.numel() else 0.0
    return c + reg * (scale if scale > 0 else 1.0) * torch.eye(c.shape[0], dtype=c.dtype)


def linear_core(w: Tensor) -> nn.Linear:
    """An ``nn.Linear`` computing ``x @ w`` (``w`` is ``(f_in, f_out)``), bias zero and trainable."""
    lin = nn.Linear(w.shape[0], w.shape[1])
    with torch.no_grad():
        lin.weight.copy_(w.T.to(torch.float32))
        lin.bias.zero_()
    return lin


def factored_core(left: Tensor, right: Tensor) -> nn.Sequential:
    """``x @ left @ right`` as two linear layers (``f_in → r → f_out``): ``r·(f_in + f_out) + f_out`` params."""
    first = nn.Linear(left.shape[0], left.shape[1], bias=False)
    with torch.no_grad():
        first.weight.copy_(left.T.to(torch.float32))
    return nn.Sequential(first, linear_core(right))


class StitchMap(nn.Module):
    """``(B, *shape_a) -> (B, *shape_b)``: rows, subtract ``shift_a``, core, add ``shift_b``, reshape."""

    def __init__(self, layout_a: Layout, layout_b: Layout, core: nn.Module, shift_a: Tensor, shift_b: Tensor):
        super().__init__()
        self.layout_a, self.layout_b, self.core = layout_a, layout_b, core
        self.register_buffer("shift_a", shift_a.to(torch.float32))
        self.register_buffer("shift_b", shift_b.to(torch.float32))

    def forward(self, x: Tensor) -> Tensor:
        rows = self.layout_a.to_rows(x)
        out = self.core(rows - self.shift_a) + self.shift_b
        return self.layout_b.from_rows(out, x.shape[0])


def as_pairs(pairs: Any) -> list[ConditionPair]:
    """Accept one ``(A, B)`` pair, a ``ConditionPair`` or a list of ``ConditionPair``."""
    if isinstance(pairs, ConditionPair):
        out = [pairs]
    elif isinstance(pairs, tuple) and len(pairs) == 2 and all(isinstance(t, Tensor) for t in pairs):
        out = [ConditionPair(pairs[0], pairs[1])]
    else:
        out = list(pairs)
    if not out or not all(isinstance(p, ConditionPair) for p in out):
        raise TypeError("pairs must be (A, B), a ConditionPair or a non-empty list of ConditionPair")
    names = [p.name for p in out]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique, got {names}")
    for p in out:
        if p.a.shape[0] != p.b.shape[0]:
            raise ValueError(f"condition {p.name!r}: {p.a.shape[0]} rows of A vs {p.b.shape[0]} of B")
        if p.weight < 0:
            raise ValueError(f"condition {p.name!r}: weight must be >= 0, got {p.weight}")
        if p.a.shape[1:] != out[0].a.shape[1:] or p.b.shape[1:] != out[0].b.shape[1:]:
            raise ValueError(f"condition {p.name!r}: activation shapes differ between conditions")
    if sum(p.weight for p in out) <= 0:
        raise ValueError("condition weights sum to zero")
    return out


class Aligner:
    """Base class: ``fit(pairs) -> self``, ``transform(a)``, ``as_module(condition=None)``, ``num_params``.

    Subclasses implement :meth:`fit_core`, mapping centred :class:`Rows` to an ``nn.Module``
    between centred rows. ``center="condition"`` centres each condition on its own means;
    ``"global"`` on the weighted pooled means (an unconditioned fit when all weights are equal).
    """

    name: ClassVar[str] = ""

    def __init__(self, center: str = "condition", seed: int = 0):
        if center not in CENTERING:
            raise ValueError(f"center must be one of {CENTERING}, got {center!r}")
        self.center, self.seed = center, seed
        self.core_: nn.Module | None = None

    def fit_core(self, rows: Rows) -> nn.Module:
        raise NotImplementedError

    def fit(self, pairs: Any, kinds: tuple[str, str] = ("auto", "auto")) -> Aligner:
        """Fit on paired activations; ``kinds`` are the layer kinds of A and B (see ``shapes``)."""
        pairs = as_pairs(pairs)
        la = Layout.of(tuple(pairs[0].a.shape[1:]), kinds[0])
        lb = Layout.of(tuple(pairs[0].b.shape[1:]), kinds[1])
        self.layout_a, self.layout_b = pair_layouts(la, lb)
        total = sum(p.weight for p in pairs)
        weights = [p.weight / total for p in pairs]
        ra = [self.layout_a.to_rows(p.a).to(torch.float64) for p in pairs]
        rb = [self.layout_b.to_rows(p.b).to(torch.float64) for p in pairs]
        mu_a = torch.stack([r.mean(dim=0) for r in ra])
        mu_b = torch.stack([r.mean(dim=0) for r in rb])
        wt = torch.tensor(weights, dtype=torch.float64)
        self.pooled_ = (wt @ mu_a, wt @ mu_b)
        self.means_ = {p.name: (mu_a[i], mu_b[i]) for i, p in enumerate(pairs)}
        if self.center == "condition":
            rows = Rows([r - m for r, m in zip(ra, mu_a)], [r - m for r, m in zip(rb, mu_b)], weights)
        else:
            rows = Rows([r - self.pooled_[0] for r in ra], [r - self.pooled_[1] for r in rb], weights)
        self.core_ = self.fit_core(rows)
        return self

    def _check_fitted(self) -> nn.Module:
        if self.core_ is None:
            raise RuntimeError(f"{type(self).__name__} is not fitted; call fit(pairs) first")
        return self.core_

    def as_module(self, condition: str | None = None) -> StitchMap:
        """A fresh, independent ``nn.Module`` for the fitted map (one condition's means, or pooled)."""
        core = self._check_fitted()
        if condition is None:
            shift_a, shift_b = self.pooled_
        elif condition in self.means_:
            shift_a, shift_b = self.means_[condition]
        else:
            raise unknown_name("fitted condition", condition, self.means_)
        return StitchMap(self.layout_a, self.layout_b, copy.deepcopy(core), shift_a, shift_b)

    def transform(self, a: Tensor, condition: str | None = None) -> Tensor:
        """``T(a)`` with the shapes of A's layer in and B's layer out."""
        with torch.no_grad():
            return self.as_module(condition)(a.to(torch.float32))

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self._check_fitted().parameters())


ALIGNERS: Registry[type[Aligner]] = Registry("aligner")


#: ``@register(name)``: an :class:`Aligner` subclass under its YAML name (sets ``cls.name``).
register = ALIGNERS.named


def make_aligner(name: str, **params: Any) -> Aligner:
    """Build a registered aligner; unknown names or parameters raise :class:`UserError`."""
    cls = ALIGNERS.get(name)
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise UserError(f"aligner '{name}': bad parameters {params}: {exc}") from None
