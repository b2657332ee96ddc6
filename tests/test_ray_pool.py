"""The Ray pool: device choice, workers built once, streaming, failures, timeouts, a killed
worker mid-search, Ctrl-C, and resuming the run folder."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import torch

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray port on 127.0.0.1
import ray  # noqa: E402
import search_fakes  # noqa: E402
from search_fakes import ITEM_IDS, ToyEvaluator, toy_space  # noqa: E402

from evomerge.distributed.devices import pick_device, takes_device, torch_threads  # noqa: E402
from evomerge.fitness.results import EvalResult  # noqa: E402
from evomerge.distributed.ray_pool import RayPool, connect  # noqa: E402
from evomerge.errors import UserError  # noqa: E402
from evomerge.search.engines.base import candidate_id  # noqa: E402
from evomerge.search.runner import run_search  # noqa: E402
from evomerge.search.space import Resources, parse_space, with_overrides  # noqa: E402

# ---- device and threads (no Ray) ----------------------------------------------------


def test_device_is_the_assigned_gpu_else_cpu():
    assert pick_device([], cuda_available=False) == "cpu"
    assert pick_device([], cuda_available=True) == "cpu"  # a GPU on the node is not a GPU for this worker
    assert pick_device(["3"], cuda_available=True) == "cuda:0"  # CUDA_VISIBLE_DEVICES holds only it
    with pytest.raises(RuntimeError, match="no CUDA device"):
        pick_device([0], cuda_available=False)


def test_threads_follow_whole_cpus_and_device_reaches_factories_that_take_it():
    assert [torch_threads(c) for c in (0.25, 1, 1.9, 2, 4.5)] == [1, 1, 1, 2, 4]

    class WithDevice:
        def __init__(self, device: str = "cpu"): ...

    assert takes_device(WithDevice) and takes_device(lambda device: 0) and takes_device(lambda **kw: 0)
    assert not takes_device(lambda: 0) and not takes_device(ToyEvaluator)


# ---- one Ray session for the module ------------------------------------------------------


@pytest.fixture(scope="module")
def ray_session():
    """The pool's own local Ray for 2 workers (loopback, 2 CPUs), its temp dir short (socket
    paths) and removed after; shared by every pool of the module."""
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    saved = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir
    assert connect(None, Resources(workers=2)) and ray.cluster_resources()["CPU"] == 2
    for module in (sys.modules[__name__], search_fakes):  # test code is not importable in workers
        ray.cloudpickle.register_pickle_by_value(module)
    yield
    ray.shutdown()
    os.environ.pop("RAY_TMPDIR") if saved is None else os.environ.update(RAY_TMPDIR=saved)
    shutil.rmtree(temp_dir, ignore_errors=True)


class Scripted:
    """Evaluator whose behaviour the recipe dictates; logs each construction to ``built_log``."""

    def __init__(self, built_log: str, device: str = "cpu"):
        with open(built_log, "a") as f:
            f.write(f"{os.getpid()} {device}\n")

    def evaluate(self, candidate_id: str, recipe: dict, known: list | None = None) -> EvalResult:
        time.sleep(recipe.get("sleep", 0.0))
        if recipe.get("raise"):
            raise ValueError(recipe["raise"])
        if recipe.get("exit"):
            os._exit(1)  # the worker process dies, as under the OOM killer
        if recipe.get("unpicklable"):
            return EvalResult(candidate_id, "ok", {"accuracy/mean": 0.5}, [threading.Lock()])
        return EvalResult(candidate_id, "ok", {"accuracy/mean": recipe.get("acc", 0.5), "pid": os.getpid()})


def scripted_pool(tmp_path: Path, **resources) -> tuple[RayPool, Path]:
    log = tmp_path / "built.log"
    return RayPool(lambda device: Scripted(str(log), device), Resources(workers=2, **resources)), log


def gone(pids: list[int], within_s: float = 15.0) -> bool:
    end = time.monotonic() + within_s
    while time.monotonic() < end:
        alive = []
        for pid in pids:
            try:
                os.kill(pid, 0)
                alive.append(pid)
            except ProcessLookupError:
                pass
        if not alive:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.ray
def test_workers_build_once_stream_results_and_stop_on_close(ray_session, tmp_path):
    pool, log = scripted_pool(tmp_path)
    info = pool.worker_info()
    assert pool.capacity == 2 and len({i["pid"] for i in info}) == 2
    assert all(i["device"] == "cpu" and i["threads"] == 1 and i["omp_wait_policy"] == "PASSIVE" for i in info)
    assert all(i["nice"] == os.nice(0) for i in info)  # as the driver: not Ray's default background priority

    pool.submit("slow", {"sleep": 1.5, "acc": 0.1})
    pool.submit("quick", {"acc": 0.2})
    for i in range(4):
        pool.submit(f"c{i}", {"acc": i / 10})
    assert pool.pending() == 6
    got = []
    for r in pool.results():
        got.append(r.id)
        if r.id == "c0":
            pool.submit("late", {})  # submitted while iterating, still yielded
    assert got[0] == "quick" and got.index("slow") > got.index("c0")  # as they finish, not in order
    assert sorted(got) == sorted(["slow", "quick", "c0", "c1", "c2", "c3", "late"]) and pool.pending() == 0

    lines = log.read_text().split()
    assert sorted(map(int, lines[::2])) == sorted(i["pid"] for i in info)  # one evaluator per worker
    assert set(lines[1::2]) == {"cpu"}  # the factory took the worker's device

    pool.submit("waits", {"sleep": 3})
    start = time.monotonic()
    assert list(pool.results(timeout=0.5)) == [] and pool.pending() == 1
    assert time.monotonic() - start < 2

    pool.close()
    assert gone([i["pid"] for i in info])


@pytest.mark.ray
def test_failures_deaths_and_timeouts_are_results_of_their_candidate(ray_session, tmp_path):
    pool, log = scripted_pool(tmp_path, max_retries=1, timeout_s=4.0)
    with pool:
        pool.submit("boom", {"raise": "bad layer l3"})
        pool.submit("nan", {"acc": math.nan})
        pool.submit("dies", {"exit": True})
        pool.submit("hangs", {"sleep": 60})
        pool.submit("unpicklable", {"unpicklable": True})
        for i in range(3):
            pool.submit(f"ok{i}", {"acc": 0.7})
        start = time.monotonic()
        results = list(pool.results())
        elapsed = time.monotonic() - start
        workers = pool.worker_info()  # waits for the last replacement to start
    by_id = {r.id: r for r in results}
    assert len(results) == len(by_id) == 8  # each candidate exactly once
    assert by_id["boom"].status == "failed" and by_id["boom"].error == "ValueError: bad layer l3"
    assert by_id["nan"].status == "failed" and "non-finite" in by_id["nan"].error
    assert by_id["dies"].status == "failed" and "worker died 2 times (max_retries=1)" in by_id["dies"].error
    assert by_id["hangs"].status == "failed" and "exceeded timeout_s=4" in by_id["hangs"].error
    assert by_id["unpicklable"].status == "failed" and "pickle" in by_id["unpicklable"].error
    assert all(by_id[f"ok{i}"].status == "ok" for i in range(3))
    assert pool.replaced == 3 and elapsed < 40  # two deaths and one timeout, each worker replaced
    assert len(workers) == 2
    built = log.read_text().splitlines()
    assert len(built) == len(set(built)) == 2 + 3  # each replacement builds its own evaluator, once


class KilledOnce(ToyEvaluator):
    """The toy evaluator, except that the first attempt at ``target`` announces its worker's actor
    name in ``marker`` and stalls until the test kills that worker."""

    def __init__(self, target: str, marker: str):
        super().__init__(raise_above=0.5, sleep_s=0.2)
        self.target, self.marker_path = target, marker

    def evaluate(self, candidate_id: str, recipe: dict, known: list | None = None) -> EvalResult:
        if candidate_id == self.target and not os.path.exists(self.marker_path):
            Path(self.marker_path).write_text(ray.get_runtime_context().get_actor_name())
            time.sleep(120)
        return super().evaluate(candidate_id, recipe, known)


def when_file(path: Path, action, timeout_s: float = 60) -> threading.Thread:
    """Run ``action(path)`` in a thread as soon as ``path`` exists."""

    def watch() -> None:
        end = time.monotonic() + timeout_s
        while not path.exists() and time.monotonic() < end:
            time.sleep(0.05)
        if path.exists():
            action(path)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return thread


def ids(run: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (run / "evaluations.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_search_survives_a_killed_worker_and_resumes(ray_session, tmp_path):
    space = parse_space(toy_space("optuna_tpe", evaluations=10, resources={"workers": 2, "max_retries": 1}))
    run, marker, target = tmp_path / "run", tmp_path / "marker", candidate_id(3)
    killer = when_file(marker, lambda p: ray.kill(ray.get_actor(p.read_text())))
    with RayPool(lambda: KilledOnce(target, str(marker)), space.resources) as pool:
        summary = run_search(space, pool, run, item_ids=ITEM_IDS, progress=False)
        killer.join()
        assert pool.replaced == 1
        assert ids(run).count(target) == 1 and sorted(ids(run)) == [candidate_id(i) for i in range(10)]
        assert summary["complete"] and summary["evaluations"] == 10
        record = next(json.loads(x) for x in (run / "evaluations.jsonl").read_text().splitlines()
                      if json.loads(x)["id"] == target)
        assert record["status"] == "ok" or record["error"].startswith("RuntimeError: cannot materialize")

        more = with_overrides(space, **{"budget.evaluations": 14})
        summary = run_search(more, pool, run, resume=True, item_ids=ITEM_IDS, progress=False)
    assert sorted(ids(run)) == [candidate_id(i) for i in range(14)] and summary["evaluations"] == 14
    responses = [json.loads(x)["id"] for x in (run / "responses.jsonl").read_text().splitlines()]
    assert len(responses) == len(set(responses))  # no candidate's answers logged twice


@pytest.mark.ray
def test_ctrl_c_stops_the_workers_and_the_run_resumes(ray_session, tmp_path):
    space = parse_space(toy_space("optuna_tpe", evaluations=12, resources={"workers": 2}))
    run = tmp_path / "run"
    pool = RayPool(lambda: ToyEvaluator(raise_above=0.5, sleep_s=0.3), space.resources)
    pids = [i["pid"] for i in pool.worker_info()]

    def after_four_records() -> None:
        path = run / "evaluations.jsonl"
        while not path.exists() or len(path.read_text().splitlines()) < 4:
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGINT)

    interrupt = threading.Thread(target=after_four_records, daemon=True)
    # Ctrl-C as the CLI meets it: Python's own handler (a library or an earlier test may have replaced it)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        interrupt.start()
        with pytest.raises(KeyboardInterrupt), pool:
            run_search(space, pool, run, item_ids=ITEM_IDS, progress=False)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert gone(pids)  # close() on the way out killed the workers
    assert not json.loads((run / "summary.json").read_text())["complete"]
    done = ids(run)
    assert 4 <= len(done) < 12 and len(set(done)) == len(done)

    with RayPool(lambda: ToyEvaluator(raise_above=0.5), space.resources) as pool:
        summary = run_search(space, pool, run, resume=True, item_ids=ITEM_IDS, progress=False)
    # 12 distinct candidates, no id skipped: a trial interrupted while Optuna was still suggesting its
    # genes was never journaled, so its number is asked again on resume.
    final = ids(run)
    assert summary["complete"] and len(final) == len(set(final)) == 12
    assert set(final) == {candidate_id(i) for i in range(12)}
    assert final[: len(done)] == done  # nothing finished before Ctrl-C was redone


class Broken:
    def __init__(self):
        raise FileNotFoundError("zoo model cnn-x is not built")


@pytest.mark.ray
def test_an_evaluator_that_cannot_be_built_stops_the_pool_with_its_error(ray_session):
    with RayPool(Broken, Resources(workers=2)) as pool:
        pool.submit("c0", {})
        with pytest.raises(RuntimeError, match="(?s)2 Ray workers in a row failed to start.*zoo model cnn-x"):
            list(pool.results())


@pytest.mark.ray
def test_a_worker_the_cluster_cannot_hold_is_a_user_error(ray_session):
    gpus = ray.cluster_resources().get("GPU", 0)
    with pytest.raises(UserError, match=f"asks for {gpus + 1:g} GPUs .* has {gpus:g}"):
        RayPool(ToyEvaluator, Resources(workers=2, gpus_per_worker=gpus + 1))
    with pytest.raises(UserError, match="asks for 3 CPUs"):
        RayPool(ToyEvaluator, Resources(workers=1, cpus_per_worker=3))


@pytest.mark.ray
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine: GPU placement "
                    "needs one (the device choice itself is unit-tested above on CPU)")
def test_gpu_worker_places_its_evaluator_on_its_gpu(ray_session, tmp_path):
    log = tmp_path / "built.log"
    with RayPool(lambda device: Scripted(str(log), device), Resources(workers=1, gpus_per_worker=1)) as pool:
        [info] = pool.worker_info()
        assert info["device"] == "cuda:0"
        assert log.read_text().split()[1] == "cuda:0"
