"""The scorer interface, its registry (keyed by the format ``type``) and :class:`ScoreResult`."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from evomerge.errors import UserError
from evomerge.items.records import Item, ItemSet, parse_format
from evomerge.registry import Registry


@dataclass(frozen=True)
class ScoreResult:
    """Per-item answers of one model on items, in the items' order.

    ``correct``: metric name -> bool array (the 0/1 answers); ``scores``: name -> float array
    (continuous scores, where the kind has one); ``outputs``: per item, what the model produced
    (a ``Choices`` of log-likelihoods and greediness, a ``Generated`` text and its filtered form, the
    predicted class).
    """

    ids: tuple[str, ...]
    correct: dict[str, np.ndarray]
    scores: dict[str, np.ndarray]
    outputs: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def answers(self, metric: str | None = None) -> np.ndarray:
        """The 0/1 answers of ``metric`` (default: the scorer's first metric)."""
        name = metric if metric is not None else next(iter(self.correct))
        if name not in self.correct:
            raise UserError(f"unknown metric '{name}'; valid: {', '.join(self.correct)}")
        return self.correct[name]

    def accuracy(self, metric: str | None = None) -> float:
        answers = self.answers(metric)
        return float(answers.mean()) if len(answers) else float("nan")


class Scorer(ABC):
    """Scores a resident model on items of one kind, batched, on the given device.

    Built from a format block (``make_scorer``); ``score`` never loads, copies or moves the model.
    """

    name: ClassVar[str]
    #: 0/1 metrics, the first is the primary one.
    metrics: ClassVar[tuple[str, ...]]

    def __init__(self, fmt: Any):
        self.format = fmt

    def score(
        self,
        model: nn.Module,
        items: ItemSet | Sequence[Item],
        *,
        tokenizer: Any = None,
        device: str | torch.device | None = None,
        batch_size: int = 32,
    ) -> ScoreResult:
        """Per-item answers. Inputs go to ``device`` (default: the model's own), where the model must be."""
        items = tuple(items)
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if tokenizer is None and self.needs_tokenizer(items):
            raise UserError(f"the {self.name} scorer needs the model's tokenizer for these items")
        if device is None:
            param = next(iter(model.parameters()), None)
            device = param.device if param is not None else torch.device("cpu")
        if hasattr(model, "eval"):
            model.eval()
        with torch.inference_mode():
            return self._score(model, items, tokenizer, torch.device(device), batch_size)

    def needs_tokenizer(self, items: tuple[Item, ...]) -> bool:
        """Whether scoring ``items`` reads text (language-model scorers always do)."""
        return True

    @abstractmethod
    def _score(self, model: nn.Module, items: tuple[Item, ...], tokenizer: Any, device: torch.device, batch_size: int) -> ScoreResult: ...


SCORERS: Registry[type[Scorer]] = Registry("scorer")


#: ``@register(name)``: a :class:`Scorer` under the format ``type`` it scores (sets ``cls.name``).
register = SCORERS.named


def make_scorer(fmt: Any, source: str = "<format>") -> Scorer:
    """The scorer for an item set or a format block (its ``type`` names the scorer)."""
    if isinstance(fmt, ItemSet):
        fmt = fmt.format
    fmt = parse_format(fmt, source)
    return SCORERS.get(fmt.type)(fmt)


def logits_of(out: Any) -> torch.Tensor:
    """``out.logits`` of a Hugging Face output, the first element of a tuple, or the tensor itself."""
    value = getattr(out, "logits", None)
    if value is not None:
        return value
    return out[0] if isinstance(out, (tuple, list)) else out


def batches(order: Sequence[int], size: int) -> list[list[int]]:
    return [list(order[i : i + size]) for i in range(0, len(order), size)]
