"""Stitched models: A up to layer l, a map, B on from layer l' (seed 001 Alg. 4; seed 002 §3.5).

Three regimes: zero-shot (the map is an aligner fitted on activations only), stitch-tuned (only
the map trains on the task loss, sources frozen and checked unchanged) and partial fine-tuning
(the map and B's next block(s) train, on a private copy of B).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from evomerge.core.align import ConditionPair, make_aligner
from evomerge.core.align.base import Aligner
from evomerge.core.probe import ActivationCache, Labelled, ProbeSet
from evomerge.sources.adapters import ModelAdapter


def _count(modules: Sequence[nn.Module]) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


class StitchedModel(nn.Module):
    """``x ↦ B.forward_from(stitch(A.forward_to(x, layer_a)), layer_b, x)``.

    When ``x`` is a mapping of model inputs (Hugging Face ``input_ids`` + ``attention_mask``), B runs
    on from its layer with it, so a padded batch's mask reaches B's remaining layers; A and B then
    read the same inputs (for language models: one tokenizer). Tensor inputs are A's alone.

    The sources are held, not registered: ``parameters()`` and ``state_dict()`` hold the stitch
    (and B's copy when this model owns one, after :func:`partial_finetune`).
    """

    def __init__(self, a: ModelAdapter, layer_a: str, stitch: nn.Module, b: ModelAdapter, layer_b: str, owns_b: bool = False):
        super().__init__()
        a.check_layer(layer_a)
        b.check_layer(layer_b)
        self._sources = (a, b)
        self.layer_a, self.layer_b = layer_a, layer_b
        self.stitch = stitch
        if owns_b:
            self.b_copy = b.module

    @property
    def a(self) -> ModelAdapter:
        return self._sources[0]

    @property
    def b(self) -> ModelAdapter:
        return self._sources[1]

    def forward(self, x: Tensor) -> Tensor:
        inputs = x if isinstance(x, Mapping) else None
        return self.b.forward_from(self.stitch(self.a.forward_to(x, self.layer_a)), self.layer_b, inputs)

    @property
    def stitch_params(self) -> int:
        return sum(p.numel() for p in self.stitch.parameters())

    @property
    def num_params(self) -> int:
        """Parameters on the path: A's layers up to ``layer_a``, the stitch, B's layers after ``layer_b``.

        Exact for layered models; for other adapters the whole source module is counted.
        """
        return self._front_params() + self.stitch_params + self._back_params()

    def _front_params(self) -> int:
        names = self.a.layer_names
        if self.a.layered:
            return _count([self.a.layer_module(n) for n in names[: names.index(self.layer_a) + 1]])
        return _count([self.a.module])

    def _back_params(self) -> int:
        names = self.b.layer_names
        if self.b.layered:
            return _count([self.b.layer_module(n) for n in names[names.index(self.layer_b) + 1 :]])
        return _count([self.b.module])

    @property
    def stitch_share(self) -> float:
        """``stitch_params / num_params``."""
        return self.stitch_params / self.num_params


def condition_pairs(
    a_id: str,
    a: ModelAdapter,
    layer_a: str,
    b_id: str,
    b: ModelAdapter,
    layer_b: str,
    probes: Sequence[ProbeSet],
    cache: ActivationCache | None = None,
    weights: dict[str, float] | None = None,
) -> list[ConditionPair]:
    """Paired activations of both layers on each probe set (weights default to 1)."""
    cache = cache if cache is not None else ActivationCache()
    weights = weights or {}
    return [
        ConditionPair(cache.get(a_id, a, layer_a, p), cache.get(b_id, b, layer_b, p), weights.get(p.name, 1.0), p.name)
        for p in probes
    ]


def fit_stitch(
    aligner: Aligner | str,
    a: ModelAdapter,
    layer_a: str,
    b: ModelAdapter,
    layer_b: str,
    pairs: Sequence[ConditionPair],
    condition: str | None = None,
) -> StitchedModel:
    """Zero-shot stitch: fit ``aligner`` on the pairs and insert its map (``condition``: whose means)."""
    al = make_aligner(aligner) if isinstance(aligner, str) else aligner
    al.fit(list(pairs), kinds=(a.layer_kind(layer_a), b.layer_kind(layer_b)))
    return StitchedModel(a, layer_a, al.as_module(condition), b, layer_b)


@dataclass
class TuneResult:
    """What a tuning run trained and how it ended; ``sources_unchanged`` was verified."""

    epochs: int
    trained_params: int
    first_loss: float
    final_loss: float
    sources_unchanged: bool


def _snapshot(modules: Sequence[nn.Module]) -> list[dict[str, Tensor]]:
    return [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]


def _unchanged(modules: Sequence[nn.Module], snaps: list[dict[str, Tensor]]) -> bool:
    return all(
        all(torch.equal(v, snap[k]) for k, v in m.state_dict().items()) for m, snap in zip(modules, snaps)
    )


def _train(
    model: StitchedModel,
    params: list[nn.Parameter],
    frozen: Sequence[nn.Module],
    task: Labelled,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    penalty: float,
) -> TuneResult:
    """Adam on cross-entropy + ``penalty · Σ ||θ||²`` over the stitch's weights (seed 001 Alg. 4 step 4)."""
    snaps = _snapshot(frozen)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    stitch_weights = [p for p in model.stitch.parameters() if p.dim() > 1]
    losses: list[float] = []
    model.train()
    for _ in range(epochs):
        total = 0.0
        for idx in torch.randperm(len(task), generator=g).split(batch_size):
            loss = nn.functional.cross_entropy(model(task.x[idx]), task.y[idx])
            reg = penalty * sum(w.pow(2).sum() for w in stitch_weights) if penalty > 0 else 0.0
            opt.zero_grad()
            (loss + reg).backward()
            opt.step()
            total += loss.item() * len(idx)
        losses.append(total / len(task))
    model.eval()
    unchanged = _unchanged(frozen, snaps)
    if not unchanged:
        raise RuntimeError("a frozen source model changed during stitch tuning")
    first, final = (losses[0], losses[-1]) if losses else (float("nan"), float("nan"))
    return TuneResult(epochs, sum(p.numel() for p in params), first, final, unchanged)


def tune_stitch(
    model: StitchedModel,
    task: Labelled,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    penalty: float = 0.0,
) -> TuneResult:
    """Train only the stitch, in place, on ``task`` (its training split); sources verified unchanged."""
    frozen = [model.a.module, model.b.module]
    return _train(model, list(model.stitch.parameters()), frozen, task, epochs, lr, batch_size, seed, penalty)


def partial_finetune(
    model: StitchedModel,
    task: Labelled,
    blocks: int = 1,
    epochs: int = 5,
    lr: float = 1e-3,
    batch_size: int = 128,
    seed: int = 0,
    penalty: float = 0.0,
) -> tuple[StitchedModel, TuneResult]:
    """A new model whose stitch and B's next ``blocks`` layers after ``layer_b`` train (on a copy of B).

    The given model, A and the original B are left as they were (verified).
    """
    names = model.b.layer_names
    start = names.index(model.layer_b) + 1
    tuned_names = names[start : start + blocks]
    if not tuned_names:
        raise ValueError(f"no layer of B after '{model.layer_b}' to fine-tune")
    b_copy = copy.deepcopy(model.b)
    new = StitchedModel(model.a, model.layer_a, copy.deepcopy(model.stitch), b_copy, model.layer_b, owns_b=True)
    params = list(new.stitch.parameters()) + [p for n in tuned_names for p in b_copy.layer_module(n).parameters()]
    frozen = [model.a.module, model.b.module, model.stitch]
    return new, _train(new, params, frozen, task, epochs, lr, batch_size, seed, penalty)
