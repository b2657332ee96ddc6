"""Classification: the arg-max of the model's logits against an integer label.

Tensor inputs are stacked and batched in item order; text inputs go through the tokenizer, sorted by
length and padded (with the attention mask) per batch. The continuous score ``prob_label`` is the
softmax probability of the label.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from evomerge.errors import UserError
from evomerge.items.records import Item
from evomerge.items.scorers.base import ScoreResult, Scorer, batches, logits_of, register


@register("classification")
class ClassificationScorer(Scorer):
    """``argmax(logits) == label`` per item; the model is called as ``model(x)`` or ``model(**tokens)``."""

    metrics = ("acc",)

    def needs_tokenizer(self, items: tuple[Item, ...]) -> bool:
        return any(isinstance(i.fields["input"], str) for i in items)

    def _score(self, model: nn.Module, items: tuple[Item, ...], tokenizer: Any, device: torch.device, batch_size: int) -> ScoreResult:
        n = len(items)
        pred = np.zeros(n, dtype=np.int64)
        prob = np.zeros(n, dtype=np.float64)
        texts = [isinstance(i.fields["input"], str) for i in items]
        if any(texts) and not all(texts):
            raise UserError("classification items mix text and tensor inputs")
        if texts and texts[0]:
            order = sorted(range(n), key=lambda i: -len(items[i].fields["input"]))
        else:
            order = list(range(n))
        for batch in batches(order, batch_size):
            if texts[0]:
                enc = tokenizer([items[i].fields["input"] for i in batch], padding=True, truncation=True, return_tensors="pt")
                logits = logits_of(model(**{k: v.to(device) for k, v in enc.items()}))
            else:
                logits = logits_of(model(torch.stack([items[i].fields["input"] for i in batch]).to(device)))
            logits = logits.float()
            labels = torch.tensor([items[i].fields["label"] for i in batch], device=logits.device)
            if int(labels.max()) >= logits.shape[-1]:
                bad = batch[int(labels.argmax())]
                raise UserError(f"{items[bad].where}: label {items[bad].fields['label']} but the model has {logits.shape[-1]} classes")
            p = torch.softmax(logits, dim=-1)
            idx = np.array(batch)
            pred[idx] = logits.argmax(dim=-1).cpu().numpy()
            prob[idx] = p.gather(-1, labels[:, None]).squeeze(-1).cpu().double().numpy()
        labels = np.array([i.fields["label"] for i in items], dtype=np.int64)
        return ScoreResult(tuple(i.id for i in items), {"acc": pred == labels}, {"prob_label": prob}, tuple(int(v) for v in pred))
