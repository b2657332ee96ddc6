"""Multiple choice scored as lm-eval-harness scores ``output_type: multiple_choice`` on a causal LM.

Each choice is one request ``(context, target_delimiter + choice)``; its log-likelihood is the sum of
the log-probabilities of the continuation's tokens (``HFLM._loglikelihood_tokens``: tokens split as
in :meth:`CausalLM.encode_pair`, the input cut from the left to the model's maximum length).
``acc``: ``argmax`` of the log-likelihoods is the gold index; ``acc_norm``: ``argmax`` of each
log-likelihood divided by ``len(choice)`` in characters, the choice without the delimiter
(``ConfigurableTask.process_results``); ``numpy.argmax`` keeps the first of equal values.
The continuous score ``prob_gold`` is the gold choice's share of ``softmax(lls)``. Each item's output
is a :class:`Choices`: the log-likelihoods and, as lm-eval logs them, whether each continuation is the
greedy one (every token the argmax of its position's logits).

Unlike ``HFLM`` (every request run whole, right padding, logits at every position): each distinct
context runs once (left padding, the attention mask and the unpadded position ids) and its choices run
on its key/value cache, and only the scored positions go through the LM head. Models without a cache,
and inputs that must be cut to the model's length, run whole per request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evomerge.items.records import Item
from evomerge.items.scorers.base import ScoreResult, Scorer, batches, register
from evomerge.items.scorers.lm import CausalLM


@dataclass(frozen=True)
class Choices:
    """A multiple-choice item's output: per choice, its log-likelihood and whether it is greedy."""

    loglikelihoods: tuple[float, ...]
    greedy: tuple[bool, ...]


def _scored(logp: torch.Tensor, cont: Sequence[int]) -> tuple[float, bool]:
    """``(Σ log p(token), every token the argmax)`` of a continuation from its positions' log-probabilities."""
    tokens = torch.tensor(cont, device=logp.device)
    return float(logp.gather(-1, tokens.unsqueeze(-1)).sum()), bool((logp.argmax(-1) == tokens).all())


@torch.inference_mode()
def loglikelihoods(lm: CausalLM, requests: Sequence[tuple[str, str]], batch_size: int,
                   share_context: bool = True) -> list[tuple[float, bool]]:
    """``(log-likelihood, is_greedy)`` of each ``(context, continuation)`` request, as ``HFLM.loglikelihood`` gives them.

    ``share_context`` (where the model keeps a key/value cache and no input needs truncating): each
    distinct context runs once and its continuations run on its cache; ``batch_size`` bounds the
    continuations per batch. Otherwise each request runs whole, ``batch_size`` per batch.
    """
    pairs = [lm.encode_pair(context, continuation) for context, continuation in requests]
    fits = all(len(c) + len(t) <= lm.max_length + 1 for c, t in pairs)
    if share_context and fits and lm.can_share_context:
        return _shared_context(lm, pairs, batch_size)
    keys = [(tuple((c + t)[-(lm.max_length + 1) :][:-1]), tuple(t)) for c, t in pairs]
    unique = list(dict.fromkeys(keys))
    order = sorted(range(len(unique)), key=lambda i: (-len(unique[i][0]), unique[i][0]))
    value: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
    for batch in batches(order, batch_size):
        rows = [list(unique[i][0]) for i in batch]
        keep = max(len(unique[i][1]) for i in batch)
        logp = F.log_softmax(lm.last_logits(rows, keep), dim=-1)
        for row, i in enumerate(batch):
            cont = unique[i][1]
            value[unique[i]] = _scored(logp[row, keep - len(cont) :], cont)
    return [value[k] for k in keys]


def _shared_context(lm: CausalLM, pairs: list[tuple[list[int], list[int]]], batch_size: int) -> list[tuple[float, bool]]:
    groups: dict[tuple[int, ...], dict[tuple[int, ...], None]] = {}
    for ctx, cont in pairs:
        groups.setdefault(tuple(ctx), {})[tuple(cont)] = None
    contexts = sorted(groups, key=lambda c: (-len(c), c))
    value: dict[tuple[tuple[int, ...], tuple[int, ...]], tuple[float, bool]] = {}
    start = 0
    while start < len(contexts):
        stop, rows = start, 0
        while stop < len(contexts) and (stop == start or rows + len(groups[contexts[stop]]) <= batch_size):
            rows += len(groups[contexts[stop]])
            stop += 1
        batch = contexts[start:stop]
        index = [b for b, ctx in enumerate(batch) for _ in groups[ctx]]
        conts = [list(c) for ctx in batch for c in groups[ctx]]
        last, rest = lm.context_then_continuations([list(c) for c in batch], index, conts)
        first = F.log_softmax(last, dim=-1)
        rest = F.log_softmax(rest, dim=-1) if rest is not None else None
        for r, (b, cont) in enumerate(zip(index, conts)):
            logp = first[b : b + 1]
            if len(cont) > 1:
                logp = torch.cat([logp, rest[r, : len(cont) - 1]])
            value[(batch[b], tuple(cont))] = _scored(logp, cont)
        start = stop
    return [value[(tuple(c), tuple(t))] for c, t in pairs]


@register("multiple_choice")
class MultipleChoiceScorer(Scorer):
    """Per-choice log-likelihoods of a causal LM; ``acc`` and ``acc_norm`` as lm-eval computes them."""

    metrics = ("acc", "acc_norm")

    def _score(self, model: nn.Module, items: tuple[Item, ...], tokenizer: Any, device: torch.device, batch_size: int) -> ScoreResult:
        delim = self.format.target_delimiter
        requests = [(i.fields["context"], f"{delim}{c}") for i in items for c in i.fields["choices"]]
        flat = loglikelihoods(CausalLM(model, tokenizer, device), requests, batch_size) if requests else []
        acc, acc_norm, prob, outputs = [], [], [], []
        start = 0
        for item in items:
            choices, gold = item.fields["choices"], item.fields["gold"]
            scored = flat[start : start + len(choices)]
            lls = np.array([ll for ll, _ in scored], dtype=np.float64)
            start += len(choices)
            lengths = np.array([float(len(c)) for c in choices])
            acc.append(int(np.argmax(lls)) == gold)
            acc_norm.append(int(np.argmax(lls / lengths)) == gold)
            e = np.exp(lls - lls.max())
            prob.append(float(e[gold] / e.sum()))
            outputs.append(Choices(tuple(float(v) for v in lls), tuple(g for _, g in scored)))
        return ScoreResult(
            tuple(i.id for i in items),
            {"acc": np.array(acc, dtype=bool), "acc_norm": np.array(acc_norm, dtype=bool)},
            {"prob_gold": np.array(prob, dtype=np.float64)},
            tuple(outputs),
        )
