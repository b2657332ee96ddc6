"""The built-in datasets (digits, MNIST-1D under a condition) as classification item sets."""

from __future__ import annotations

from evomerge.data.tasks import TaskData, load_task
from evomerge.items.records import ClassificationFormat, Item, ItemSet


def task_items(task: TaskData) -> ItemSet:
    """A task's items with the task's stable ids, its split, tensor inputs and integer labels."""
    fmt = ClassificationFormat(type="classification")
    items = tuple(
        Item(item_id, task.split, {"input": task.x[i], "label": int(task.y[i])}, f"{task.key}/{task.split}[{i}]")
        for i, item_id in enumerate(task.item_ids)
    )
    return ItemSet(f"{task.key}/{task.split}", fmt, items)


def builtin_items(dataset: str, condition: str = "all", split: str = "val", seed: int = 0) -> ItemSet:
    """:func:`task_items` of :func:`~evomerge.data.tasks.load_task`."""
    return task_items(load_task(dataset, condition, split, seed))
