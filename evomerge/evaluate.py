"""Evaluation harness: per-item 0/1 responses and accuracy of any model on a task's items."""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.data.tasks import TaskData

Model = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def predictions(model: Model, x: torch.Tensor, batch_size: int = 1024, device: str | torch.device = "cpu") -> torch.Tensor:
    """Arg-max class of ``model`` on ``x``, batched, in eval mode where the model has one."""
    if hasattr(model, "eval"):
        model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(dim=-1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def responses(
    model: Model,
    task: TaskData,
    batch_size: int = 1024,
    device: str | torch.device = "cpu",
    items: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-item correctness (bool, one per item in ``items`` or in the whole task)."""
    x, y = (task.x, task.y) if items is None else (task.x[items], task.y[items])
    return predictions(model, x, batch_size, device) == y


def accuracy(model: Model, task: TaskData, batch_size: int = 1024, device: str | torch.device = "cpu") -> float:
    """Share of the task's items the model answers correctly: k / n in double precision."""
    correct = responses(model, task, batch_size, device)
    return int(correct.sum()) / len(correct) if len(correct) else float("nan")
