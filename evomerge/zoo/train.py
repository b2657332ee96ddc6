"""Deterministic training of zoo models (Adam, cross-entropy, seeded shuffling)."""

from __future__ import annotations

import torch
from torch import nn

from evomerge.data.tasks import TaskData


def train_model(
    net: nn.Module,
    task: TaskData,
    epochs: int,
    seed: int,
    lr: float = 3e-3,
    batch_size: int = 128,
    weight_decay: float = 0.0,
    params: list[nn.Parameter] | None = None,
) -> nn.Module:
    """Train ``net`` (or only ``params``) on ``task`` in place; the result is fixed by ``seed``.

    Cosine learning-rate decay to zero over all steps; the data order comes from a
    generator seeded with ``seed``, so training never depends on global RNG state.
    """
    gen = torch.Generator().manual_seed(seed)
    trainable = params if params is not None else [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=lr, weight_decay=weight_decay)
    steps = epochs * ((len(task) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps, 1))
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(task), generator=gen)
        for start in range(0, len(task), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad(set_to_none=True)
            loss_fn(net(task.x[idx]), task.y[idx]).backward()
            opt.step()
            sched.step()
    net.eval()
    return net
