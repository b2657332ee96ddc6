"""Where a worker runs: its torch device and thread count, from what Ray assigned it."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any


def pick_device(gpu_ids: Sequence[Any], cuda_available: bool) -> str:
    """``cuda:0`` when the worker was assigned GPUs (Ray limits ``CUDA_VISIBLE_DEVICES`` to them,
    so the first visible one is the worker's own), ``cpu`` when it was assigned none.

    An assigned GPU that torch cannot see is a broken install, not a reason to run on the CPU.
    """
    if not gpu_ids:
        return "cpu"
    if not cuda_available:
        raise RuntimeError(f"Ray assigned GPUs {list(gpu_ids)} but torch sees no CUDA device")
    return "cuda:0"


def torch_threads(cpus_per_worker: float) -> int:
    """Torch threads for a worker holding ``cpus_per_worker`` CPUs: one per whole CPU, at least one."""
    return max(1, math.floor(cpus_per_worker))


def takes_device(factory: Callable[..., Any]) -> bool:
    """Whether ``factory`` accepts a ``device`` keyword (then the worker passes its device)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False
    return "device" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
