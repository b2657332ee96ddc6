"""The evaluation pool on Ray: persistent actors that build their evaluator once.

Each actor calls the evaluator factory once when it starts (so the zoo, task data,
activation caches and item bank load once per actor), then evaluates one candidate
per call. Candidates go to whichever actor is idle and results are yielded as they
finish (``ray.wait``). Results travel back as plain :class:`EvalResult` data; the run
folder is written by the driver only.

What Ray gives is used as is: actor resources (``num_cpus``, ``num_gpus``), the
environment (``runtime_env`` env vars), ``ray.wait``, ``ray.kill``, and the GPU ids a
worker was assigned. The scheduling loop is written here because no Ray API covers it
(measured and explained in docs/ray.md): ``ray.util.ActorPool`` returns a dead actor
to its idle set and raises an error without naming the candidate it belonged to, and
has no per-task timeout; ``max_task_retries`` cannot tell a crash (retry) from a
kill for a timeout (do not retry), and ``ray.cancel`` does not interrupt a running
task of a synchronous actor. So the pool itself replaces a dead or timed-out actor
with a fresh one and keeps one retry count per candidate.
"""

from __future__ import annotations

import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import ray
from ray.actor import ActorHandle
from ray.exceptions import RayActorError, RayTaskError

from evomerge.console import log
from evomerge.distributed.devices import pick_device, takes_device, torch_threads
from evomerge.distributed.pool import Evaluator, Pool, safe_evaluate
from evomerge.fitness.results import EvalResult, Known
from evomerge.errors import UserError
from evomerge.settings import Resources


class EvalWorker:
    """One Ray actor: builds the evaluator once on its device, then scores one recipe per call."""

    def __init__(self, factory: Callable[..., Evaluator], threads: int):
        import torch

        torch.set_num_threads(threads)
        self.device = pick_device(ray.get_gpu_ids(), torch.cuda.is_available())
        self.evaluator = factory(device=self.device) if takes_device(factory) else factory()

    def info(self) -> dict[str, Any]:
        """Where and how this worker runs (answered once the evaluator is built)."""
        import torch

        return {"pid": os.getpid(), "device": self.device, "threads": torch.get_num_threads(),
                "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "nice": os.nice(0)}

    def evaluate(self, candidate_id: str, recipe: dict, known: Known | None = None) -> EvalResult:
        return safe_evaluate(self.evaluator, candidate_id, recipe, known=known)


REMOTE_WORKER = ray.remote(EvalWorker)


@dataclass
class _Job:
    id: str
    recipe: dict
    known: Known | None = None
    deaths: int = 0  # workers that died while evaluating it


def connect(address: str | None, resources: Resources) -> bool:
    """Join the cluster at ``address`` (or ``RAY_ADDRESS``), else start a local Ray on 127.0.0.1
    sized for the workers (temp dir from ``RAY_TMPDIR``); no-op when Ray is already initialized.
    Returns whether this call started Ray."""
    if ray.is_initialized():
        return False
    target = address or os.environ.get("RAY_ADDRESS")
    if target:
        ray.init(address=target, log_to_driver=False)
    else:  # workers at normal priority: Ray's default (nice 15) leaves them only what other processes spare
        ray.init(num_cpus=max(1, round(resources.workers * resources.cpus_per_worker)),
                 include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1",
                 _system_config={"worker_niceness": 0})
    how = "joined the Ray cluster" if target else "started a local Ray"
    log(f"{how} at {ray.get_runtime_context().gcs_address} for {resources.workers} workers")
    return True


def check_fits(resources: Resources) -> None:
    """A UserError when no worker could ever be placed (it would wait forever): the cluster has
    fewer CPUs or GPUs in total than one worker asks for."""
    total = ray.cluster_resources()
    for kind, need in (("CPU", resources.cpus_per_worker), ("GPU", resources.gpus_per_worker)):
        if need > total.get(kind, 0):
            raise UserError(f"each worker asks for {need:g} {kind}s (resources.{kind.lower()}s_per_worker) "
                            f"but the Ray cluster has {total.get(kind, 0):g}")


def actor_options(resources: Resources) -> dict[str, Any]:
    """Ray options of one worker actor: its CPUs and GPUs, no Ray-side restart (the pool replaces
    dead workers itself), OpenMP with passive waits and one thread per whole CPU."""
    threads = str(torch_threads(resources.cpus_per_worker))
    return {"num_cpus": resources.cpus_per_worker, "num_gpus": resources.gpus_per_worker, "max_restarts": 0,
            "runtime_env": {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": threads}}}


class RayPool(Pool):
    """``resources.workers`` Ray actors, each holding one evaluator built by ``factory``.

    ``factory`` is called in each actor, with ``device=`` (``cuda:0`` or ``cpu``) when it accepts
    that keyword. A candidate whose worker dies (killed, out of memory) is retried on a fresh
    worker up to ``resources.max_retries`` times, then failed; one running longer than
    ``resources.timeout_s`` is failed and its worker killed and replaced. Each submitted
    candidate is yielded exactly once.
    """

    def __init__(self, factory: Callable[..., Evaluator], resources: Resources, address: str | None = None):
        self._owns_ray = connect(address, resources)
        try:
            check_fits(resources)
        except UserError:
            if self._owns_ray:
                ray.shutdown()
            raise
        self.capacity = resources.workers
        self.timeout_s = resources.timeout_s
        self.max_retries = resources.max_retries
        self._actor_options = actor_options(resources)
        self._factory = ray.put(factory)
        self._threads = torch_threads(resources.cpus_per_worker)
        self._name = f"evomerge-{uuid.uuid4().hex[:8]}"
        self._started = 0
        self._failed_starts = 0  # in a row
        #: workers killed and replaced (died or timed out)
        self.replaced = 0
        self._queue: deque[_Job] = deque()
        self._done: deque[EvalResult] = deque()
        self._starting: dict[ray.ObjectRef, ActorHandle] = {}
        self._idle: list[ActorHandle] = []
        self._running: dict[ray.ObjectRef, tuple[ActorHandle, _Job, float | None]] = {}
        for _ in range(self.capacity):
            self._start_worker()

    # ---- workers -----------------------------------------------------------------

    def _start_worker(self) -> None:
        """A new actor (named ``<pool>-<n>`` for ``ray list actors``); idle once its evaluator is built."""
        self._started += 1
        actor = REMOTE_WORKER.options(name=f"{self._name}-{self._started}", **self._actor_options).remote(
            self._factory, self._threads)
        self._starting[actor.info.remote()] = actor

    def _replace(self, actor: ActorHandle) -> None:
        ray.kill(actor)
        self.replaced += 1
        self._start_worker()

    def worker_info(self) -> list[dict[str, Any]]:
        """Each worker's pid, device, torch threads, OpenMP wait policy and niceness (of an idle pool; waits
        for start-up, so it also times it)."""
        self._await_workers()
        return ray.get([a.info.remote() for a in self._idle])

    def _await_workers(self) -> None:
        while self._starting:
            ready, _ = ray.wait(list(self._starting), num_returns=1)
            self._collect(ready[0])

    # ---- the pool interface --------------------------------------------------------

    def submit(self, candidate_id: str, recipe: dict, known: Known | None = None) -> None:
        self._queue.append(_Job(candidate_id, recipe, known))

    def pending(self) -> int:
        return len(self._queue) + len(self._running) + len(self._done)

    def results(self, timeout: float | None = None) -> Iterator[EvalResult]:
        last = time.monotonic()
        while self.pending():
            self._dispatch()
            if self._done:
                yield self._done.popleft()
                last = time.monotonic()
                continue
            now = time.monotonic()
            if timeout is not None and now - last >= timeout:
                return
            ready, _ = ray.wait([*self._running, *self._starting], num_returns=1, timeout=self._wait_s(now, last, timeout))
            for ref in ready:
                self._collect(ref)
            self._expire(time.monotonic())

    def close(self) -> None:
        """Kill every worker; shut Ray down if this pool started it."""
        for actor in [*self._idle, *self._starting.values(), *(a for a, _, _ in self._running.values())]:
            ray.kill(actor)
        self._idle.clear()
        self._starting.clear()
        self._running.clear()
        if self._owns_ray and ray.is_initialized():
            ray.shutdown()
            self._owns_ray = False

    # ---- the scheduling loop -----------------------------------------------------------

    def _dispatch(self) -> None:
        while self._queue and self._idle:
            job, actor = self._queue.popleft(), self._idle.pop()
            deadline = time.monotonic() + self.timeout_s if self.timeout_s else None
            self._running[actor.evaluate.remote(job.id, job.recipe, job.known)] = (actor, job, deadline)

    def _wait_s(self, now: float, last: float, timeout: float | None) -> float | None:
        """How long ``ray.wait`` may block: until the next deadline or the caller's timeout."""
        limits = [d - now for _, _, d in self._running.values() if d is not None]
        if timeout is not None:
            limits.append(last + timeout - now)
        return max(0.0, min(limits)) if limits else None

    def _collect(self, ref: ray.ObjectRef) -> None:
        if ref in self._starting:
            actor = self._starting.pop(ref)
            try:
                ray.get(ref)
            except RayActorError as exc:
                self._failed_starts += 1
                if self._failed_starts >= self.capacity:  # the factory itself fails, not one worker
                    raise RuntimeError(f"{self._failed_starts} Ray workers in a row failed to start: {exc}") from exc
                self._replace(actor)
                return
            self._failed_starts = 0
            self._idle.append(actor)
            return
        actor, job, _ = self._running.pop(ref)
        try:
            self._done.append(ray.get(ref))
            self._idle.append(actor)
        except RayActorError as exc:
            job.deaths += 1
            self._replace(actor)
            if job.deaths > self.max_retries:
                self._done.append(EvalResult(job.id, "failed", error=f"worker died {job.deaths} times "
                                             f"(max_retries={self.max_retries}); last: {_reason(exc)}"))
            else:
                self._queue.appendleft(job)
        except RayTaskError as exc:  # e.g. a result that cannot be serialized; the worker lives on
            self._done.append(EvalResult(job.id, "failed", error=_reason(exc)))
            self._idle.append(actor)

    def _expire(self, now: float) -> None:
        """Fail candidates past their deadline; their workers are killed and replaced."""
        for ref, (actor, job, deadline) in list(self._running.items()):
            if deadline is not None and now >= deadline:
                del self._running[ref]
                self._replace(actor)
                self._done.append(EvalResult(job.id, "failed", wall_s=self.timeout_s or 0.0,
                                             error=f"evaluation exceeded timeout_s={self.timeout_s:g}; worker replaced"))


def _reason(exc: BaseException) -> str:
    """``Type: first line`` of a Ray error, of the exception it wraps where it wraps one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"
