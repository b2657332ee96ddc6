"""``evomerge search --space FILE``: search a space for merge recipes into a run folder."""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evomerge.errors import ConfigError, UserError

if TYPE_CHECKING:
    from evomerge.distributed.pool import Evaluator, Pool
    from evomerge.search.runner import FinalEval
    from evomerge.search.space import SearchSpace

#: The engine registry's names, listed here so that parsing does not import the engines (optuna,
#: deap); a test checks them against ``ENGINES``.
ENGINE_NAMES = ("deap_ga", "deap_nsga2", "optuna_cmaes", "optuna_nsga2", "optuna_tpe", "random")
#: Short engine names accepted by ``--engine`` beside the registry's.
ALIASES = {"deap": ("deap_ga", "deap_nsga2"), "optuna": ("optuna_tpe", "optuna_tpe")}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search a space for merge recipes (writes a run folder)")
    p.add_argument("--space", help="search space YAML (optional with --resume: the run keeps a copy, "
                   "which a --space given must match)")
    p.add_argument("--engine", choices=sorted([*ENGINE_NAMES, *ALIASES]),
                   help="override the space's engine (deap: GA or NSGA-II by objective count; optuna: TPE)")
    p.add_argument("--budget", type=int, help="override budget.evaluations (may extend a resumed run)")
    p.add_argument("--workers", type=int, help="override resources.workers")
    p.add_argument("--gpus-per-worker", type=float, help="override resources.gpus_per_worker (Ray assigns each worker its GPUs)")
    p.add_argument("--ray-address", help="evaluate on the Ray cluster at this address (default: $RAY_ADDRESS if set, "
                   "else a local Ray when --workers > 1)")
    p.add_argument("--seed", type=int, help="override the space's seed")
    p.add_argument("--run-dir", help="run folder (default runs/<space name>-<date>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--no-progress", action="store_true", help="no progress display")
    p.set_defaults(func=run)


def known_models() -> set[str]:
    from evomerge.zoo.catalog import Zoo

    return set(Zoo().ids())


def engine_name(choice: str, space: SearchSpace) -> str:
    if choice in ALIASES:
        single, multi = ALIASES[choice]
        return multi if len(space.objectives) > 1 else single
    return choice


def resolve_space(args: argparse.Namespace) -> tuple[SearchSpace, Path]:
    """The space with CLI overrides applied, and the run folder to use."""
    from evomerge.search.run_folder import RunFolder
    from evomerge.search.space import dump_space, load_space, with_overrides

    if args.resume:
        if not args.run_dir:
            raise UserError("--resume needs --run-dir (the run folder to continue)")
        run_dir = Path(args.run_dir)
        folder, models = RunFolder(run_dir), known_models()
        folder.require_resumable()
        space = folder.load_space(models)
        if args.space:
            folder.check_same_space(dump_space(load_space(args.space, models)), args.space)
        if args.engine or args.seed is not None:
            raise UserError("--engine and --seed cannot change on --resume (the run keeps its own)")
    else:
        if not args.space:
            raise UserError("--space is required (or --resume with --run-dir)")
        space = load_space(args.space, known_models())
        run_dir = Path(args.run_dir or f"runs/{space.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    changes: dict[str, Any] = {}
    flags = {"budget.evaluations": "--budget", "resources.workers": "--workers",
             "resources.gpus_per_worker": "--gpus-per-worker", "seed": "--seed"}
    if args.engine and engine_name(args.engine, space) != space.engine.name:
        changes["engine.name"] = engine_name(args.engine, space)
        changes["engine.settings"] = {}  # the space's settings belong to its own engine
    for field, flag in flags.items():
        if getattr(args, flag[2:].replace("-", "_")) is not None:
            changes[field] = getattr(args, flag[2:].replace("-", "_"))
    try:
        return (with_overrides(space, **changes) if changes else space), run_dir
    except ConfigError as err:
        if err.field in flags and err.field in changes:
            raise UserError(f"{flags[err.field]} {changes[err.field]}: expected {err.expected} "
                            f"(it overrides {err.field} of {space.source})") from None
        raise


def recipe_evaluation(space: SearchSpace) -> tuple[Callable[..., Evaluator], FinalEval, dict[tuple[str, str], Sequence[str]]]:
    """Evaluator factory (validation split), test-split re-evaluation, and the item ids per task split.

    The recipe template is checked first (whatever its ``kind``), so a mistake spends no budget."""
    from evomerge.fitness.evaluator import make_evaluator  # the worker side
    from evomerge.search.space import check_searchable

    check_searchable(space)
    test_evaluator: list[Evaluator] = []

    def final_eval(recipe: dict) -> dict:
        if not test_evaluator:
            test_evaluator.append(make_evaluator(space, split="test", estimator="full"))
        result = test_evaluator[0].evaluate("final", recipe)
        if result.status != "ok":
            raise RuntimeError(result.error)
        return result.objectives

    def factory(device: str = "cpu") -> Evaluator:  # a Ray worker passes the device it was assigned
        return make_evaluator(space, split="val", device=device)

    return factory, final_eval, item_ids(space, "val")


def item_ids(space: SearchSpace, split: str) -> dict[tuple[str, str], Sequence[str]]:
    """Each task split's ordered item ids (what response indices point into), keyed by
    ``dataset/condition`` for a built-in task and by the task's name for an item file."""
    from evomerge.data import load_task
    from evomerge.search.space import ItemTaskSpec

    out: dict[tuple[str, str], Sequence[str]] = {}
    for t in space.tasks:
        if isinstance(t, ItemTaskSpec):
            out[(t.name, split)] = t.item_set.split(split).ids
        else:
            out[(f"{t.dataset}/{t.condition}", split)] = load_task(t.dataset, t.condition, split, seed=space.zoo.seed).item_ids
    return out


def make_pool(space: SearchSpace, factory: Callable[..., Evaluator], ray_address: str | None = None) -> Pool:
    from evomerge.distributed.pool import InProcessPool

    if space.resources.workers == 1 and ray_address is None and space.resources.gpus_per_worker == 0:
        return InProcessPool(factory, timeout_s=space.resources.timeout_s)
    try:
        from evomerge.distributed.ray_pool import RayPool
    except ImportError:
        raise UserError(f"resources.workers = {space.resources.workers} needs the Ray pool "
                        "(evomerge.distributed.ray_pool), which is not available; use --workers 1") from None
    return RayPool(factory, space.resources, address=ray_address)


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.search.runner import describe, run_search

    space, run_dir = resolve_space(args)
    factory, final_eval, item_ids = recipe_evaluation(space)
    log(f"{'resuming' if args.resume else 'starting'} {space.name}: engine {space.engine.name}, seed {space.seed}, "
        f"budget {space.budget.evaluations}, run folder {run_dir}")
    try:
        with make_pool(space, factory, args.ray_address or os.environ.get("RAY_ADDRESS")) as pool:
            summary = run_search(space, pool, run_dir, resume=args.resume, final_eval=final_eval,
                                 item_ids=item_ids, progress=not args.no_progress)
    except KeyboardInterrupt:
        log(f"interrupted; finished evaluations are in {run_dir}. Continue with: "
            f"evomerge search --resume --run-dir {run_dir}")
        return 130
    best = summary["best"]
    if best is None:
        log(f"no candidate succeeded ({summary['failed']} failed); see {run_dir}/evaluations.jsonl")
        return 1
    log(f"done: {summary['evaluations']} evaluations ({summary['failed']} failed, {summary['repeats']} repeats not "
        f"evaluated again) in {summary['wall_s']:.1f} s; "
        f"best {best['id']}: {describe(space, best)}; {len(summary['pareto'])} on the Pareto front; "
        f"run folder {run_dir}")
    return 0
