"""Merged models built from recipes. Each is an ``nn.Module`` called as ``model(x, task=None)``.

* :class:`StitchMerge` — a trunk run once, its own tail and stitched tails of other models
  joined in the union label space by routing coefficients.
* :class:`HeadsMerge` — a merged trunk with one head per task (the standard multi-task setting).
* :class:`MassMerge` — MASS input-adaptive routing over the tasks' TSV subspaces.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evomerge.core.gate import route
from evomerge.core.route import MASS
from evomerge.zoo.models import LayeredNet

WeightSpec = float | dict[str, float]


def weight_for(spec: WeightSpec, task: str | None) -> float:
    """A routing coefficient for ``task`` (a dict without the task falls back to its ``default`` or 1)."""
    if isinstance(spec, dict):
        return float(spec.get(task, spec.get("default", 1.0))) if task else float(spec.get("default", 1.0))
    return float(spec)


def params_between(net: LayeredNet, after: str | None, upto: str | None) -> int:
    """Parameters of the layers strictly after ``after`` and up to ``upto`` inclusive (None: ends)."""
    names = net.layer_names
    lo = names.index(after) + 1 if after else 0
    hi = names.index(upto) + 1 if upto else len(names)
    return sum(p.numel() for n in names[lo:hi] for p in net.layers[n].parameters())


@dataclass
class Tail:
    """One stitched path: the trunk's ``source_layer`` -> ``stitch`` -> ``net`` from ``target_layer``."""

    net: LayeredNet
    source_layer: str
    stitch: nn.Module
    target_layer: str
    weight: WeightSpec


class StitchMerge(nn.Module):
    """``p(y|x) = Σ_k r_k(x) p_k(y|x) / Σ_k r_k(x)`` over the trunk's own tail and the stitched tails.

    Routing ``r_k(x)`` (:func:`~evomerge.core.gate.route`): ``mixture``, the fixed coefficients ``w_k``
    (seed 001 Alg. 4 step 5 applied to the outputs); ``confidence``, ``w_k · max_y p_k(y|x)`` (trust the
    more confident path); ``learned``, ``w_k · g_k(x)`` with a linear gate (:mod:`evomerge.core.gate`) on the trunk's
    activation at ``gate_layer`` and every path's log-probabilities (a path's own output is strong
    evidence of whether an input is in its task distribution).
    Returns log-probabilities (usable as logits).
    """

    def __init__(
        self,
        trunk: LayeredNet,
        trunk_weight: WeightSpec,
        tails: Sequence[Tail],
        routing: str = "mixture",
        gate_layer: str | None = None,
    ):
        super().__init__()
        self.trunk = trunk
        self.trunk_weight = trunk_weight
        self.tails = nn.ModuleList([t.net for t in tails])
        self.stitches = nn.ModuleList([t.stitch for t in tails])
        self.paths = [(t.source_layer, t.target_layer, t.weight) for t in tails]
        self.routing = routing
        self.gate_layer = gate_layer or trunk.layer_names[-2]
        self.gate: nn.Module | None = None

    def _trunk_activations(self, x: Tensor, needed: set[str], full: bool) -> tuple[dict[str, Tensor], Tensor | None]:
        names = self.trunk.layer_names
        last = len(names) - 1 if full else max(names.index(n) for n in needed)
        acts: dict[str, Tensor] = {}
        h = x
        for name in names[: last + 1]:
            h = self.trunk.layers[name](h)
            if name in needed:
                acts[name] = h
        return acts, (h if full else None)

    def path_outputs(self, x: Tensor, task: str | None = None) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Every path's class probabilities ``(K, B, C)`` (the trunk's own tail first, always run),
        their coefficients ``(K,)`` for ``task``, and the trunk activations used."""
        needed = {p[0] for p in self.paths} | ({self.gate_layer} if self.routing == "learned" else set())
        acts, own = self._trunk_activations(x, needed, full=True)
        logits = [own] + [net.forward_from(stitch(acts[src]), dst)
                          for (src, dst, _), net, stitch in zip(self.paths, self.tails, self.stitches)]
        weights = [weight_for(self.trunk_weight, task)] + [weight_for(w, task) for _, _, w in self.paths]
        probs = torch.stack([torch.softmax(z, dim=-1) for z in logits])
        return probs, torch.tensor(weights, dtype=probs.dtype, device=probs.device), acts

    def gate_features(self, probs: Tensor, acts: dict[str, Tensor]) -> Tensor:
        """``[h_gate(x), log p_1(·|x), ..., log p_K(·|x)]`` per item: the learned router's input."""
        logp = probs.clamp_min(1e-8).log().permute(1, 0, 2).reshape(probs.shape[1], -1)
        return torch.cat([acts[self.gate_layer].reshape(probs.shape[1], -1), logp], dim=1)

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        probs, weights, acts = self.path_outputs(x, task)
        gate = None
        if self.routing == "learned":
            if self.gate is None:
                raise RuntimeError("routing 'learned' needs a fitted gate")
            gate = torch.softmax(self.gate(self.gate_features(probs, acts)), dim=-1)  # (B, K)
        return route(probs, weights, self.routing, gate)

    def num_params(self) -> int:
        """Parameters on the paths that run: the trunk, the maps, the tails and the gate."""
        n = params_between(self.trunk, None, None) + self.stitch_params()
        n += sum(params_between(net, dst, None) for (_, dst, _), net in zip(self.paths, self.tails))
        return n + (sum(p.numel() for p in self.gate.parameters()) if self.gate is not None else 0)

    def stitch_params(self) -> int:
        return sum(p.numel() for s in self.stitches for p in s.parameters())


def task_slot(task: str) -> str:
    """A module-dict key for a task key (``mnist1d/reverse`` -> ``mnist1d__reverse``)."""
    return task.replace("/", "__").replace(".", "_")


class HeadsMerge(nn.Module):
    """A merged trunk (``net`` without its head) with one head per task key."""

    def __init__(self, net: LayeredNet, heads: dict[str, nn.Module]):
        super().__init__()
        self.net = net
        self.heads = nn.ModuleDict({task_slot(t): h for t, h in heads.items()})
        self.tasks = list(heads)
        self.cut = net.layer_names[-2]

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        if task is None:
            if len(self.tasks) != 1:
                raise ValueError(f"this merged model has one head per task; pass task= one of {self.tasks}")
            task = self.tasks[0]
        return self.heads[task_slot(task)](self.net.forward_to(x, self.cut))

    def num_params(self) -> int:
        return params_between(self.net, None, self.cut) + sum(p.numel() for p in self.heads.parameters())


class MassMerge(nn.Module):
    """MASS as a merged model: the task argument is ignored (routing is input-adaptive)."""

    def __init__(self, mass: MASS, tasks: list[str]):
        super().__init__()
        self.mass = mass
        self.tasks = tasks

    def forward(self, x: Tensor, task: str | None = None) -> Tensor:
        return self.mass(x)

    def num_params(self) -> int:
        """What MASS holds to route and re-merge: the base, every task vector and every head."""
        base = sum(v.numel() for v in self.mass.base.values())
        taus = sum(v.numel() for t in self.mass.taus for v in t.values())
        return base + taus + sum(v.numel() for h in self.mass.heads for v in h.values())
