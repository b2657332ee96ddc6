"""Permutation symmetries of a network and Git Re-Basin weight matching (Ainsworth et al., ICLR 2023).

Hidden units can be reordered without changing the function: permute a layer's output units
and the next layer's input units alike. A :class:`PermutationSpec` names each such group of
units and lists, for every state-dict entry, which group permutes which of its axes. It is
derived by walking the modules (:func:`permutation_spec`), so MLPs, CNNs (including the
conv -> flatten -> linear step, where one channel spans a block of flattened inputs) and the
built-in pre-LN transformer (one residual-stream permutation, whole attention heads, FFN units)
are covered without per-model tables. Permutations within a head are not used: they would need
one permutation per head shared by queries and keys, and whole-head swaps already cover
the head symmetry.

A permutation ``p`` (LongTensor) maps unit ``i`` of the permuted model to unit ``p[i]`` of the
original; as a matrix ``P[i, p[i]] = 1`` and the permuted rows are ``P @ rows``.

Weight matching maximizes ``sum_k <W_A[k], pi(W_B)[k]>`` by coordinate descent: for one group
with all others fixed the objective is linear in its permutation, a linear assignment problem
solved exactly by ``scipy.optimize.linear_sum_assignment``.
REPAIR (Jordan et al., ICLR 2023) then rescales each hidden unit of an interpolated model so its
pre-activation mean and standard deviation equal the interpolation of the endpoints' statistics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment
from torch import nn
from torch.func import functional_call

from evomerge.core.merge.task_vectors import StateDict
from evomerge.errors import UserError

Perms = dict[str, torch.Tensor]


@dataclass(frozen=True)
class AxisPerm:
    """Axis of size ``segments * n * block`` viewed as ``(segments, n, block)``; the group permutes ``n``.

    ``block > 1``: a conv channel flattened with its spatial positions, or a head of ``block`` dims.
    ``segments > 1``: packed projections (the query, key and value rows of ``in_proj_weight``).
    """

    perm: str
    block: int = 1
    segments: int = 1


@dataclass(frozen=True)
class PermutationSpec:
    """Unit groups (name -> size), the group acting on each axis of each entry, and REPAIR points.

    ``units`` maps a group to the module whose per-unit affine output (weight and bias along
    that group) REPAIR corrects, and the axis of that module's output holding the units.
    ``buffers`` are permuted but not used as matching evidence (running statistics).
    """

    sizes: dict[str, int]
    axes: dict[str, tuple[AxisPerm | None, ...]]
    units: dict[str, tuple[str, int]] = field(default_factory=dict)
    buffers: frozenset[str] = frozenset()

    def users(self, perm: str) -> list[tuple[str, int, AxisPerm]]:
        """Every ``(key, axis, AxisPerm)`` that group ``perm`` acts on."""
        return [(k, a, ap) for k, axes in self.axes.items() for a, ap in enumerate(axes) if ap and ap.perm == perm]


def axis_rows(t: torch.Tensor, axis: int, ap: AxisPerm) -> torch.Tensor:
    """``t`` as an ``(n, -1)`` matrix whose row ``i`` holds every entry of unit ``i`` along ``axis``."""
    moved = t.movedim(axis, 0)
    n = moved.shape[0] // (ap.segments * ap.block)
    v = moved.reshape(ap.segments, n, ap.block, -1).transpose(0, 1)
    return v.reshape(n, -1)


def rows_axis(rows: torch.Tensor, like: torch.Tensor, axis: int, ap: AxisPerm) -> torch.Tensor:
    """Inverse of :func:`axis_rows`: put the rows back into ``like``'s shape."""
    moved_shape = like.movedim(axis, 0).shape
    n = rows.shape[0]
    v = rows.reshape(n, ap.segments, ap.block, -1).transpose(0, 1)
    return v.reshape(moved_shape).movedim(0, axis)


def permute_axis(t: torch.Tensor, axis: int, ap: AxisPerm, p: torch.Tensor) -> torch.Tensor:
    """Reorder the units of ``t`` along ``axis`` by ``p``: an index vector, or a (soft) matrix ``P``."""
    rows = axis_rows(t, axis, ap)
    return rows_axis(rows[p] if p.ndim == 1 else p.to(rows.dtype) @ rows, t, axis, ap)


def apply_permutation(spec: PermutationSpec, perms: Perms, sd: StateDict, skip: str | None = None) -> StateDict:
    """``sd`` with every group in ``perms`` (except ``skip``) applied to the axes it acts on.

    A group's entry is a permutation vector or, for relaxations, an ``(n, n)`` matrix."""
    out = dict(sd)
    for key, axes in spec.axes.items():
        t = sd[key]
        for axis, ap in enumerate(axes):
            if ap is not None and ap.perm != skip and ap.perm in perms:
                t = permute_axis(t, axis, ap, perms[ap.perm])
        out[key] = t
    return out


def identity_perms(spec: PermutationSpec) -> Perms:
    return {p: torch.arange(n) for p, n in spec.sizes.items()}


def random_perms(spec: PermutationSpec, generator: torch.Generator) -> Perms:
    return {p: torch.randperm(n, generator=generator) for p, n in spec.sizes.items()}


def invert(perms: Perms) -> Perms:
    return {p: torch.argsort(v) for p, v in perms.items()}


def compose(first: Perms, then: Perms) -> Perms:
    """Permutations equal to applying ``first`` and then ``then`` (``P_then @ P_first``)."""
    return {p: first[p][then[p]] for p in first}


def matching_cost(spec: PermutationSpec, perm: str, target: StateDict, source: StateDict) -> torch.Tensor:
    """``C[i, j]`` = inner product of unit ``i`` of ``target`` with unit ``j`` of ``source`` over all
    entries group ``perm`` acts on (``source`` already permuted on every other axis)."""
    n = spec.sizes[perm]
    cost = torch.zeros(n, n, dtype=torch.float64)
    for key, axis, ap in spec.users(perm):
        if key not in spec.buffers:
            cost += (axis_rows(target[key], axis, ap).double() @ axis_rows(source[key], axis, ap).double().T)
    return cost


def solve_assignment(cost: torch.Tensor) -> torch.Tensor:
    """The permutation maximizing ``sum_i cost[i, p[i]]`` (Hungarian algorithm, scipy)."""
    rows, cols = linear_sum_assignment(cost.numpy(), maximize=True)
    return torch.as_tensor(cols[rows.argsort()], dtype=torch.long)


def agreement(spec: PermutationSpec, target: StateDict, source: StateDict) -> float:
    """The weight-matching objective ``sum_k <target[k], source[k]>`` over the matched entries."""
    return sum(float((target[k].double() * source[k].double()).sum()) for k in spec.axes if k not in spec.buffers)


def _descend(spec: PermutationSpec, target: StateDict, source: StateDict, perms: Perms, max_iter: int, g: torch.Generator) -> Perms:
    """Coordinate descent over groups in random order until a full sweep improves nothing."""
    names = list(spec.sizes)
    for _ in range(max_iter):
        improved = False
        for i in torch.randperm(len(names), generator=g).tolist():
            p = names[i]
            cost = matching_cost(spec, p, target, apply_permutation(spec, perms, source, skip=p))
            new = solve_assignment(cost)
            old_value = cost[torch.arange(len(new)), perms[p]].sum()
            new_value = cost[torch.arange(len(new)), new].sum()
            if new_value > old_value + 1e-9 * max(1.0, abs(old_value.item())):
                perms[p], improved = new, True
        if not improved:
            break
    return perms


def weight_matching(
    spec: PermutationSpec,
    target: StateDict,
    source: StateDict,
    max_iter: int = 100,
    seed: int = 0,
    init: Perms | None = None,
    restarts: int = 1,
) -> Perms:
    """Permutations that bring ``source`` onto ``target`` (apply them to ``source``).

    Coordinate descent from ``init`` (default: identity) and from ``restarts - 1`` seeded random
    starts; the result with the highest :func:`agreement` wins. Descent from the identity alone
    can stall in a poor local optimum (seen on the zoo's CNN twins), which restarts avoid.
    """
    target = {k: v.float() for k, v in target.items() if k in spec.axes}
    source = {k: v.float() for k, v in source.items() if k in spec.axes}
    g = torch.Generator().manual_seed(seed)
    starts = [init or identity_perms(spec)] + [random_perms(spec, g) for _ in range(restarts - 1)]
    found = [_descend(spec, target, source, {p: v.clone() for p, v in s.items()}, max_iter, g) for s in starts]
    return max(found, key=lambda p: agreement(spec, target, apply_permutation(spec, p, source)))


def lerp_state(a: StateDict, b: StateDict, t: float) -> StateDict:
    """``(1 - t) a + t b`` on floating-point entries; other entries from ``a``."""
    return {k: torch.lerp(v.float(), b[k].float(), t).to(v.dtype) if v.is_floating_point() else v.clone() for k, v in a.items()}


# ---- specs from modules -------------------------------------------------------------------

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CHANNEL_FIRST = (*_CONVS, *_BATCHNORMS)  # modules whose outputs hold units on axis 1 (else the last axis)


class _SpecBuilder:
    """Walks modules in registration order (the forward order of chains and ``ModuleDict`` nets).

    ``current`` is the group labelling the features flowing out of the last visited layer.
    """

    def __init__(self, module: nn.Module):
        self.sizes: dict[str, int] = {}
        self.axes: dict[str, tuple[AxisPerm | None, ...]] = {}
        self.units: dict[str, tuple[str, int]] = {}
        self.buffers: set[str] = set()
        self.current: str | None = None
        self.channels = 0  # width of the features labelled by ``current`` (before any flatten)
        weighted = [n for n, m in module.named_modules() if isinstance(m, (nn.Linear, *_CONVS))]
        self.last = weighted[-1] if weighted else None

    def new_group(self, name: str, size: int) -> str:
        self.sizes[name] = size
        return name

    def put(self, key: str, *axes: AxisPerm | None) -> None:
        self.axes[key] = tuple(axes)

    def incoming(self, in_size: int, where: str) -> AxisPerm | None:
        if self.current is None:
            return None
        if in_size % self.channels:
            raise UserError(f"weight matching: '{where}' takes {in_size} inputs, not a multiple of {self.channels} units")
        return AxisPerm(self.current, block=in_size // self.channels)

    def visit(self, module: nn.Module, prefix: str) -> None:
        handler = _SpecBuilder.patch_embed if _is_patch_embed(module) else _HANDLERS.get(type(module))
        if handler is not None:
            handler(self, module, prefix)
        elif any(True for _ in module.parameters(recurse=False)):
            raise UserError(
                f"weight matching: no permutation rule for module '{prefix}' ({type(module).__name__}); "
                "supported: Linear, Conv1d/2d/3d, BatchNorm, LayerNorm, TransformerEncoderLayer, patch embeddings"
            )
        else:
            for name, child in module.named_children():
                self.visit(child, f"{prefix}{name}.")

    def weighted(self, m: nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d, prefix: str) -> None:
        name = prefix.rstrip(".")
        in_size = m.in_features if isinstance(m, nn.Linear) else m.in_channels
        inp = self.incoming(in_size, name) if isinstance(m, nn.Linear) else self.incoming_channels(name, in_size)
        rest = (None,) * (m.weight.ndim - 2)
        if name == self.last:
            self.put(prefix + "weight", None, inp, *rest)
            self.current = None
            return
        out = AxisPerm(self.new_group(name, m.weight.shape[0]))
        self.put(prefix + "weight", out, inp, *rest)
        if m.bias is not None:
            self.put(prefix + "bias", out)
            self.units[name] = (name, 1 if isinstance(m, _CHANNEL_FIRST) else -1)
        self.current, self.channels = name, m.weight.shape[0]

    def incoming_channels(self, name: str, in_channels: int) -> AxisPerm | None:
        if self.current is not None and in_channels != self.channels:
            raise UserError(f"weight matching: '{name}' takes {in_channels} channels, the previous layer gives {self.channels}")
        return None if self.current is None else AxisPerm(self.current)

    def norm(self, m: nn.Module, prefix: str) -> None:
        ap = AxisPerm(self.current) if self.current else None
        for key, t in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]:
            if t.ndim == 0:
                continue  # num_batches_tracked
            self.put(prefix + key, ap, *(None,) * (t.ndim - 1))
            if key.startswith("running_"):
                self.buffers.add(prefix + key)
        affine = getattr(m, "weight", None) is not None and getattr(m, "bias", None) is not None
        if self.current in self.units and affine:
            self.units[self.current] = (prefix.rstrip("."), 1 if isinstance(m, _CHANNEL_FIRST) else -1)

    def encoder_layer(self, m: nn.TransformerEncoderLayer, prefix: str) -> None:
        d = m.linear1.in_features
        if self.current is None or self.channels != d:
            raise UserError(f"weight matching: encoder layer '{prefix.rstrip('.')}' needs a residual stream of width {d} before it")
        attn = m.self_attn
        if not attn._qkv_same_embed_dim or attn.bias_k is not None:
            raise UserError(f"weight matching: attention in '{prefix.rstrip('.')}' has separate q/k/v projections or bias_k; unsupported")
        res = AxisPerm(self.current)
        dh = d // attn.num_heads
        heads = self.new_group(prefix + "self_attn.heads", attn.num_heads)
        ffn = self.new_group(prefix + "linear1", m.linear1.out_features)
        a = prefix + "self_attn."
        self.put(a + "in_proj_weight", AxisPerm(heads, dh, 3), res)
        if attn.in_proj_bias is not None:
            self.put(a + "in_proj_bias", AxisPerm(heads, dh, 3))
        self.put(a + "out_proj.weight", res, AxisPerm(heads, dh))
        if attn.out_proj.bias is not None:
            self.put(a + "out_proj.bias", res)
        self.put(prefix + "linear1.weight", AxisPerm(ffn), res)
        self.put(prefix + "linear1.bias", AxisPerm(ffn))
        self.put(prefix + "linear2.weight", res, AxisPerm(ffn))
        self.put(prefix + "linear2.bias", res)
        self.units[ffn] = (prefix + "linear1", -1)
        for norm in ("norm1", "norm2"):
            for p in ("weight", "bias"):
                self.put(f"{prefix}{norm}.{p}", res)

    def patch_embed(self, m: nn.Module, prefix: str) -> None:
        res = AxisPerm(self.new_group(prefix + "residual", m.proj.out_features))
        self.put(prefix + "proj.weight", res, self.incoming(m.proj.in_features, prefix + "proj"))
        self.put(prefix + "proj.bias", res)
        self.put(prefix + "pos", None, None, res)
        self.current, self.channels = res.perm, m.proj.out_features


def _is_patch_embed(m: nn.Module) -> bool:
    """A token embedding: a Linear ``proj`` plus learned positions ``pos`` of shape ``(1, T, D)``."""
    pos = getattr(m, "pos", None)
    return isinstance(getattr(m, "proj", None), nn.Linear) and isinstance(pos, nn.Parameter) and pos.ndim == 3


_HANDLERS: dict[type, Callable[[_SpecBuilder, nn.Module, str], None]] = {
    nn.Linear: _SpecBuilder.weighted,
    **{t: _SpecBuilder.weighted for t in _CONVS},
    **{t: _SpecBuilder.norm for t in (*_BATCHNORMS, nn.LayerNorm)},
    nn.TransformerEncoderLayer: _SpecBuilder.encoder_layer,
}


def permutation_spec(module: nn.Module) -> PermutationSpec:
    """The permutation symmetries of a chain of Linear/Conv layers (with norms, flattens and
    element-wise activations between them) or of a pre-/post-LN encoder stack; the output of the
    last Linear/Conv layer (the logits) is never permuted. Other modules with parameters raise
    :class:`UserError`."""
    b = _SpecBuilder(module)
    b.visit(module, "")
    return PermutationSpec(b.sizes, b.axes, b.units, frozenset(b.buffers))


# ---- REPAIR ------------------------------------------------------------------------------------


def _unit_stats(model: nn.Module, sd: StateDict, x: torch.Tensor, targets: dict[str, tuple[str, int]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-unit mean and std of each target module's output on ``x``."""
    modules = dict(model.named_modules())
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    hooks = []
    for group, (name, dim) in targets.items():
        def hook(_m, _i, out, group=group, dim=dim):
            flat = out.detach().movedim(dim, 0).reshape(out.shape[dim], -1).double()
            stats[group] = (flat.mean(1), flat.std(1))
        hooks.append(modules[name].register_forward_hook(hook))
    try:
        with torch.no_grad():
            functional_call(model, sd, (x,))
    finally:
        for h in hooks:
            h.remove()
    return stats


def repair(
    model: nn.Module,
    spec: PermutationSpec,
    merged: StateDict,
    endpoints: Sequence[StateDict],
    weights: Sequence[float],
    x: torch.Tensor,
    eps: float = 1e-8,
) -> StateDict:
    """REPAIR: for each hidden unit group in forward order, make the merged model's per-unit output
    mean and std on ``x`` equal ``sum_i w_i mu_i`` and ``sum_i w_i sigma_i`` of the (aligned)
    endpoints, by the affine change ``W <- a W, b <- a b + (mu_t - a mu_m)`` with
    ``a = sigma_t / sigma_m`` on the module ``spec.units`` names. Returns a new state dict."""
    ends = [_unit_stats(model, sd, x, spec.units) for sd in endpoints]
    out = dict(merged)
    for group, (name, dim) in spec.units.items():
        mu_t = sum(w * e[group][0] for w, e in zip(weights, ends))
        sd_t = sum(w * e[group][1] for w, e in zip(weights, ends))
        mu_m, sd_m = _unit_stats(model, out, x, {group: (name, dim)})[group]
        a = sd_t / sd_m.clamp(min=eps)
        c = mu_t - a * mu_m
        w, b = out[name + ".weight"], out[name + ".bias"]
        out[name + ".weight"] = (w.double() * a.reshape(-1, *([1] * (w.ndim - 1)))).to(w.dtype)
        out[name + ".bias"] = (b.double() * a + c).to(b.dtype)
    return out
