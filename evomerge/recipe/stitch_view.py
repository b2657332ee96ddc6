"""A cross-architecture stitch of causal LMs as a view over resident source models (``stitch`` recipes
over Hugging Face sources): one trunk LM, branches of other architectures reached through aligners.

For every position of a token sequence the trunk runs whole and gives its own next-token distribution
``p_0``; a branch ``k`` takes the trunk's hidden state at ``source_layer``, maps it per token into its
own residual stream at ``target_layer`` with an aligner fitted on paired activations of the same
training texts (one tokenizer: the rows pair token by token), and runs its remaining blocks, final norm
and head: ``p_k``. The paths are routed per position exactly as the zoo's
:class:`~evomerge.recipe.merged.StitchMerge` routes per item (:func:`~evomerge.core.gate.route`):
``p = Σ_k r_k p_k / Σ_k r_k``. The learned router's features are the trunk's last hidden state and
every path's log-probabilities (seed 001's task-conditioned α_t, made input-adaptive); it is fitted on the
answer tokens of the training texts. A fixed per-task coefficient would need the task at generation
time, which a causal LM is not given: a view reads a ``weight`` mapping's ``default``.

The module is a causal LM for evomerge's scorers: ``forward(input_ids, attention_mask, position_ids)``
returns ``logits`` (the log of the routed mixture) and :meth:`StitchedLM.generate` decodes greedily
with the scorers' stopping criteria, each model run keeping a key/value cache. A branch runs its front
blocks too, discarded, because :class:`~evomerge.sources.adapters.HFAdapter` cuts a Hugging Face model
with a hook on its full forward.
The source models are only read; any number of views leaves them as they were.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutput

from evomerge.core.align import ConditionPair
from evomerge.core.align.base import Aligner
from evomerge.core.gate import fit_gate, route
from evomerge.items.scorers.lm import left_pad, pad_id
from evomerge.sources.adapters import HFAdapter

if TYPE_CHECKING:
    from evomerge.recipe.schema import StitchRecipe


class PerToken(nn.Module):
    """Apply a row map ``(N, d_a) -> (N, d_b)`` at every position of ``(B, T, d_a)``."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, h: Tensor) -> Tensor:
        out = self.inner(h.reshape(-1, h.shape[-1]))
        return out.reshape(*h.shape[:-1], out.shape[-1])


def _unique(params: Any) -> dict[int, nn.Parameter]:
    return {id(p): p for p in params}


def tail_params(adapter: HFAdapter, layer: str | None) -> int:
    """Parameters a branch adds when entered after ``layer`` (None: the whole model): its blocks after
    it, its final norm and its head (a head tied to the input embeddings counts once, as the head);
    its embeddings and earlier blocks do not run."""
    module = adapter.module
    every = _unique(module.parameters())
    if layer is None:
        return sum(p.numel() for p in every.values())
    names = adapter.layer_names
    front = _unique(p for n in names[: names.index(layer) + 1] for p in adapter.layer_module(n).parameters())
    front |= _unique(p for m in module.modules() if isinstance(m, nn.Embedding) for p in m.parameters())
    head = module.get_output_embeddings()
    keep = _unique(head.parameters()) if head is not None else {}
    return sum(p.numel() for k, p in every.items() if k not in front or k in keep)


@dataclass
class LMPath:
    """One branch: the trunk's ``source_layer`` -> ``stitch`` -> ``model`` on from ``target_layer``
    (``stitch`` None: the branch runs whole on the input, an output ensemble)."""

    model: HFAdapter
    source_layer: str | None
    stitch: nn.Module | None
    target_layer: str | None
    weight: float


def model_inputs(input_ids: Tensor, attention_mask: Tensor | None, position_ids: Tensor | None) -> dict[str, Tensor]:
    """The inputs both architectures read: ids, mask and the unpadded positions of a left-padded batch."""
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0) if position_ids is None else position_ids
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": pos}


class StitchedLM(nn.Module):
    """The routed causal LM of a trunk and its stitched branches (see the module docstring)."""

    def __init__(self, trunk: HFAdapter, trunk_weight: float, paths: Sequence[LMPath], routing: str = "mixture"):
        super().__init__()
        self._trunk, self._paths = trunk, list(paths)
        self.stitches = nn.ModuleList([p.stitch for p in paths if p.stitch is not None])
        self.trunk_weight, self.routing = trunk_weight, routing
        self.gate_layer = trunk.layer_names[-1]
        self.gate: nn.Module | None = None
        self.config = copy.deepcopy(trunk.module.config)
        self.config.max_position_embeddings = min(m.module.config.max_position_embeddings for m in [trunk, *(p.model for p in paths)])
        self.eos_token_id = trunk.module.config.eos_token_id

    @property
    def weights(self) -> Tensor:
        return torch.tensor([self.trunk_weight, *(p.weight for p in self._paths)])

    def path_outputs(self, inputs: Mapping[str, Tensor], caches: Sequence[Any] | None = None) -> tuple[Tensor, Tensor]:
        """Every path's next-token probabilities ``(K, B, T, V)`` (the trunk's own first) and the trunk's
        hidden state at the gate layer ``(B, T, d)``. ``caches``: one key/value cache per model run (the
        trunk's, then each path's), updated in place; ``inputs`` then hold only the new tokens' ids and
        positions (and the whole attention mask)."""
        def given(k: int) -> dict[str, Any]:
            return dict(inputs) | ({"cache": caches[k], "use_cache": True} if caches is not None else {})

        needed = {p.source_layer for p in self._paths if p.stitch is not None} | {self.gate_layer}
        acts: dict[str, Tensor] = {}
        hooks = [self._trunk.layer_module(n).register_forward_hook(
            lambda _m, _i, out, n=n: acts.__setitem__(n, out[0] if isinstance(out, tuple) else out)) for n in needed]
        try:
            logits = [self._trunk(given(0))]
        finally:
            for h in hooks:
                h.remove()
        for k, p in enumerate(self._paths, start=1):
            if p.stitch is None:
                logits.append(p.model(given(k)))
            else:
                logits.append(p.model.forward_from(p.stitch(acts[p.source_layer]), p.target_layer, given(k)))
        return torch.stack([torch.softmax(z.float(), dim=-1) for z in logits]), acts[self.gate_layer]

    def _routed(self, probs: Tensor, hidden: Tensor) -> Tensor:
        gate = None
        if self.routing == "learned":
            if self.gate is None:
                raise RuntimeError("routing 'learned' needs a fitted gate")
            gate = torch.softmax(self.gate(self.gate_features(probs, hidden)), dim=-1)
        return route(probs, self.weights.to(probs), self.routing, gate)

    @staticmethod
    def gate_features(probs: Tensor, hidden: Tensor) -> Tensor:
        """``[h(x_≤t), log p_0, ..., log p_K]`` per position: ``(*, d + K·V)``."""
        logp = probs.clamp_min(1e-8).log().movedim(0, -2).flatten(-2)
        return torch.cat([hidden.float(), logp], dim=-1)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                logits_to_keep: int = 0, use_cache: bool | None = None) -> CausalLMOutput:
        """``logits``: the log of the routed next-token mixture at the last ``logits_to_keep`` positions (0: all)."""
        probs, hidden = self.path_outputs(model_inputs(input_ids, attention_mask, position_ids))
        if logits_to_keep:
            probs, hidden = probs[:, :, -logits_to_keep:], hidden[:, -logits_to_keep:]
        return CausalLMOutput(logits=self._routed(probs, hidden))

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, max_length: int = 20,
                 stopping_criteria: Any = None, pad_token_id: int | None = None, do_sample: bool = False,
                 use_cache: bool = True) -> Tensor:
        """Greedy decoding as ``transformers``' ``generate`` does it with ``do_sample=False``: a row ends at
        EOS or when ``stopping_criteria`` says so, and is padded with ``pad_token_id`` from then on.

        ``use_cache``: every model run (the trunk, each branch's tail through its hook) keeps a key/value
        cache, so a step runs only the new token; a branch's cache after its ``target_layer`` holds the
        keys and values of the mapped states. Without it each step runs the whole sequence (same tokens)."""
        from transformers import DynamicCache

        if do_sample:
            raise ValueError("a stitched LM decodes greedily only")
        ids = input_ids
        mask = torch.ones_like(ids) if attention_mask is None else attention_mask
        pad = self.eos_token_id if pad_token_id is None else pad_token_id
        done = torch.zeros(len(ids), dtype=torch.bool, device=ids.device)
        caches = [DynamicCache() for _ in range(1 + len(self._paths))] if use_cache else None
        step = model_inputs(ids, mask, None)
        while ids.shape[1] < max_length and not bool(done.all()):
            if caches is None:
                step = model_inputs(ids, mask, None)
            probs, hidden = self.path_outputs(step, caches)
            nxt = self._routed(probs[:, :, -1:], hidden[:, -1:])[:, -1].argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            mask = torch.cat([mask, (~done).long()[:, None]], dim=1)
            step = {"input_ids": nxt[:, None], "attention_mask": mask, "position_ids": step["position_ids"][:, -1:] + 1}
            done |= nxt == self.eos_token_id
            if stopping_criteria is not None:
                done |= stopping_criteria(ids, None)
        return ids

    def num_params(self) -> int:
        """Parameters on the paths that run: the whole trunk, the maps, the branches' tails and the gate."""
        n = sum(p.numel() for p in _unique(self._trunk.module.parameters()).values())
        n += sum(tail_params(p.model, p.target_layer) for p in self._paths)
        n += sum(p.numel() for s in self.stitches for p in s.parameters())
        return n + (sum(p.numel() for p in self.gate.parameters()) if self.gate is not None else 0)


@dataclass
class FitTexts:
    """The training texts views fit on: per task name, ``(prompt, answer)`` pairs
    (:meth:`~evomerge.items.ItemSet.answered`; a task without any is left out), and the tokenizer both architectures share (the prompt
    encoded as the scorers encode it, the answer without special tokens). Batches are made once per
    (task, count) and token rows once per (model, layer, task, count), reused by every candidate."""

    pairs: Mapping[str, Sequence[tuple[str, str]]]
    tokenizer: Any
    batch_size: int = 128
    _rows: dict[tuple[str, str, str, int], Tensor] = field(default_factory=dict, repr=False)
    _batches: dict[tuple[str, int], list[tuple[dict[str, Tensor], Tensor]]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.pairs = {task: pairs for task, pairs in self.pairs.items() if pairs}  # tasks without training items fit nothing

    def batches(self, task: str, n: int) -> list[tuple[dict[str, Tensor], Tensor]]:
        """Left-padded model inputs of the first ``n`` texts of ``task`` (as the scorers pad them), and per
        row which positions predict an answer token (``(B, T)`` boolean); made once per (task, count)."""
        key = (task, n)
        if key not in self._batches:
            pairs = list(self.pairs[task][:n])
            self._batches[key] = []
            for start in range(0, len(pairs), self.batch_size):
                chunk = pairs[start : start + self.batch_size]
                encoded = [(self.tokenizer.encode(p), self.tokenizer.encode(a, add_special_tokens=False)) for p, a in chunk]
                ids, mask = left_pad([p + a for p, a in encoded], pad_id(self.tokenizer))
                answer = torch.zeros_like(ids, dtype=torch.bool)
                for r, (_, a) in enumerate(encoded):
                    answer[r, ids.shape[1] - len(a) - 1 : -1] = True  # the positions whose next token is the answer's
                self._batches[key].append((model_inputs(ids, mask, None), answer))
        return self._batches[key]

    @torch.no_grad()
    def rows(self, name: str, adapter: HFAdapter, layer: str, task: str, n: int) -> Tensor:
        """``layer``'s hidden state at every real token of the first ``n`` texts of ``task``: ``(N, d)``."""
        key = (name, layer, task, n)
        if key not in self._rows:
            parts = [adapter.forward_to(dict(x), layer)[x["attention_mask"].bool()] for x, _ in self.batches(task, n)]
            self._rows[key] = torch.cat(parts).float()
        return self._rows[key]


def fit_path(aligner: Aligner, trunk: tuple[str, HFAdapter], layer_a: str, branch: tuple[str, HFAdapter],
             layer_b: str, fit: FitTexts, conditions: Sequence[tuple[str, Sequence[str], int]]) -> PerToken:
    """The branch's map: ``aligner`` fitted on paired token rows, one condition per ``(name, tasks, n per task)``."""
    pairs = [ConditionPair(torch.cat([fit.rows(*trunk, layer_a, t, n) for t in tasks]),
                           torch.cat([fit.rows(*branch, layer_b, t, n) for t in tasks]), 1.0, name)
             for name, tasks, n in conditions]
    aligner.fit(pairs, kinds=("vector", "vector"))
    return PerToken(aligner.as_module(None))


@torch.no_grad()
def fit_router(model: StitchedLM, fit: FitTexts, tasks: Sequence[str], n: int, epochs: int, seed: int) -> nn.Module:
    """The learned gate, fitted by maximum mixture likelihood (:func:`~evomerge.core.gate.fit_gate`) on the
    answer tokens of the first ``n`` training texts of each task."""
    feats, probs, labels = [], [], []
    for task in tasks:
        for inputs, answer in fit.batches(task, n):
            p, hidden = model.path_outputs(inputs)
            feats.append(model.gate_features(p, hidden)[answer])
            probs.append(p[:, answer])
            labels.append(inputs["input_ids"][:, 1:][answer[:, :-1]])
    return fit_gate(torch.cat(feats), torch.cat(probs, dim=1), torch.cat(labels), model.weights, epochs=epochs, seed=seed)


def block_names(config: Mapping[str, Any]) -> list[str]:
    """The block names :class:`~evomerge.sources.adapters.HFAdapter` cuts a causal LM of ``config`` at
    (``model.layers.0`` ..., ``transformer.h.0`` ...), read from a model built on the meta device (once
    per config: a search checks every sampled genome's layers)."""
    return list(HFAdapter.from_model(meta_causal_lm(config)).layer_names)


def meta_causal_lm(config: Mapping[str, Any]) -> nn.Module:
    """The causal LM of a Hugging Face ``config`` built on the meta device (no weights), made once per config."""
    return _meta_causal_lm(json.dumps(dict(config), sort_keys=True, default=str))


@functools.lru_cache(maxsize=32)
def _meta_causal_lm(config_json: str) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = json.loads(config_json)
    cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(cfg)


def stitch_view(recipe: StitchRecipe, models: Mapping[str, nn.Module], fit: FitTexts) -> StitchedLM:
    """The :class:`StitchedLM` of a ``stitch`` recipe over resident causal LMs: each branch's aligner fitted
    on token rows of its fit tasks' training texts, then, for ``routing: learned``, the router."""
    from evomerge.core.align import make_aligner
    from evomerge.recipe.merged import weight_for

    tasks = list(fit.pairs)
    trunk = (recipe.trunk, HFAdapter.from_model(models[recipe.trunk]))
    paths = []
    for br in recipe.branches:
        branch = (br.model, HFAdapter.from_model(models[br.model]))
        chosen = recipe.fit_tasks(br.fit, tasks)
        per_task = max(1, br.fit.items // len(chosen))
        conditions = ([(t, [t], per_task) for t in chosen] if br.fit.conditioning == "task"
                      else [("all", chosen, per_task)])
        aligner = make_aligner(br.aligner.name, center=br.aligner.center, seed=recipe.seed, **br.aligner.params)
        stitch = fit_path(aligner, trunk, br.source_layer, branch, br.target_layer, fit, conditions)
        paths.append(LMPath(branch[1], br.source_layer, stitch, br.target_layer, weight_for(br.weight, None)))
    model = StitchedLM(trunk[1], weight_for(recipe.trunk_weight, None), paths, recipe.routing)
    if recipe.gate.layer is not None:
        model.gate_layer = recipe.gate.layer
    if recipe.routing == "learned":
        gate_tasks = [recipe.gate.task] if recipe.gate.task else tasks
        model.gate = fit_router(model, fit, gate_tasks, max(1, recipe.gate.items // len(gate_tasks)),
                                recipe.gate.epochs, recipe.seed)
    return model.eval()
