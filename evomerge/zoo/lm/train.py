"""Training loop of the LM family: next-token loss on the answer of ``prompt + answer`` strings.

Deterministic for one seed on one thread: the batch order comes from a seeded ``random.Random``
and the initial weights from ``torch.manual_seed``. Optimiser: AdamW with linear warm-up and
cosine decay (the usual recipe for small decoders); loss only on answer tokens, so the model
learns to answer, not to generate prompts.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def encode_pairs(tokenizer: PreTrainedTokenizerBase, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], int]]:
    """Token ids of each ``prompt + answer`` and the number of prompt tokens."""
    out = []
    for prompt, answer in pairs:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        a = tokenizer(answer, add_special_tokens=False)["input_ids"]
        out.append((p + a, len(p)))
    return out


def collate(batch: Sequence[tuple[list[int], int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input ids, attention mask, and labels that are -100 outside the answers."""
    n = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), n), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), n), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), n), dtype=torch.long)
    for i, (seq, n_prompt) in enumerate(batch):
        ids[i, : len(seq)] = torch.tensor(seq)
        labels[i, n_prompt : len(seq)] = torch.tensor(seq[n_prompt:])
        mask[i, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_lm(
    model: PreTrainedModel, data: Sequence[tuple[list[int], int]], *, steps: int, lr: float, batch_size: int,
    seed: int, pad_id: int,
) -> float:
    """Train ``model`` in place for ``steps`` AdamW steps; returns the mean loss of the last 10%."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    warm = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    model.train()
    order: list[int] = []
    tail: list[float] = []
    for step in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(data)))
            rng.shuffle(fresh)
            order += fresh
        batch = collate([data[i] for i in order[:batch_size]], pad_id)
        del order[:batch_size]
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    model.eval()
    return sum(tail) / len(tail)
