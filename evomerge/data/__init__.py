"""Embedded data: datasets, task conditions, splits and tasks with stable item ids."""

from evomerge.data.conditions import Condition, get_condition, list_conditions
from evomerge.data.datasets import DATASETS, load_raw
from evomerge.data.tasks import TaskData, load_task, parse_task_key

__all__ = ["Condition", "DATASETS", "TaskData", "get_condition", "list_conditions", "load_raw", "load_task", "parse_task_key"]
