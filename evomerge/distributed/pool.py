"""The evaluation pool interface and the in-process pool.

A pool takes ``(candidate_id, recipe, known)`` submissions and yields
:class:`~evomerge.fitness.results.EvalResult` objects as they finish; ``known`` is the driver's view of the search so far (the metrics of the
current Pareto front's candidates), which an evaluator may use (IRT fitness takes its incumbent
and front from it, so every worker shares them) or ignore. The same interface is backed by Ray actors elsewhere; the
in-process pool here serves tests and small runs.
"""

from __future__ import annotations

import math
import signal
import threading
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from evomerge.fitness.results import EvalResult, Known


class Evaluator(Protocol):
    """Worker-side evaluator: holds models and data, loaded once; scores one recipe."""

    def evaluate(self, candidate_id: str, recipe: dict, known: Known | None = None) -> EvalResult: ...


class Pool(ABC):
    """Evaluates submitted candidates and yields their results as they finish."""

    #: how many candidates the pool evaluates at once (the driver keeps it full)
    capacity: int

    @abstractmethod
    def submit(self, candidate_id: str, recipe: dict, known: Known | None = None) -> None:
        """Queue one candidate (with the driver's view at submission)."""

    @abstractmethod
    def results(self, timeout: float | None = None) -> Iterator[EvalResult]:
        """Yield each finished result once, including work submitted while iterating; stop when
        nothing is pending or no result came within ``timeout`` seconds."""

    @abstractmethod
    def pending(self) -> int:
        """Candidates submitted and not yet yielded."""

    def close(self) -> None:
        """Release workers."""

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checked(result: EvalResult) -> EvalResult:
    """A result whose objectives are not all finite numbers becomes a failure."""
    if result.status == "ok":
        bad = {k: v for k, v in result.objectives.items() if not (isinstance(v, (int, float)) and math.isfinite(v))}
        if bad:
            result.status, result.error = "failed", f"non-finite objectives: {bad}"
    return result


def safe_evaluate(evaluator: Evaluator, candidate_id: str, recipe: dict, timeout_s: float | None = None,
                  known: Known | None = None) -> EvalResult:
    """Evaluate, turning exceptions, timeouts and NaN/inf objectives into failed results."""
    start = time.perf_counter()
    try:
        with _time_limit(timeout_s):
            result = evaluator.evaluate(candidate_id, recipe, known)
    except Exception as exc:  # the candidate fails, the search goes on
        tail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return EvalResult(candidate_id, "failed", wall_s=time.perf_counter() - start, error=tail)
    result.wall_s = result.wall_s or time.perf_counter() - start
    return checked(result)


class EvaluationTimeout(Exception):
    pass


@contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """Raise EvaluationTimeout after ``seconds`` (SIGALRM; only in the main thread, else unlimited)."""
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(*_: Any) -> None:
        raise EvaluationTimeout(f"evaluation exceeded timeout_s={seconds:g}")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class InProcessPool(Pool):
    """Evaluates candidates one at a time in this process with one evaluator built once.

    Sets torch to ``threads`` threads (one per worker, as for Ray workers).
    """

    capacity = 1

    def __init__(self, evaluator_factory: Callable[[], Evaluator], *, timeout_s: float | None = None,
                 threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.evaluator = evaluator_factory()
        self.timeout_s = timeout_s
        self._queue: deque[tuple[str, dict, Known | None]] = deque()

    def submit(self, candidate_id: str, recipe: dict, known: Known | None = None) -> None:
        self._queue.append((candidate_id, recipe, known))

    def results(self, timeout: float | None = None) -> Iterator[EvalResult]:
        while self._queue:
            candidate_id, recipe, known = self._queue.popleft()
            yield safe_evaluate(self.evaluator, candidate_id, recipe, self.timeout_s, known)

    def pending(self) -> int:
        return len(self._queue)
