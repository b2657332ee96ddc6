"""Search engines against hand-set recipes on the two shipped spaces (issue 5, item 8).

For each space (``search_spaces/cross_arch.yaml``, ``search_spaces/multitask.yaml``) and each engine
(DEAP GA, Optuna TPE, Optuna CMA-ES, random search) and seed, one search of ``--budget`` evaluations
runs through the project's own runner (``run_search``, in-process pool, full validation split).
Every engine optimizes validation accuracy alone: cross_arch's second objective (added
parameters) is dropped, because the GA and CMA-ES are single-objective and one scalar makes the
engines comparable. From each run's ``evaluations.jsonl`` the curve is read at a quarter, half and
all of the budget: the best-so-far validation accuracy and the full-test accuracy of that
candidate (the runner's own test re-evaluation at the end; the same evaluator at the earlier
points).

Beside the searches, hand-set recipes, chosen on validation and scored on test by the same
evaluator: cross_arch, every aligner (ridge, lowrank, cca, procrustes; library defaults, zero-shot,
no conditioning) at the four depth-matched stitch points (i-th CNN layer to i-th transformer
layer), with equal routing (mixture, trunk weight 1), and the validation-best of those with the
learned router instead (kept apart: ``hand_learned_routing``); multitask, task arithmetic (lambda 0.3), TIES
(density 0.2, lambda 1.0; Yadav et al.'s defaults) and TSV-M (alpha 1.0, the paper's 1/T rank share).
Reference lines, computed from the zoo models directly: cross_arch, each source alone and the
ensemble of both (mean of their class probabilities); multitask, each fine-tune on its own task
(the ceiling) and the pretrained trunk with the tasks' heads (task arithmetic at lambda 0).

Summary per space: ``winner_full_accuracy`` is the space's own engine's winner (the one
``evomerge search`` runs by default) at the full budget, mean over seeds; ``engine_accuracy`` maps
each engine to its winners' mean full-test accuracy; ``random_search_accuracy`` is random search's.

Run: ``OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/search.py``
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from evomerge.commands.search import known_models, recipe_evaluation  # noqa: E402
from evomerge.data import load_task  # noqa: E402
from evomerge.distributed.pool import InProcessPool  # noqa: E402
from evomerge.evaluate import accuracy  # noqa: E402
from evomerge.fitness.zoo_evaluator import RecipeEvaluator  # noqa: E402
from evomerge.search.pareto import best_index  # noqa: E402
from evomerge.search.run_folder import RunFolder, evaluated  # noqa: E402
from evomerge.search.runner import recipe_key, run_search  # noqa: E402
from evomerge.search.space import SearchSpace, decode, load_space, with_overrides  # noqa: E402
from evomerge.zoo.catalog import Zoo  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "search.json"
COMMAND = "OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/search.py"
SPACES = ["cross_arch", "multitask"]
ENGINES = ["deap_ga", "optuna_tpe", "optuna_cmaes", "random"]
ACCURACY_ONLY = [{"name": "accuracy", "metric": "accuracy", "task": "mean", "direction": "max"}]

#: cross_arch hand-set grid: the i-th of the CNN's four layers to the i-th of the transformer's.
STITCH_POINTS = [("conv1", "embed"), ("conv2", "block1"), ("conv3", "block2"), ("fc", "pool")]
ALIGNERS = ["ridge", "lowrank", "cca", "procrustes"]
#: multitask hand-set recipes: genome values (TSV's rank is replaced by the method's default).
MERGES: dict[str, dict[str, Any]] = {
    "task_arithmetic lam=0.3": {"method": "task_arithmetic", "lam": 0.3},
    "ties density=0.2 lam=1.0": {"method": "ties", "density": 0.2, "lam": 1.0},
    "tsv-m alpha=1.0 rank=1/T": {"method": "tsv", "alpha": 1.0, "rank": 1, "mass": False},
}

Row = dict[str, Any]


class Scorer:
    """One space's evaluators, each built once: validation (shared by every search, so activations
    are cached across runs) and test (through the search command's re-evaluation, memoized by recipe)."""

    def __init__(self, space: SearchSpace):
        factory, self._final_eval, self.item_ids = recipe_evaluation(space)
        self.val: RecipeEvaluator = factory()
        self._test: dict[str, dict] = {}

    def test(self, recipe: dict) -> dict:
        key = recipe_key(recipe)
        if key not in self._test:
            self._test[key] = self._final_eval(recipe)
        return self._test[key]

    def scores(self, recipe: dict) -> tuple[dict, dict]:
        """Validation and test metrics of one recipe."""
        return self.val.evaluate("hand", recipe).objectives, self.test(recipe)


def search_row(space: SearchSpace, scorer: Scorer, engine: str, seed: int, budget: int, run_dir: Path) -> Row:
    """One search; its best-so-far curve at a quarter, half and all of the budget."""
    sp = with_overrides(space, **{"engine.name": engine, "seed": seed, "budget.evaluations": budget})
    with InProcessPool(lambda: scorer.val) as pool:
        summary = run_search(sp, pool, run_dir, final_eval=scorer.test, item_ids=scorer.item_ids, progress=False)
    records = evaluated(RunFolder(run_dir).read_evaluations())
    curve = []
    for n in (budget // 4, budget // 2, budget):
        ok = [r for r in records[:n] if r["status"] == "ok"]
        i = best_index([[r["objectives"]["accuracy"]] for r in ok], ["max"])
        best = ok[i] if i is not None else None
        curve.append({"evaluations": n, "id": best and best["id"],
                      "val_accuracy": best and best["objectives"]["accuracy"],
                      "test_accuracy": best and scorer.test(best["recipe"])["accuracy/mean"]})
    final = summary["best"]
    assert final is None or (final["id"] == curve[-1]["id"] and final["full_test_accuracy"] == curve[-1]["test_accuracy"])
    return {"space": space.name, "kind": "search", "engine": engine, "seed": seed, "evaluations": summary["evaluations"],
            "repeats": summary["repeats"], "failed": summary["failed"], "wall_s": round(summary["wall_s"], 1), "curve": curve,
            "winner_genome": final and final["genome"]}


def hand_row(space: SearchSpace, scorer: Scorer, name: str, recipe: dict) -> Row:
    val, test = scorer.scores(recipe)
    return {"space": space.name, "kind": "hand", "name": name, "recipe": recipe, "val_accuracy": val["accuracy/mean"],
            "test_accuracy": test["accuracy/mean"], "added_params": int(test["added_params"])}


def cross_arch_hand(space: SearchSpace, scorer: Scorer) -> list[Row]:
    """Each aligner at its best depth-matched stitch point (on validation), equal routing."""
    rows = []
    for aligner in ALIGNERS:
        grid = []
        for source, target in STITCH_POINTS:
            recipe = decode(space, {"source_layer": source, "target_layer": target, "aligner": aligner,
                                    "ridge_alpha": 1.0, "lowrank_rank": 2, "cca_k": 4, "center": "condition",
                                    "conditioning": "none", "tune_epochs": 0, "trunk_weight": 1.0, "routing": "mixture"})
            recipe["branches"][0]["aligner"]["params"] = {}  # the aligner's own defaults, not the gene values
            grid.append((scorer.val.evaluate("grid", recipe).objectives["accuracy/mean"], source, target, recipe))
        _, source, target, recipe = max(grid, key=lambda g: g[0])
        rows.append(hand_row(space, scorer, f"{aligner} {source}->{target} mixture w=1", recipe))
    best = max(rows, key=lambda r: r["val_accuracy"])
    learned = {**best["recipe"], "routing": "learned"}  # the same stitch with the learned router
    return rows + [{**hand_row(space, scorer, best["name"].replace("mixture", "learned routing"), learned),
                    "kind": "hand_learned_routing"}]


def multitask_hand(space: SearchSpace, scorer: Scorer) -> list[Row]:
    rows = []
    for name, genome in MERGES.items():
        recipe = decode(space, genome)
        if genome["method"] == "tsv":
            recipe["params"]["rank"] = None  # null: the method's default rank (1/T of each layer's rank)
        rows.append(hand_row(space, scorer, name, recipe))
    return rows


def references(space: SearchSpace, scorer: Scorer) -> list[Row]:
    """Reference lines from the zoo models themselves (and, for multitask, the bare pretrained trunk)."""
    zoo, seed = Zoo(seed=space.zoo.seed), space.zoo.seed

    def row(name: str, score: Callable[[str], float]) -> Row:
        return {"space": space.name, "kind": "reference", "name": name,
                "val_accuracy": score("val"), "test_accuracy": score("test")}

    if space.recipe["kind"] == "stitch":
        (task,) = space.tasks
        modules = {m: zoo.adapter(m).module.eval() for m in space.models}

        def ensemble(x: torch.Tensor) -> torch.Tensor:
            return torch.stack([m(x).softmax(-1) for m in modules.values()]).mean(0).log()

        out = [row(f"source {m} alone", lambda s, m=m: accuracy(modules[m], load_task(task.dataset, task.condition, s, seed)))
               for m in space.models]
        return out + [row("ensemble of both sources", lambda s: accuracy(ensemble, load_task(task.dataset, task.condition, s, seed)))]
    own = {zoo.spec(m).condition: zoo.adapter(m).module.eval() for m in space.recipe["models"]}

    def finetuned(split: str) -> float:
        return statistics.fmean([accuracy(own[t.condition], load_task(t.dataset, t.condition, split, seed)) for t in space.tasks],
                                [t.weight for t in space.tasks])

    base = decode(space, {"method": "task_arithmetic", "lam": 0.05})
    base["params"]["lam"] = 0.0  # the pretrained trunk unchanged, each task with its fine-tune's head
    val, test = scorer.scores(base)
    return [row("fine-tunes, each on its own task", finetuned),
            {"space": space.name, "kind": "reference", "name": "pretrained trunk + task heads (lam=0)",
             "val_accuracy": val["accuracy/mean"], "test_accuracy": test["accuracy/mean"]}]


def mean(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.fmean(xs) if xs else None


def summarize(space: SearchSpace, rows: list[Row], budget: int) -> dict[str, Any]:
    search = [r for r in rows if r["kind"] == "search"]
    final = {e: [r["curve"][-1] for r in search if r["engine"] == e] for e in ENGINES}
    engine_accuracy = {e: mean([c["test_accuracy"] for c in cs]) for e, cs in final.items()}
    hand = max((r for r in rows if r["kind"] == "hand"), key=lambda r: r["val_accuracy"])
    learned = [r["test_accuracy"] for r in rows if r["kind"] == "hand_learned_routing"]
    default = space.engine.name
    winner = engine_accuracy[default]
    extra = {"hand_learned_routing_accuracy": learned[0],
             "winner_beats_hand_learned_routing": winner is not None and winner > learned[0]} if learned else {}
    return {
        "objective": "validation accuracy only (single objective for every engine)",
        "budget": budget,
        "seeds": sorted({r["seed"] for r in search}),
        "winner_engine": default,
        "winner_full_accuracy": winner,
        "winner_full_accuracy_per_seed": [c["test_accuracy"] for c in final[default]],
        "best_hand_recipe": hand["name"],
        "best_hand_recipe_accuracy": hand["test_accuracy"],
        "winner_beats_hand": winner is not None and winner > hand["test_accuracy"],
        **extra,
        "random_search_accuracy": engine_accuracy["random"],
        "engine_accuracy": engine_accuracy,
        "engine_val_accuracy": {e: mean([c["val_accuracy"] for c in cs]) for e, cs in final.items()},
        "engines_beating_random": [e for e in ENGINES if e != "random" and (engine_accuracy[e] or 0) > (engine_accuracy["random"] or 0)],
        "reference_test_accuracy": {r["name"]: r["test_accuracy"] for r in rows if r["kind"] == "reference"},
    }


def fmt(xs: list[float | None]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "-"
    return f"{statistics.fmean(xs):.4f}±{statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"


def print_space(space: SearchSpace, rows: list[Row], budget: int) -> None:
    search = [r for r in rows if r["kind"] == "search"]
    points = [c["evaluations"] for c in search[0]["curve"]]
    print(f"\n== {space.name}: best-so-far validation accuracy / its full-test accuracy, mean±sd over seeds "
          f"(objective: validation accuracy only) ==")
    head = "".join(f" | {f'val@{n}':<15} {f'test@{n}':<15}" for n in points)
    print(f"{'engine':<13}{head} | failed | wall s | test@{budget} per seed")
    for e in ENGINES:
        runs = [r for r in search if r["engine"] == e]
        cells = "".join(f" | {fmt([r['curve'][k]['val_accuracy'] for r in runs]):<15} {fmt([r['curve'][k]['test_accuracy'] for r in runs]):<15}"
                        for k in range(len(points)))
        per_seed = " ".join(f"{r['curve'][-1]['test_accuracy']:.4f}" for r in runs)
        print(f"{e:<13}{cells} | {sum(r['failed'] for r in runs):>6} | {sum(r['wall_s'] for r in runs):>6.0f} | {per_seed}")
    print(f"\n{'hand-set recipe / reference':<48} | val     | test    | added params")
    for r in rows:
        if r["kind"] != "search":
            label = ("ref:  " if r["kind"] == "reference" else "hand: ") + r["name"]
            print(f"{label:<48} | {r['val_accuracy']:.4f}  | {r['test_accuracy']:.4f}  | {r.get('added_params', '')}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=60, help="evaluations per search")
    p.add_argument("--seeds", type=int, default=3, help="seeds per engine (0..N-1)")
    p.add_argument("--spaces", nargs="+", default=SPACES, choices=SPACES)
    args = p.parse_args()
    command = COMMAND + "".join(f" --{k} {v}" for k, v, d in (("budget", args.budget, 60), ("seeds", args.seeds, 3)) if v != d)
    if args.spaces != SPACES:
        command += " --spaces " + " ".join(args.spaces)
    start = time.perf_counter()
    rows: list[Row] = []
    summary: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="evomerge-search-bench-") as tmp:
        for name in args.spaces:
            space = with_overrides(load_space(ROOT / "search_spaces" / f"{name}.yaml", known_models()), objectives=ACCURACY_ONLY)
            scorer = Scorer(space)
            space_rows = references(space, scorer)
            space_rows += cross_arch_hand(space, scorer) if space.recipe["kind"] == "stitch" else multitask_hand(space, scorer)
            for engine in ENGINES:
                for seed in range(args.seeds):
                    space_rows.append(search_row(space, scorer, engine, seed, args.budget, Path(tmp) / f"{name}-{engine}-{seed}"))
                    print(f"[{time.perf_counter() - start:6.0f}s] {name} {engine} seed {seed}: test "
                          f"{space_rows[-1]['curve'][-1]['test_accuracy']}", flush=True)
            print_space(space, space_rows, args.budget)
            summary[name] = summarize(space, space_rows, args.budget)
            rows += space_rows
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "search", "command": command, "rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"\nsummary: {json.dumps(summary, indent=1)}\nwrote {OUT.relative_to(ROOT)} in {summary['wall_s']:.0f}s")


if __name__ == "__main__":
    main()
