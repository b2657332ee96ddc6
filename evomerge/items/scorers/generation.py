"""Generation scored as lm-eval-harness scores ``output_type: generate_until`` with ``exact_match``.

Greedy decoding (``HFLM.generate_until``): prompts left-padded in batches sorted longest first, the
context cut from the left to ``max_length - max_gen_toks`` tokens, at most ``max_gen_toks`` new
tokens; the continuation is decoded without special tokens and cut at the first stop string
(``until`` plus the EOS token's text). Then the optional ``regex`` filter
(``lm_eval/filters/extraction.py``) and ``exact_match`` with its options
(``lm_eval/api/metrics.py``: ``regexes_to_ignore``, ``ignore_case``, ``ignore_punctuation``,
``ignore_numbers``, applied with the same numpy string operations); with several targets the item
is correct when any target matches. Each item's output is a :class:`Generated`: the continuation and
what the filter made of it.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from evomerge.errors import UserError
from evomerge.items.records import Item, Normalize, RegexFilter
from evomerge.items.scorers.base import ScoreResult, Scorer, batches, register
from evomerge.items.scorers.lm import CausalLM


@dataclass(frozen=True)
class Generated:
    """A generation item's output: the continuation (cut at the stop string) and the filtered response."""

    text: str
    filtered: str


def regex_filter(text: str, spec: RegexFilter) -> str:
    """lm-eval's ``RegexFilter`` on one response (a ``group_select`` past the matches, where lm-eval
    raises ``IndexError``, gives the fallback)."""
    found = re.findall(spec.regex, text)
    if not found or not -len(found) <= spec.group_select < len(found):
        return spec.fallback
    match = found[spec.group_select]
    if isinstance(match, tuple):
        parts = [m for m in match if m]
        match = parts[0] if parts else spec.fallback
    return match.strip()


def exact_match(prediction: str, references: tuple[str, ...], norm: Normalize) -> bool:
    """lm-eval's ``exact_match_hf_evaluate`` of one prediction against each reference; any match counts."""
    preds = [prediction] * len(references)
    refs = list(references)
    if norm.regexes_to_ignore:
        for pattern in norm.regexes_to_ignore:
            preds = np.array([re.sub(pattern, "", x) for x in preds])
            refs = np.array([re.sub(pattern, "", x) for x in refs])
    else:
        preds, refs = np.asarray(preds), np.asarray(refs)
    if norm.ignore_case:
        preds, refs = np.char.lower(preds), np.char.lower(refs)
    if norm.ignore_punctuation:
        table = string.punctuation.maketrans("", "", string.punctuation)
        preds, refs = np.char.translate(preds, table=table), np.char.translate(refs, table=table)
    if norm.ignore_numbers:
        table = string.digits.maketrans("", "", string.digits)
        preds, refs = np.char.translate(preds, table=table), np.char.translate(refs, table=table)
    return bool(np.any(preds == refs))


class _StopStrings:
    """Per-row stop once any stop string appears in the last few new tokens (as lm-eval's
    ``MultiTokenEOSCriteria`` looks back: the stop string's token count plus two)."""

    def __init__(self, tokenizer: Any, stops: list[str], start: int):
        self.tokenizer, self.stops, self.start = tokenizer, stops, start
        self.lookback = max(len(tokenizer.encode(s, add_special_tokens=False)) for s in stops) + 2

    def __call__(self, input_ids: torch.Tensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(input_ids[:, self.start :][:, -self.lookback :])
        done = [any(s in t for s in self.stops) for t in tails]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


@register("generation")
class GenerationScorer(Scorer):
    """Greedy generation with stop strings and a length cap, then exact match after a filter."""

    metrics = ("exact_match",)

    def generate(self, lm: CausalLM, prompts: list[str], batch_size: int) -> list[str]:
        """The continuation of each prompt, cut at the first stop string (``HFLM.generate_until``)."""
        from transformers import StoppingCriteria, StoppingCriteriaList

        fmt = self.format
        tok = lm.tokenizer
        eos = tok.decode(tok.eos_token_id, skip_special_tokens=False) if tok.eos_token_id is not None else None
        until = [s for s in fmt.until]
        if eos is not None and eos not in until:
            until.append(eos)
        max_ctx = lm.max_length - fmt.max_gen_toks
        if max_ctx <= 0:
            raise UserError(f"max_gen_toks {fmt.max_gen_toks} leaves no room for the prompt in the model's {lm.max_length} tokens")
        encoded = [lm.encode(p)[-max_ctx:] for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: (-len(encoded[i]), prompts[i]))
        out: list[str] = [""] * len(prompts)
        crit = type("StopStrings", (_StopStrings, StoppingCriteria), {})
        for batch in batches(order, batch_size):
            width = max(len(encoded[i]) for i in batch)
            ids = torch.full((len(batch), width), lm.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
                mask[row, width - len(encoded[i]) :] = 1
            gen = lm.model.generate(
                input_ids=ids.to(lm.device),
                attention_mask=mask.to(lm.device),
                max_length=width + fmt.max_gen_toks,
                do_sample=False,
                stopping_criteria=StoppingCriteriaList([crit(tok, until, width)]),
                pad_token_id=lm.pad_token_id,
                use_cache=True,
            )
            for row, i in enumerate(batch):
                text = tok.decode(gen[row, width:].tolist(), skip_special_tokens=True)
                for stop in until:
                    if stop:
                        text = text.split(stop)[0]
                out[i] = text
        return out

    def _score(self, model: nn.Module, items: tuple[Item, ...], tokenizer: Any, device: torch.device, batch_size: int) -> ScoreResult:
        raw = self.generate(CausalLM(model, tokenizer, device), [i.fields["prompt"] for i in items], batch_size) if items else []
        fmt = self.format
        filtered = [regex_filter(r, fmt.filter) if fmt.filter is not None else r for r in raw]
        correct = [exact_match(f, i.fields["targets"], fmt.normalize) for f, i in zip(filtered, items)]
        return ScoreResult(tuple(i.id for i in items), {"exact_match": np.array(correct, dtype=bool)}, {},
                           tuple(Generated(r, f) for r, f in zip(raw, filtered)))
