"""Candidates per minute on the default space: in-process, RayPool with 1 and 2 actors, and
Ray's own options (``ray.util.ActorPool``, Ray Tune with ``reuse_actors``), plus start-up and
recovery from a worker killed mid-run (SIGKILL, as the OOM killer would).

Every mode evaluates the same candidates (drawn by the ``random`` engine per seed) with the
real ``RecipeEvaluator``, each run from a fresh evaluator (cold activation cache), one torch
thread per worker. Throughput excludes start-up (evaluator built, actors ready), which is
reported on its own; Tune's figure includes it (Tune has no separate start-up to exclude).

    python benchmarks/ray_scaling.py [--candidates 24] [--seeds 0 1 2] [--no-tune]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every Ray port on 127.0.0.1

import argparse  # noqa: E402
import json  # noqa: E402
import multiprocessing  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import ray  # noqa: E402
import torch  # noqa: E402
from ray.util import ActorPool  # noqa: E402

from evomerge.distributed.devices import torch_threads  # noqa: E402
from evomerge.distributed.pool import InProcessPool, Pool, safe_evaluate  # noqa: E402
from evomerge.fitness.results import EvalResult, Known  # noqa: E402
from evomerge.distributed.ray_pool import REMOTE_WORKER, RayPool, actor_options, connect  # noqa: E402
from evomerge.fitness.zoo_evaluator import RecipeEvaluator  # noqa: E402
from evomerge.search.engines import ENGINES  # noqa: E402
from evomerge.search.space import Resources, SearchSpace, decode, load_space, with_overrides  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "cross_arch.yaml"
OUT = ROOT / "benchmarks" / "results" / "ray_scaling.json"

Jobs = list[tuple[str, dict]]


class CpuTimed:
    """The real evaluator, its result's metrics extended by ``cpu_s``: the CPU time the worker got
    while evaluating (against ``wall_s`` it shows how much of a core other processes left it)."""

    def __init__(self, space: SearchSpace):
        self.inner = RecipeEvaluator(space)

    def evaluate(self, candidate_id: str, recipe: dict, known: Known | None = None) -> EvalResult:
        start = time.process_time()
        result = self.inner.evaluate(candidate_id, recipe, known)
        result.objectives["cpu_s"] = time.process_time() - start
        return result


def _matmuls(n: int) -> float:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    start = time.perf_counter()
    for _ in range(n):
        a @ a
    return time.perf_counter() - start


def cpu_ceiling(n: int = 2000) -> float:
    """Throughput of 2 processes over 1 on a fixed one-thread torch load, without Ray: the most
    that 2 workers can gain over 1 on this machine while other processes share it."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        one = pool.map(_matmuls, [n])[0]
    with ctx.Pool(2) as pool:
        two = max(pool.map(_matmuls, [n, n]))
    return 2 * one / two


class Noop:
    """An evaluator with no work: what remains per candidate is the pool's own cost."""

    def evaluate(self, candidate_id: str, recipe: dict, known: Known | None = None) -> EvalResult:
        return EvalResult(candidate_id, "ok", {"accuracy/mean": 0.5})


def candidates(space: SearchSpace, seed: int, n: int) -> Jobs:
    """``n`` candidates of the space drawn by the random engine with ``seed``."""
    engine = ENGINES.get("random")(with_overrides(space, seed=seed), state_dir=Path(tempfile.mkdtemp()))
    jobs = []
    for _ in range(n):
        cand = engine.ask()
        engine.tell(cand.id, None)
        jobs.append((cand.id, decode(space, cand.genome)))
    return jobs


def timed_pool(make: Any, jobs: Jobs) -> dict[str, Any]:
    """Start-up (pool built, workers ready) and the time to evaluate every job, all submitted at once."""
    start = time.perf_counter()
    pool: Pool = make()
    if isinstance(pool, RayPool):
        pool.worker_info()
    startup = time.perf_counter() - start
    with pool:
        start = time.perf_counter()
        for cid, recipe in jobs:
            pool.submit(cid, recipe)
        results = list(pool.results())
        run = time.perf_counter() - start
    return {"startup_s": startup, "run_s": run, "done": len({r.id for r in results}),
            "failed": sum(r.status != "ok" for r in results), **core_share(results)}


def core_share(results: list[EvalResult]) -> dict[str, float]:
    """Summed evaluation wall time, and the share of a core the workers got during it."""
    wall = sum(r.wall_s for r in results if r.status == "ok")
    cpu = sum(r.objectives.get("cpu_s", 0.0) for r in results if r.status == "ok")
    return {"eval_wall_s": wall, "core_share": cpu / wall if wall else 0.0}


def timed_actor_pool(factory: Any, jobs: Jobs, workers: int, kill_after: int | None = None) -> dict[str, Any]:
    """The same jobs through ``ray.util.ActorPool`` over the same worker actors."""
    resources = Resources(workers=workers)
    start = time.perf_counter()
    actors = [REMOTE_WORKER.options(**actor_options(resources)).remote(factory,
                                                                         torch_threads(1)) for _ in range(workers)]
    pids = [info["pid"] for info in ray.get([a.info.remote() for a in actors])]
    startup = time.perf_counter() - start
    pool = ActorPool(actors)
    start = time.perf_counter()
    for job in jobs:
        pool.submit(lambda a, j: a.evaluate.remote(*j), job)
    done, errors = [], []
    while pool.has_next():
        try:
            done.append(pool.get_next_unordered(timeout=120))
        except Exception as exc:  # ActorPool raises without saying which candidate it was
            errors.append(type(exc).__name__)
        if kill_after is not None and len(done) == kill_after:
            os.kill(pids[0], signal.SIGKILL)
            kill_after = None
    run = time.perf_counter() - start
    for a in actors:
        ray.kill(a)
    return {"startup_s": startup, "run_s": run, "done": len({r.id for r in done}), "failed": len(errors),
            "errors": sorted(set(errors)), **core_share(done)}


def timed_recovery(space: SearchSpace, jobs: Jobs, kill_after: int) -> dict[str, Any]:
    """RayPool with 2 actors, one SIGKILLed after ``kill_after`` results: every job still comes back once."""
    pool = RayPool(lambda: CpuTimed(space), Resources(workers=2, max_retries=1))
    pids = [i["pid"] for i in pool.worker_info()]
    with pool:
        start = time.perf_counter()
        for cid, recipe in jobs:
            pool.submit(cid, recipe)
        results = []
        for r in pool.results():
            results.append(r)
            if len(results) == kill_after:
                os.kill(pids[0], signal.SIGKILL)
        run = time.perf_counter() - start
    return {"startup_s": 0.0, "run_s": run, "done": len({r.id for r in results}), "yielded": len(results),
            "failed": sum(r.status != "ok" for r in results), "replaced": pool.replaced, **core_share(results)}


def timed_tune(space: SearchSpace, jobs: Jobs, workers: int) -> dict[str, Any]:
    """Ray Tune, one trial per candidate, ``reuse_actors`` so each trial actor builds its evaluator once."""
    from ray import tune

    class EvalTrainable(tune.Trainable):
        def setup(self, config: dict, space: SearchSpace) -> None:
            torch.set_num_threads(1)
            self.evaluator = RecipeEvaluator(space)

        def reset_config(self, new_config: dict) -> bool:
            self.config = new_config
            return True

        def step(self) -> dict:
            result = safe_evaluate(self.evaluator, *self.config["job"])
            return {"ok": result.status == "ok", "done": True}

        def save_checkpoint(self, checkpoint_dir: str) -> None:  # nothing to keep: one step per trial
            return None

        def load_checkpoint(self, checkpoint: Any) -> None:
            return None

    storage = tempfile.mkdtemp(prefix="tune")
    tuner = tune.Tuner(
        tune.with_resources(tune.with_parameters(EvalTrainable, space=space), {"cpu": 1}),
        param_space={"job": tune.grid_search([list(j) for j in jobs])},
        tune_config=tune.TuneConfig(reuse_actors=True, max_concurrent_trials=workers),
        run_config=tune.RunConfig(storage_path=storage, verbose=0))
    start = time.perf_counter()
    grid = tuner.fit()
    run = time.perf_counter() - start
    shutil.rmtree(storage, ignore_errors=True)
    ok = sum(r.error is None and bool(r.metrics.get("ok")) for r in grid)
    return {"startup_s": 0.0, "run_s": run, "done": len(grid), "failed": len(grid) - ok,
            "note": "start-up included"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=24)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--no-tune", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)

    space = load_space(SPACE)
    load_start = os.getloadavg()[0]
    ceiling = [cpu_ceiling()]
    start = time.perf_counter()
    RecipeEvaluator(space)  # builds (or loads) the zoo once, outside every measurement
    zoo_s = time.perf_counter() - start
    temp_dir = tempfile.mkdtemp(prefix="ray", dir="/tmp")
    os.environ["RAY_TMPDIR"] = temp_dir
    start = time.perf_counter()
    connect(None, Resources(workers=2))  # the local Ray `evomerge search --workers 2` starts
    ray_init_s = time.perf_counter() - start

    def evaluator() -> CpuTimed:
        return CpuTimed(space)

    rows: list[dict[str, Any]] = []

    def add(mode: str, seed: int, workers: int, figures: dict[str, Any]) -> None:
        row = {"mode": mode, "seed": seed, "workers": workers, "candidates": args.candidates, **figures,
               "per_min": 60 * figures["done"] / figures["run_s"]}
        rows.append(row)
        print(f"{mode:22s} seed {seed} workers {workers}: {row['per_min']:7.1f} candidates/min "
              f"(run {row['run_s']:6.2f}s, start-up {row['startup_s']:5.2f}s, {row['done']} done, "
              f"{row['failed']} failed, core share {row.get('core_share', float('nan')):.2f})"
              f"{' ' + str(row['errors']) if row.get('errors') else ''}", flush=True)

    try:
        noop_jobs = [(f"n{i}", {}) for i in range(300)]
        add("ray_pool_noop", 0, 2, timed_pool(lambda: RayPool(Noop, Resources(workers=2)), noop_jobs))
        add("actor_pool_noop", 0, 2, timed_actor_pool(Noop, noop_jobs, 2))
        for i, seed in enumerate(args.seeds):
            jobs = candidates(space, seed, args.candidates)
            runs = [("in_process", 1, lambda: timed_pool(lambda: InProcessPool(evaluator), jobs)),
                    ("ray_pool", 1, lambda: timed_pool(lambda: RayPool(evaluator, Resources(workers=1)), jobs)),
                    ("ray_pool", 2, lambda: timed_pool(lambda: RayPool(evaluator, Resources(workers=2)), jobs)),
                    ("actor_pool", 2, lambda: timed_actor_pool(evaluator, jobs, 2))]
            for mode, workers, run in runs[:: -1 if i % 2 else 1]:  # alternate the order against load drift
                add(mode, seed, workers, run())
        jobs = candidates(space, args.seeds[0], args.candidates)
        add("ray_pool_killed_worker", args.seeds[0], 2, timed_recovery(space, jobs, kill_after=4))
        add("actor_pool_killed_worker", args.seeds[0], 2, timed_actor_pool(evaluator, jobs, 2, kill_after=4))
        if not args.no_tune:
            try:
                add("tune_reuse_actors", args.seeds[0], 2, timed_tune(space, jobs, 2))
            except ImportError as exc:  # ray.tune needs the ray[tune] extras (pandas, pyarrow)
                print(f"tune_reuse_actors: not measured ({exc})")
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    ceiling.append(cpu_ceiling())

    def per_min(mode: str, workers: int, seed: int) -> float:
        return next(r["per_min"] for r in rows if (r["mode"], r["workers"], r["seed"]) == (mode, workers, seed))

    def mean(values: list[float]) -> float:
        return statistics.fmean(values)

    seeds = args.seeds
    speedup = [per_min("ray_pool", 2, s) / per_min("ray_pool", 1, s) for s in seeds]
    overhead = [1 - per_min("ray_pool", 1, s) / per_min("in_process", 1, s) for s in seeds]
    overhead_ms = [1000 * (next(r["run_s"] for r in rows if (r["mode"], r["workers"], r["seed"]) == ("ray_pool", 1, s))
                           - next(r["run_s"] for r in rows if (r["mode"], r["seed"]) == ("in_process", s)))
                   / args.candidates for s in seeds]
    def cpu_s(mode: str, workers: int) -> float:
        return sum(r["eval_wall_s"] * r["core_share"] for r in rows if (r["mode"], r["workers"]) == (mode, workers))

    summary = {
        "speedup_2_vs_1": mean(speedup),
        "speedup_2_vs_1_min": min(speedup),
        "cpu_ceiling_2_vs_1": ceiling,  # same ratio for plain processes, before and after the runs
        "speedup_vs_cpu_ceiling": mean(speedup) / mean(ceiling),
        # CPU seconds spent evaluating the same candidates: above 1 is work the second actor adds
        # (its own cold activation cache); the rest of a shortfall is CPU other processes hold
        "cpu_work_2_vs_1": cpu_s("ray_pool", 2) / cpu_s("ray_pool", 1),
        "ray_overhead": mean(overhead),
        "ray_overhead_ms_per_candidate": mean(overhead_ms),
        "actor_pool_vs_ray_pool_2": mean([per_min("actor_pool", 2, s) / per_min("ray_pool", 2, s) for s in seeds]),
        "dispatch_ms_per_candidate": {m: 1000 * next(r["run_s"] for r in rows if r["mode"] == f"{m}_noop") / 300
                                      for m in ("ray_pool", "actor_pool")},
        "ray_init_s": ray_init_s,
        "worker_startup_s": mean([r["startup_s"] for r in rows if r["mode"] == "ray_pool"]),
        "in_process_startup_s": mean([r["startup_s"] for r in rows if r["mode"] == "in_process"]),
        "zoo_load_s": zoo_s,
        "cpus": os.cpu_count(),
        "load_avg_1min": [load_start, os.getloadavg()[0]],  # other processes on the machine, start and end
        "targets": {"speedup_2_vs_1 >= 1.6": mean(speedup) >= 1.6, "ray_overhead <= 0.15": mean(overhead) <= 0.15},
    }
    print(json.dumps(summary, indent=2))
    command = "python benchmarks/ray_scaling.py " + " ".join(sys.argv[1:])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "ray_scaling", "command": command.strip(), "rows": rows,
                               "summary": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
