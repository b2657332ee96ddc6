"""IRT fitness fidelity on the default space (mnist1d/all, 5,000 validation items) and search with it.

1. Pools, every candidate evaluated on the full validation split: *diverse* = the random-engine run
   ``runs/calib_random`` (made by the command in docs/irt.md if missing), *close* = the last
   ``CLOSE`` candidates of a full-fitness TPE search (step 3's).
2. Three banks are calibrated on ``N_TRAIN`` diverse candidates: the unidimensional 2PL (``mml``),
   the multidimensional one by grid EM (``mirt``, D = 2 or 3) and by joint MAP (``jml``, D = 4, 8
   or 12), D by held-out likelihood; on the other diverse ones
   and on the close pool, for each bank × estimator × anchor selection × K (seeds 0-2 for the
   seeded selections), the estimate is compared with the full validation accuracy: MAE in points,
   Spearman and Kendall (scipy), top-1 agreement on the close pool, cost reduction = 5,000 ÷ items.
   Adaptive (p-IRT, threshold = the running best true accuracy in search order, as the search's
   verified incumbent) against fixed random anchors of the same average cost, on the close pool.
3. The default space searched with TPE (seeds ``SEARCH_SEEDS``, ``BUDGET`` candidates each) with full
   fitness (reused when its run folder is complete: the search is deterministic given the space and
   seed) and with IRT fitness from the shipped bank (``IRT_FITNESS`` variants): the winner's
   full-test accuracy and the item evaluations, per seed and averaged (one seed's winner moves by
   about a point with the seed alone). Two searches run at a time, in spawned processes.

    OMP_NUM_THREADS=1 python benchmarks/irt_fidelity.py
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.stats import kendalltau, spearmanr

from evomerge.commands.search import known_models, recipe_evaluation
from evomerge.distributed.pool import InProcessPool
from evomerge.evaluate import responses
from evomerge.fitness.adaptive import adaptive_evaluate
from evomerge.fitness.anchors import ANCHORS
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.estimators import ESTIMATORS, recipe_prior
from evomerge.fitness.irt.ability import estimate_ability
from evomerge.fitness.responses import read_responses
from evomerge.recipe.schema import parse_recipe
from evomerge.search.runner import run_search
from evomerge.search.space import SearchSpace, load_space, with_overrides
from evomerge.zoo.catalog import Zoo

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "cross_arch.yaml"
TASK = "mnist1d/all"
DIVERSE = ROOT / "runs" / "calib_random"
CALIB_TPE = ROOT / "runs" / "calib_tpe"
CALIBRATION_BUDGET = 300  # candidates in each of the shipped bank's source runs
N_TRAIN = 200
CLOSE = 80
BUDGET = 200
KS = (25, 50, 100, 200)
SEEDS = (0, 1, 2)
BANK = str(ROOT / "item_banks" / "mnist1d_all.json")
BACKENDS = ("mml", "mirt", "jml")  # the banks compared: 2PL; D-dim 2PL by grid EM and by joint MAP
SEARCH_SEEDS = (0, 1, 2)
IRT_FITNESS = {  # search variants: adaptive p-IRT, and a fixed setting of the fidelity table
    "pirt_adaptive": {"estimator": "pirt", "bank": BANK, "items": 100, "anchors": "random", "adaptive": True,
                      "batch": 10, "max_items": 400, "recalibrate_every": 50},
    "greg_k100": {"estimator": "greg", "bank": BANK, "items": 100, "anchors": "random", "recalibrate_every": 50},
}
ADAPTIVE = ((25, 100), (50, 200), (50, 400), (100, 400))  # (anchors, max_items)


def search(space: SearchSpace, run_dir: Path, reuse: bool = False) -> dict[str, Any]:
    """Run a search in-process from scratch (what ``evomerge search`` does), or reuse a complete one."""
    torch.set_num_threads(1)
    summary = run_dir / "summary.json"
    if reuse and summary.exists() and json.loads(summary.read_text())["complete"]:
        return json.loads(summary.read_text())
    shutil.rmtree(run_dir, ignore_errors=True)
    factory, final_eval, item_ids = recipe_evaluation(space)
    with InProcessPool(factory) as pool:
        return run_search(space, pool, run_dir, final_eval=final_eval, item_ids=item_ids, progress=False)


def ensure_calibration_runs(space: SearchSpace) -> None:
    """The shipped bank's source runs (docs/irt.md's commands), made if missing: the diverse pool, and
    the runs the bank's recalibration reads (checked against the bank's SHA-256; the searches are
    deterministic, so remade runs match)."""
    random = {"engine.name": "random", "engine.settings": {}}  # as `evomerge search --engine random`
    for engine, run in ((random, DIVERSE), ({}, CALIB_TPE)):  # the space's own engine is TPE
        search(with_overrides(space, **engine, seed=1, **{"budget.evaluations": CALIBRATION_BUDGET}), run, reuse=True)


def recipes(run: Path) -> dict[str, dict]:
    return {f"{run.name}/{r['id']}": r["recipe"] for r in map(json.loads, (run / "evaluations.jsonl").open())}


def source_answers(space: SearchSpace) -> dict[str, np.ndarray]:
    """Each source model's full validation answers (for mpirt's recipe prior)."""
    from evomerge.data import load_task

    zoo, task = Zoo(seed=space.zoo.seed), load_task("mnist1d", "all", "val", space.zoo.seed)
    return {m: responses(zoo.adapter(m).forward, task).numpy().astype(float) for m in space.models}


def rank_metrics(est: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    return {"mae_points": float(100 * np.abs(est - truth).mean()), "spearman": float(spearmanr(est, truth)[0]),
            "kendall": float(kendalltau(est, truth)[0]), "top1": float(np.argmax(est) == np.argmax(truth))}


def fidelity(space: SearchSpace, close_run: Path) -> tuple[list[dict], list[dict], dict[str, dict]]:
    diverse = read_responses([DIVERSE], TASK)
    close = read_responses([close_run], TASK)
    y_close = close.values[-CLOSE:]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(diverse.values))
    y_train, y_held = diverse.values[order[:N_TRAIN]], diverse.values[order[N_TRAIN:]]
    held_names = [diverse.candidates[i] for i in order[N_TRAIN:]]
    pools = {"diverse": (y_held, held_names), "close": (y_close, close.candidates[-CLOSE:])}
    all_recipes = recipes(DIVERSE) | recipes(close_run)
    answers = source_answers(space)
    rows, adaptive_rows, calibrations = [], [], {}
    for backend in BACKENDS:
        start = time.perf_counter()
        cal = calibrate(y_train, backend=backend, holdout=0.2, seed=0)
        d = cal.diagnostics
        print(f"{backend}: calibrated on {N_TRAIN} diverse candidates in {time.perf_counter() - start:.1f}s: D = {d['dim']}, "
              f"held-out log-lik {d['heldout_loglik']:.3f} (item means {d['heldout_loglik_item_means']:.3f}), "
              f"AUC {d['heldout_auc']:.3f}, accuracy MAE {d['heldout_mae']:.4f}", flush=True)
        calibrations[backend] = d
        thetas = {m: estimate_ability(cal.fit.params, a)[0] for m, a in answers.items()}
        priors = {name: recipe_prior(*zip(*[(thetas[m], c) for m, c in parse_recipe(all_recipes[name]).mixing(TASK).items()]))
                  for y, names in pools.values() for name in names}
        bank_rows, bank_adaptive = bank_fidelity(cal, pools, priors, y_close)
        rows += [{"bank": backend, **r} for r in bank_rows]
        adaptive_rows += [{"bank": backend, **r} for r in bank_adaptive]
    return rows, adaptive_rows, calibrations


def bank_fidelity(cal: Any, pools: dict[str, tuple[np.ndarray, list[str]]], priors: dict[str, Any],
                  y_close: np.ndarray) -> tuple[list[dict], list[dict]]:
    """The fidelity rows and the adaptive-vs-fixed rows of one calibrated bank."""
    params, mae = cal.fit.params, cal.diagnostics["heldout_mae"]
    pop_theta = cal.fit.theta.mean(axis=0)
    rows = []
    for selector in ANCHORS.names():
        for k in KS:
            seeds = (0,) if selector == "fisher" else SEEDS
            anchor_sets = [ANCHORS.get(selector)(params, k, seed=s, theta=pop_theta) for s in seeds]
            for estimator in ESTIMATORS.names():
                row: dict[str, Any] = {"estimator": estimator, "anchors": selector, "k": k,
                                       "cost_reduction": len(params) / np.mean([len(a.items) for a in anchor_sets])}
                for pool, (y, names) in pools.items():
                    per_seed = []
                    for a in anchor_sets:
                        est = np.array([ESTIMATORS.get(estimator)(params, a.items, row_y[a.items], weights=a.weights,
                                                                  prior=priors[n] if estimator == "mpirt" else None,
                                                                  pirt_mae=mae).value
                                        for row_y, n in zip(y, names)])
                        per_seed.append(rank_metrics(est, y.mean(axis=1)))
                    for key in ("mae_points", "spearman", "kendall", "top1"):
                        row[f"{pool}_{key}"] = float(np.mean([m[key] for m in per_seed]))
                rows.append(row)
    adaptive_rows = []
    truth = y_close.mean(axis=1)
    incumbents = np.maximum.accumulate(np.concatenate([[truth[0]], truth[:-1]]))
    for k0, cap in ADAPTIVE:
        for seed in SEEDS:
            anchors = ANCHORS.get("random")(params, k0, seed=seed)
            runs = [adaptive_evaluate(lambda idx, row=row: row[idx], params, anchors.items, inc, estimator="pirt",
                                      batch=10, max_items=cap) for row, inc in zip(y_close, incumbents)]
            used = float(np.mean([len(r.items) for r in runs]))
            fixed = ANCHORS.get("random")(params, int(round(used)), seed=seed)
            est_fixed = np.array([ESTIMATORS.get("pirt")(params, fixed.items, row[fixed.items]).value for row in y_close])
            a, f = rank_metrics(np.array([r.estimate.value for r in runs]), truth), rank_metrics(est_fixed, truth)
            adaptive_rows.append({"anchors": k0, "max_items": cap, "seed": seed, "mean_items": used,
                                  **{f"adaptive_{m}": a[m] for m in ("spearman", "kendall", "top1", "mae_points")},
                                  **{f"fixed_{m}": f[m] for m in ("spearman", "kendall", "top1", "mae_points")}})
    return rows, adaptive_rows


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    space = load_space(SPACE, known_models())
    ensure_calibration_runs(space)
    runs = ROOT / "runs"
    jobs = {}  # (fitness, seed) -> (space, run folder, reuse)
    for seed in SEARCH_SEEDS:
        tpe = with_overrides(space, **{"engine.name": "optuna_tpe", "seed": seed, "budget.evaluations": BUDGET})
        suffix = "" if seed == 0 else f"_s{seed}"
        jobs["full", seed] = (tpe, runs / f"irt_bench_full{suffix}", True)
        for name, f in IRT_FITNESS.items():
            jobs[name, seed] = (with_overrides(tpe, fitness=f), runs / f"irt_bench_{name}{suffix}", False)
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = dict(zip(jobs, pool.map(search, *zip(*jobs.values()))))
    rows, adaptive_rows, calibrations = fidelity(space, runs / "irt_bench_full")

    print(f"\nFidelity (estimate vs full validation accuracy); diverse: {CALIBRATION_BUDGET - N_TRAIN} held-out random "
          f"candidates, close: the last {CLOSE} of a TPE search; seeded selections averaged over seeds {SEEDS}")
    print(f"{'bank':4} {'estimator':9} {'anchors':10} {'K':>4} {'x fewer':>7} | {'MAE pt':>6} {'Spear':>6} {'Kendall':>7} | "
          f"{'close Sp':>8} {'Kendall':>7} {'top-1':>5}")
    for r in rows:
        print(f"{r['bank']:4} {r['estimator']:9} {r['anchors']:10} {r['k']:4d} {r['cost_reduction']:7.1f} | {r['diverse_mae_points']:6.2f} "
              f"{r['diverse_spearman']:6.3f} {r['diverse_kendall']:7.3f} | {r['close_spearman']:8.3f} "
              f"{r['close_kendall']:7.3f} {r['close_top1']:5.2f}")
    print("\nAdaptive (p-IRT from random anchors, threshold = running best) vs fixed random anchors of the same "
          "average cost, close pool")
    print(f"{'bank':4} {'K0':>3} {'cap':>4} {'seed':>4} {'items':>6} | {'adaptive Sp':>11} {'Kendall':>7} {'top-1':>5} | "
          f"{'fixed Sp':>8} {'Kendall':>7} {'top-1':>5}")
    for r in adaptive_rows:
        print(f"{r['bank']:4} {r['anchors']:3d} {r['max_items']:4d} {r['seed']:4d} {r['mean_items']:6.1f} | {r['adaptive_spearman']:11.3f} "
              f"{r['adaptive_kendall']:7.3f} {r['adaptive_top1']:5.2f} | {r['fixed_spearman']:8.3f} "
              f"{r['fixed_kendall']:7.3f} {r['fixed_top1']:5.2f}")
    print("mean over seeds:")
    adaptive_means = {}  # (bank, K0, cap) -> mean items, adaptive and fixed Spearman
    for b in BACKENDS:
        for k0, cap in ADAPTIVE:
            sel = [r for r in adaptive_rows if (r["bank"], r["anchors"], r["max_items"]) == (b, k0, cap)]
            items, ada, fix = (float(np.mean([r[k] for r in sel])) for k in ("mean_items", "adaptive_spearman", "fixed_spearman"))
            adaptive_means[b, k0, cap] = (ada, fix)
            print(f"{b:4} {k0:3d} {cap:4d} items {items:6.1f} | adaptive Spearman {ada:.3f}, fixed {fix:.3f}")

    searches = []
    for (name, seed), s in done.items():
        searches.append({"fitness": name, "seed": seed, "winner": s["best"]["id"],
                         "winner_val_objective": s["best"]["objectives"]["accuracy"],
                         "winner_full_test_accuracy": s["best"]["full_test_accuracy"],
                         "item_evaluations": s["item_evaluations"], "wall_s": s["wall_s"],
                         "item_share": s["item_evaluations"] / done["full", seed]["item_evaluations"]})
    print(f"\nSearch: TPE, seeds {SEARCH_SEEDS}, {BUDGET} candidates; IRT fitness variants: {IRT_FITNESS}")
    print(f"{'fitness':14} {'seed':>4} {'winner':7} {'val acc':>7} {'test acc':>8} {'item evals':>10} {'share':>6} {'wall s':>7}")
    for s in searches:
        print(f"{s['fitness']:14} {s['seed']:4d} {s['winner']:7} {s['winner_val_objective']:7.4f} "
              f"{s['winner_full_test_accuracy']:8.4f} {s['item_evaluations']:10d} {s['item_share']:6.3f} {s['wall_s']:7.1f}")
    mean_test = {name: float(np.mean([s["winner_full_test_accuracy"] for s in searches if s["fitness"] == name]))
                 for name in ("full", *IRT_FITNESS)}
    mean_share = {name: float(np.mean([s["item_share"] for s in searches if s["fitness"] == name])) for name in IRT_FITNESS}
    for name in ("full", *IRT_FITNESS):
        print(f"{name:14} mean over seeds: winner test accuracy {mean_test[name]:.4f}"
              + (f", item share {mean_share[name]:.3f}" if name in mean_share else ""))

    qualifying = [r for r in rows if r["cost_reduction"] >= 50]
    best = min(qualifying, key=lambda r: r["diverse_mae_points"])
    summary = {
        "mae_points": best["diverse_mae_points"], "spearman": best["diverse_spearman"],
        "cost_reduction": best["cost_reduction"], "close_pool_top1": best["close_top1"],
        "best_setting": {k: best[k] for k in ("bank", "estimator", "anchors", "k")},
        "calibration": calibrations,
        "adaptive_vs_fixed_close_spearman": {f"{b} K0={k0} cap={cap}": list(v)
                                             for (b, k0, cap), v in adaptive_means.items()},
        "full_search_test_accuracy": mean_test["full"],
        "irt_search_test_accuracy": {name: mean_test[name] for name in IRT_FITNESS},
        "irt_search_item_share": mean_share,
        "wall_s": time.perf_counter() - start,
    }
    print(f"\nBest setting with >= 50x fewer items: {summary['best_setting']}: MAE {summary['mae_points']:.2f} points, "
          f"Spearman {summary['spearman']:.3f}, close-pool top-1 {summary['close_pool_top1']:.2f}; "
          f"total {summary['wall_s']:.0f}s")
    out = ROOT / "benchmarks" / "results" / "irt_fidelity.json"
    out.write_text(json.dumps({"benchmark": "irt_fidelity", "command": "OMP_NUM_THREADS=1 python benchmarks/irt_fidelity.py",
                               "rows": rows + [{"adaptive": r} for r in adaptive_rows] + [{"search": s} for s in searches],
                               "summary": summary}, indent=1) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
