"""Routing between paths and between task subspaces.

* :class:`TaskMix` — task-conditioned routing coefficients (seed 001, Algorithm 4 step 5):
  ``a^t = alpha_t * f(a_l) + (1 - alpha_t) * a_l'`` mixes a stitched path ``f(a_l)`` with the
  native activation ``a_l'``, one ``alpha_t`` in [0, 1] per task.
* :class:`MASS` — input-adaptive routing over task subspaces (Crisostomi et al., "MASS:
  MoErging through Adaptive Subspace Selection", 2025). Each task's update of a routing layer
  ``W`` (a Linear layer) is factored ``Delta_t = U_t S_t V_t^T``; the input ``z`` of that layer
  (first pass, through the TSV-merge of all tasks) is scored per task by its relative projection
  residual ``r_t = ||z - V_t V_t^T z|| / ||z||`` onto the top ``route_rank`` right singular
  vectors (the input directions the task changed). Task probabilities are
  ``softmax(-r / temperature)``; the ``top_k`` most probable tasks, or all above ``threshold``,
  are selected. A second pass runs the TSV-merge of only the selected tasks (cached per task
  combination) and mixes the selected tasks' heads' logits by their renormalized probabilities
  (heads with fewer classes are padded with -inf, so a class is reachable when every selected
  head has it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from evomerge.core.merge import StateDict, add_update, is_trunk_key, layer_value, task_vectors
from evomerge.core.merge.tsv import default_rank, is_matrix, low_rank, tsv_compress, tsv_merge
from evomerge.errors import UserError


class TaskMix(nn.Module):
    """``alpha_t * stitched + (1 - alpha_t) * native`` with one learnable ``alpha_t`` per task.

    ``alpha`` is kept in [0, 1] by clamping (so 0 and 1, the pure paths, are reachable)."""

    def __init__(self, alphas: Sequence[float]):
        super().__init__()
        self.alpha = nn.Parameter(torch.as_tensor(list(alphas), dtype=torch.float32))

    def forward(self, stitched: torch.Tensor, native: torch.Tensor, task: int | torch.Tensor) -> torch.Tensor:
        """``task``: one task index for the batch, or one per sample (LongTensor of shape ``(B,)``)."""
        a = self.alpha.clamp(0.0, 1.0)[torch.as_tensor(task)]
        if a.ndim == 1:
            a = a.reshape(-1, *([1] * (native.ndim - 1)))
        return a * stitched + (1 - a) * native


class MASS(nn.Module):
    """A task-agnostic merged model: route each input to task subspaces, merge those with TSV.

    ``module`` gives the architecture (its own weights are not used); ``base`` is the pretrained
    state; ``taus[t]`` the trunk task vectors; ``heads[t]`` the head entries of task ``t``
    (any keys ``taus`` lacks, e.g. ``layers.head.*``). ``layer`` names the Linear sub-module whose
    input is routed. ``rank``/``alpha`` are TSV-M's parameters for the second pass; the default
    rank keeps ``min(m, n) // T`` components per task and matrix (``T`` = all tasks, as TSV-C
    stores them), whichever tasks are selected.
    """

    def __init__(
        self,
        module: nn.Module,
        base: StateDict,
        taus: list[StateDict],
        heads: list[StateDict],
        layer: str,
        route_rank: int = 4,
        rank: int | dict[str, int] | None = None,
        alpha: float = 1.0,
        top_k: int = 1,
        threshold: float | None = None,
        temperature: float = 0.05,
    ):
        super().__init__()
        target = dict(module.named_modules()).get(layer)
        if not isinstance(target, nn.Linear):
            linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
            raise UserError(f"MASS routing layer '{layer}' is not a Linear sub-module; Linear layers: {', '.join(linears)}")
        if len(taus) != len(heads) or not taus:
            raise UserError(f"MASS needs one head per task, got {len(taus)} task vectors and {len(heads)} heads")
        if not 1 <= top_k <= len(taus):
            raise UserError(f"MASS top_k must be in 1..{len(taus)}, got {top_k}")
        self.module, self.base, self.taus, self.heads = module, base, taus, heads
        self.layer, self.target = layer, target
        if rank is None:  # TSV-C storage: each task keeps a 1/T share of every matrix's rank
            rank = {k: default_rank(v, len(taus)) for k, v in taus[0].items() if is_matrix(v)}
        self.alpha = alpha
        self.factors = tsv_compress(taus, rank)  # TSV-C once; every merge of a task subset reuses it
        self.top_k, self.threshold, self.temperature = top_k, threshold, temperature
        key = layer + ".weight"
        self.register_buffer("subspaces", input_subspaces([t[key] for t in taus], route_rank), persistent=False)
        self.cache: dict[tuple[int, ...], StateDict] = {}

    @classmethod
    def from_finetuned(cls, module: nn.Module, base: StateDict, finetuned: list[StateDict], layer: str, **kwargs: Any) -> MASS:
        """Build from fine-tuned state dicts of the shared-base family (trunk = not ``layers.head.*``)."""
        taus = task_vectors(base, finetuned, is_trunk_key)
        heads = [{k: v for k, v in sd.items() if k not in taus[0]} for sd in finetuned]
        return cls(module, base, taus, heads, layer, **kwargs)

    def merged(self, tasks: tuple[int, ...]) -> StateDict:
        """The TSV-merge of ``tasks`` (cached): TSV-M of their stored factors, summed non-matrix updates."""
        if tasks not in self.cache:
            sums = {k: layer_value(self.alpha, k, "tsv.alpha") * sum(self.taus[t][k] for t in tasks)
                    for k, v in self.taus[0].items() if not is_matrix(v)}
            self.cache[tasks] = add_update(self.base, tsv_merge([self.factors[t] for t in tasks], self.alpha) | sums)
        return self.cache[tasks]

    def residuals(self, z: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` relative residuals of the routing-layer inputs ``z`` (``(B, ..., d)``, tokens averaged)."""
        return subspace_residuals(z.reshape(z.shape[0], -1, z.shape[-1]).mean(dim=1), self.subspaces)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """First pass: task probabilities ``(B, T)`` and the boolean selection ``(B, T)``."""
        seen: list[torch.Tensor] = []
        hook = self.target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            with torch.no_grad():
                functional_call(self.module, {**self.merged(tuple(range(len(self.taus)))), **self.heads[0]}, (x,))
        finally:
            hook.remove()
        return select_tasks(self.residuals(seen[0]), self.temperature, self.top_k, self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs, selected = self.route(x)
        groups = []
        for combo in torch.unique(selected, dim=0):
            rows = (selected == combo).all(dim=1)
            tasks = tuple(combo.nonzero().flatten().tolist())
            trunk = self.merged(tasks)
            w = probs[rows][:, list(tasks)]
            w = w / w.sum(dim=1, keepdim=True)
            heads = [functional_call(self.module, {**trunk, **self.heads[t]}, (x[rows],)) for t in tasks]
            width = max(h.shape[-1] for h in heads)
            groups.append((rows, sum(w[:, i : i + 1] * pad_classes(h, width) for i, h in enumerate(heads))))
        width = max((g.shape[-1] for _, g in groups), default=0)
        out = x.new_empty(len(x), width)
        for rows, logits in groups:
            out[rows] = pad_classes(logits, width)
        return out


def input_subspaces(deltas: Sequence[torch.Tensor], rank: int) -> torch.Tensor:
    """``(T, rank, d)``: each task's update of one layer's weight, its top-``rank`` right singular
    vectors (the input directions the task changed most)."""
    return torch.stack([low_rank(d, rank).Vh for d in deltas])


def subspace_residuals(z: torch.Tensor, subspaces: torch.Tensor) -> torch.Tensor:
    """``r_t = ||z - V_t V_t^T z|| / ||z||``: ``(B, T)`` for pooled inputs ``z`` ``(B, d)`` and the tasks'
    orthonormal input directions ``subspaces`` ``(T, r, d)`` (rows of ``V_t^T``)."""
    z = z.float()
    proj = torch.einsum("bd,trd,tre->bte", z, subspaces, subspaces)
    return (z[:, None] - proj).norm(dim=-1) / z.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def select_tasks(residuals: torch.Tensor, temperature: float, top_k: int = 1,
                 threshold: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """MASS's selection from the residuals ``(B, T)``: probabilities ``softmax(-r / temperature)`` and the
    boolean selection, the ``top_k`` most probable tasks (or, with ``threshold``, every task at or above it
    and always the most probable)."""
    probs = torch.softmax(-residuals / temperature, dim=1)
    selected = torch.zeros_like(probs, dtype=torch.bool)
    selected.scatter_(1, probs.topk(top_k, dim=1).indices, True)
    if threshold is not None:
        selected = (probs >= threshold) | (probs == probs.max(dim=1, keepdim=True).values)
    return probs, selected


def pad_classes(logits: torch.Tensor, width: int) -> torch.Tensor:
    """Logits of a head with fewer classes, padded with -inf up to ``width`` classes."""
    return nn.functional.pad(logits, (0, width - logits.shape[-1]), value=float("-inf"))
