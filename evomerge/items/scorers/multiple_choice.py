"""Multiple choice scored as lm-eval-harness scores ``output_type: multiple_choice`` on a causal LM.

Each choice is one request ``(context, target_delimiter + choice)``; its log-likelihood is the sum of
the log-probabilities of the continuation's tokens (``HFLM._loglikelihood_tokens``: tokens split as
in :meth:`CausalLM.encode_pair`, the input cut from the left to the model's maximum length).
``acc``: ``argmax`` of the log-likelihoods is the gold index; ``acc_norm``: ``argmax`` of each
log-likelihood divided by ``len(choice)`` in characters, the choice without the delimiter
(``ConfigurableTask.process_results``); ``numpy.argmax`` keeps the first of equal values.
The continuous score ``prob_gold`` is the gold choice's share of ``softmax(lls)``.

Unlike ``HFLM`` (right padding, logits for every position), requests are deduplicated, batched
longest first with left padding, the attention mask and the unpadded position ids, and only the
continuation positions go through the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from evomerge.items.records import Item
from evomerge.items.scorers.base import ScoreResult, Scorer, batches, register
from evomerge.items.scorers.lm import CausalLM


def loglikelihoods(lm: CausalLM, requests: Sequence[tuple[str, str]], batch_size: int) -> list[float]:
    """Log-likelihood of each ``(context, continuation)`` request, as ``HFLM.loglikelihood`` gives it."""
    keys: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for context, continuation in requests:
        ctx, cont = lm.encode_pair(context, continuation)
        inp = (ctx + cont)[-(lm.max_length + 1) :][:-1]
        keys.append((tuple(inp), tuple(cont)))
    unique = list(dict.fromkeys(keys))
    order = sorted(range(len(unique)), key=lambda i: (-len(unique[i][0]), unique[i][0]))
    value: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
    for batch in batches(order, batch_size):
        rows = [list(unique[i][0]) for i in batch]
        keep = max(len(unique[i][1]) for i in batch)
        logp = F.log_softmax(lm.last_logits(rows, keep), dim=-1)
        for row, i in enumerate(batch):
            cont = unique[i][1]
            picked = logp[row, keep - len(cont) :].gather(-1, torch.tensor(cont, device=logp.device).unsqueeze(-1))
            value[unique[i]] = float(picked.sum())
    return [value[k] for k in keys]


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
            lls = np.array(flat[start : start + len(choices)], dtype=np.float64)
            start += len(choices)
            lengths = np.array([float(len(c)) for c in choices])
            acc.append(int(np.argmax(lls)) == gold)
            acc_norm.append(int(np.argmax(lls / lengths)) == gold)
            e = np.exp(lls - lls.max())
            prob.append(float(e[gold] / e.sum()))
            outputs.append(tuple(float(v) for v in lls))
        return ScoreResult(
            tuple(i.id for i in items),
            {"acc": np.array(acc, dtype=bool), "acc_norm": np.array(acc_norm, dtype=bool)},
            {"prob_gold": np.array(prob, dtype=np.float64)},
            tuple(outputs),
        )
