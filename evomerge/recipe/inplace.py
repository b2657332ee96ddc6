"""Candidates built in place: an in-place recipe's (``layerwise``, ``weights``) merged tensors written into one resident model.

A worker loads its model once; :class:`InPlaceBuilder` then turns it into each candidate by writing,
under ``torch.no_grad()``, ``param.copy_(theta)`` for every tensor the recipe merges, with

    theta = theta_base + combine(tau_1, ..., tau_T),   tau_t = theta_t - theta_base   (float32)

computed by the method's own per-tensor function (:meth:`~evomerge.core.merge.base.MergeMethod.merge_deltas`,
the same numbers as the streaming merge of :mod:`evomerge.recipe.stream`). The base and every task
vector are read once (lazily, tensor by tensor, then cached for the worker's life), and so are a
method's per-task factors (TSV: each update's SVD, which every rank truncates; TIES: each update's
sorted magnitudes, off which every density's cut is read). Every tensor a
candidate left merged and the next one does not merge is written back to the base, so a build
never depends on the builds before it. Nothing is saved or reloaded; no module is created.

Memory: the base and ``T`` task vectors in float32, plus as much again per task vector for TIES's or
TSV's factors: for models that fit.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

import torch
from torch import nn

from evomerge.core.merge import MERGE_METHODS, MergeMethod
from evomerge.errors import UserError
from evomerge.io.tensors import TensorSource
from evomerge.recipe.kind import RecipeKind
from evomerge.recipe.layerwise import num_layers
from evomerge.recipe.schema import parse_recipe


class InPlaceBuilder:
    """Builds in-place recipes into ``module``, whose state-dict names are the checkpoints' names.

    ``base_reader`` reads the base the recipes name; ``source_readers`` the fine-tunes, by the names
    recipes give them. ``device``: where the cached tensors live and the merge runs. ``frozen``: tensor
    names that always keep the base (a backbone-only merge's embeddings and head).
    """

    def __init__(self, module: nn.Module, base_reader: TensorSource, source_readers: Mapping[str, TensorSource],
                 device: str | torch.device = "cpu", frozen: Collection[str] = ()):  # fmt: skip
        self.module = module
        self.frozen = frozenset(frozen)
        self.base_reader = base_reader
        self.readers = dict(source_readers)
        self.device = torch.device(device)
        state = module.state_dict(keep_vars=True)
        self.targets: dict[str, torch.Tensor] = {}
        for name, info in base_reader.infos.items():
            if not info.dtype.is_floating_point or name in self.frozen:
                continue
            if name not in state:
                raise UserError(f"{base_reader.path}: tensor '{name}' is not in the resident model")
            if tuple(state[name].shape) != info.shape:
                raise UserError(f"{base_reader.path}: tensor '{name}' has shape {info.shape}, the resident model's is {tuple(state[name].shape)}")
            self.targets[name] = state[name]
        self.layers = num_layers(self.targets)
        self._base: dict[str, torch.Tensor] = {}
        self._taus: dict[tuple[str, str], torch.Tensor] = {}
        self._factors: dict[tuple[str, str, str], Any] = {}
        self._dirty = set(self.targets)  # the first build writes every tensor: merged, or the base

    @torch.no_grad()
    def build(self, recipe: RecipeKind | Mapping[str, Any]) -> nn.Module:
        """Write ``recipe``'s candidate (an in-place kind: ``layerwise``, ``weights``) into the resident module (returned)."""
        r = recipe if isinstance(recipe, RecipeKind) else parse_recipe(recipe)
        if not r.in_place:
            raise UserError(f"recipe kind '{r.kind}' is not built in place")
        missing = [m for m in r.models if m not in self.readers]
        if missing:
            raise UserError(f"recipe.models: no source named '{missing[0]}' (sources: {', '.join(self.readers)})")
        method = MERGE_METHODS.get(r.method)
        params_of = r.resolver(self.layers)
        written = set()
        for name, target in self.targets.items():
            params = params_of(name)
            if params is None:
                continue
            taus = [self.task_vector(m, name) for m in r.models]
            factors = [self._factor(method, m, name, tau) for m, tau in zip(r.models, taus)]
            self._dirty.add(name)  # before the write: a build that fails midway is undone by the next
            target.copy_(method.merge_deltas(name, self._base_of(name), taus, params, factors))
            written.add(name)
        for name in self._dirty - written:
            self.targets[name].copy_(self._base_of(name))
        self._dirty = written
        return self.module

    @torch.no_grad()
    def snapshot(self) -> dict[str, torch.Tensor]:
        """A copy of every tensor the builder writes, as the resident module holds them now."""
        return {name: t.detach().clone() for name, t in self.targets.items()}

    @torch.no_grad()
    def restore(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        """Write a :meth:`snapshot` back into the resident module (returned); the next build rewrites every tensor."""
        for name, t in state.items():
            self.targets[name].copy_(t)
        self._dirty = set(self.targets)
        return self.module

    def _base_of(self, name: str) -> torch.Tensor:
        if name not in self._base:
            self._base[name] = self.base_reader.get(name, torch.float32).to(self.device)
        return self._base[name]

    def task_vector(self, model: str, name: str) -> torch.Tensor:
        """``theta_model - theta_base`` of tensor ``name`` in float32 (read once, then cached)."""
        key = (model, name)
        if key not in self._taus:
            reader = self.readers[model]
            if name not in reader:
                raise UserError(f"{reader.path}: model '{model}' has no tensor '{name}' (the base has it)")
            x = reader.get(name, torch.float32).to(self.device)
            base = self._base_of(name)
            if x.shape != base.shape:
                raise UserError(f"{reader.path}: tensor '{name}' has shape {tuple(x.shape)}, the base's is {tuple(base.shape)}")
            self._taus[key] = x - base
        return self._taus[key]

    def _factor(self, method: MergeMethod, model: str, name: str, tau: torch.Tensor) -> Any:
        key = (method.name, model, name)
        if key not in self._factors:
            self._factors[key] = method.factor(name, tau)
        return self._factors[key]
