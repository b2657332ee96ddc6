"""Search engines against hand recipes on the built-in language-model family (issue 13, item 4).

Space: ``search_spaces/lm_skills.yaml`` (layer-wise merges of the four skill fine-tunes; its
multi-objective genes unchanged, objective: mean validation accuracy). For each engine (DEAP GA,
DEAP NSGA-II, Optuna TPE, Optuna CMA-ES, random search) and seed, one search of ``--budget``
evaluations runs through the project's runner (``run_search``, one in-process worker), the curve
read at a quarter, half and all of the budget as in ``benchmarks/search.py`` (whose ``Scorer`` and
``search_row`` this reuses): the best-so-far validation accuracy and the test accuracy of that
candidate (every skill's 1,000 test items).

To fit 2 cores, every search and hand recipe is selected on the first ``--val-items`` validation
items of each skill (default 250 of 1,000; the benchmark writes those item files into its work
folder); test figures always use all 1,000 test items per skill.

Hand recipes (the same layer-wise template, every cell one value): each method at its papers'
defaults (task arithmetic lambda = 1, TIES density 0.2 lambda 1, DARE p = 0.9 lambda 1, TSV-M
alpha 1 with the default rank 1/T), and the best single-coefficient recipe tuned on validation
(task arithmetic and TIES at density 0.2 over lambda in ``TUNE_LAMBDAS``); the base alone
(task arithmetic at lambda 0) and each fine-tune on its own skill are references.

Normalized accuracy (TSV paper, after Ilharco et al. 2023): per skill, test accuracy / the skill's
fine-tune's test accuracy, averaged over skills. ``random_sd`` is random search's standard
deviation over seeds. ``lm_cross_arch`` (two architectures stitched) is not built yet: its key is absent.

Run: ``OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/lm_search.py`` (the LM family built first:
``evomerge zoo build --family lm``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import Scorer, fmt, mean, search_row  # noqa: E402  (benchmarks/search.py)

from evomerge.commands.search import known_models  # noqa: E402
from evomerge.search.run_folder import RunFolder  # noqa: E402
from evomerge.search.space import SearchSpace, decode, load_space, with_overrides  # noqa: E402
from evomerge.zoo.lm.catalog import LMZoo  # noqa: E402
from evomerge.zoo.lm.family import model_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "lm_skills.yaml"
WORK = ROOT / "runs" / "lm_search"
OUT = ROOT / "benchmarks" / "results" / "lm_search.json"
COMMAND = "OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/lm_search.py"
ENGINES = ["deap_ga", "deap_nsga2", "optuna_tpe", "optuna_cmaes", "random"]
ACCURACY_ONLY = [{"name": "accuracy", "metric": "accuracy", "task": "mean", "direction": "max"}]
TUNE_LAMBDAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.7, 1.0)
DEFAULTS: dict[str, dict[str, Any]] = {
    "task_arithmetic lam=1": {"method": "task_arithmetic", "lam": 1.0},
    "ties density=0.2 lam=1": {"method": "ties", "lam": 1.0, "density": 0.2},
    "dare p=0.9 lam=1": {"method": "dare", "lam": 1.0, "drop_rate": 0.9},
    "tsv-m alpha=1 rank=1/T": {"method": "tsv", "alpha": 1.0, "rank": 1},
}

Row = dict[str, Any]


def subset_space(space: SearchSpace, n_val: int) -> SearchSpace:
    """``space`` with each item file cut to its first ``n_val`` validation items (all test items kept)."""
    WORK.mkdir(parents=True, exist_ok=True)
    tasks = []
    for t in space.model_dump(mode="json")["tasks"]:
        lines = Path(t["items"]).read_text().splitlines()
        val = [ln for ln in lines if json.loads(ln)["split"] == "val"][:n_val]
        cut = WORK / f"{t['name']}-val{n_val}.jsonl"
        cut.write_text("\n".join(val + [ln for ln in lines if json.loads(ln)["split"] != "val"]) + "\n")
        tasks.append({**t, "items": str(cut)})
    return with_overrides(space, tasks=tasks, objectives=ACCURACY_ONLY)


def uniform(space: SearchSpace, genome: dict[str, Any]) -> dict:
    """The recipe whose every grid cell of each array gene holds the genome's one value."""
    genes = {g.name: g for g in space.genes}
    full: dict[str, Any] = {}
    for name, value in genome.items():
        full.update({e.name: value for e in genes[name].elements()})
    recipe = decode(space, full)
    if genome["method"] == "tsv":
        recipe["grid"]["rank"] = None  # the method's default rank (1/T of each matrix's rank)
    return recipe


class LMRows:
    """Rows with per-skill test accuracies and their normalized figure."""

    def __init__(self, space: SearchSpace, scorer: Scorer, own: dict[str, float]):
        self.space, self.scorer, self.own = space, scorer, own

    def normalized(self, test: dict[str, float]) -> float:
        return statistics.fmean(test[f"accuracy/{s}"] / self.own[s] for s in self.own)

    def hand(self, name: str, recipe: dict, kind: str = "hand") -> Row:
        val, test = self.scorer.scores(recipe)
        return {"space": self.space.name, "kind": kind, "name": name, "recipe": recipe,
                "val_accuracy": val["accuracy/mean"], "test_accuracy": test["accuracy/mean"],
                "per_skill": {s: test[f"accuracy/{s}"] for s in self.own}, "normalized": self.normalized(test)}


def hand_rows(lm: LMRows) -> list[Row]:
    rows = [lm.hand("base alone (lambda 0)", uniform(lm.space, {"method": "task_arithmetic", "lam": 0.0}), "reference")]
    rows += [lm.hand(name, uniform(lm.space, genome)) for name, genome in DEFAULTS.items()]
    for method in ("task_arithmetic", "ties"):
        grid = [(lm.scorer.val.evaluate("grid", r).objectives["accuracy/mean"], lam, r)
                for lam in TUNE_LAMBDAS
                for r in [uniform(lm.space, {"method": method, "lam": lam, **({"density": 0.2} if method == "ties" else {})})]]
        _, lam, recipe = max(grid, key=lambda g: g[0])
        rows.append({**lm.hand(f"{method} tuned lam={lam}", recipe), "kind": "hand_tuned"})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=int, default=24, help="evaluations per search")
    p.add_argument("--seeds", type=int, default=3, help="seeds per engine (0..N-1)")
    p.add_argument("--val-items", type=int, default=250, help="validation items per skill for selection")
    p.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    args = p.parse_args()
    command = COMMAND + "".join(f" --{k.replace('_', '-')} {v}" for k, v, d in
                                (("budget", args.budget, 24), ("seeds", args.seeds, 3), ("val_items", args.val_items, 250))
                                if v != d)
    if args.engines != ENGINES:
        command += " --engines " + " ".join(args.engines)
    start = time.perf_counter()
    space = subset_space(load_space(SPACE, known_models()), args.val_items)
    zoo = LMZoo(seed=space.zoo.seed)
    own = {t.name: zoo.record(model_id(t.name))["skills"][t.name]["test"] for t in space.tasks}
    scorer = Scorer(space)
    lm = LMRows(space, scorer, own)
    rows = [{"space": space.name, "kind": "reference", "name": "fine-tunes, each on its own skill",
             "test_accuracy": statistics.fmean(own.values()), "per_skill": own, "normalized": 1.0}]
    rows += hand_rows(lm)
    print(f"[{time.perf_counter() - start:6.0f}s] hand recipes done", flush=True)
    for engine in args.engines:
        for seed in range(args.seeds):
            run = WORK / f"{engine}-{seed}"
            row = search_row(space, scorer, engine, seed, args.budget, run)
            recipes = {r["id"]: r["recipe"] for r in RunFolder(run).read_evaluations()}  # read once per run
            for c in row["curve"]:
                c["normalized"] = c["id"] and lm.normalized(scorer.test(recipes[c["id"]]))
            rows.append(row)
            print(f"[{time.perf_counter() - start:6.0f}s] {engine} seed {seed}: test {row['curve'][-1]['test_accuracy']:.4f} "
                  f"normalized {row['curve'][-1]['normalized']:.4f}", flush=True)
    summary = summarize(rows, args)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    print_table(rows)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "lm_search", "command": command, "rows": rows, "summary": summary}, indent=1) + "\n")
    print(f"\nsummary: {json.dumps(summary, indent=1)}\nwrote {OUT.relative_to(ROOT)} in {summary['wall_s']:.0f}s")


def summarize(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    search = [r for r in rows if r["kind"] == "search"]
    final = {e: [r["curve"][-1]["normalized"] for r in search if r["engine"] == e] for e in args.engines}
    engine_norm = {e: mean(v) for e, v in final.items()}
    hand = max((r for r in rows if r["kind"] in ("hand", "hand_tuned")), key=lambda r: r["val_accuracy"])
    default = "optuna_tpe" if "optuna_tpe" in final else args.engines[0]
    rand = final.get("random", [])
    rand_sd = statistics.stdev(rand) if len(rand) > 1 else None
    return {"lm_skills": {
        "objective": "mean validation accuracy (first val_items per skill); figures: test, normalized",
        "budget": args.budget, "seeds": list(range(args.seeds)), "val_items": args.val_items,
        "winner_engine": default,
        "winner_normalized": engine_norm.get(default),
        "winner_normalized_per_seed": final.get(default),
        "best_hand_recipe": hand["name"],
        "best_hand_normalized": hand["normalized"],
        "winner_minus_best_hand_points": None if engine_norm.get(default) is None else 100 * (engine_norm[default] - hand["normalized"]),
        "random_normalized": engine_norm.get("random"),
        "random_sd": rand_sd,
        "engine_normalized": engine_norm,
        "engines_beating_random_by_1sd": [e for e in args.engines if e != "random" and rand_sd is not None
                                          and engine_norm[e] is not None and engine_norm[e] > engine_norm["random"] + rand_sd],
        "base_normalized": next(r["normalized"] for r in rows if r["name"].startswith("base alone")),
    }}


def print_table(rows: list[Row]) -> None:
    search = [r for r in rows if r["kind"] == "search"]
    points = [c["evaluations"] for c in search[0]["curve"]] if search else []
    print("\n== lm_skills: best-so-far validation accuracy / test accuracy / normalized, mean±sd over seeds ==")
    for e in dict.fromkeys(r["engine"] for r in search):
        runs = [r for r in search if r["engine"] == e]
        cells = " | ".join(f"@{n}: {fmt([r['curve'][k]['val_accuracy'] for r in runs])} "
                           f"{fmt([r['curve'][k]['test_accuracy'] for r in runs])} {fmt([r['curve'][k]['normalized'] for r in runs])}"
                           for k, n in enumerate(points))
        print(f"{e:<13} {cells}")
    print(f"\n{'hand recipe / reference':<40} | val    | test   | normalized | per skill (test)")
    for r in rows:
        if r["kind"] != "search":
            val = f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "  -   "
            skills = " ".join(f"{s} {v:.3f}" for s, v in r["per_skill"].items())
            print(f"{r['name']:<40} | {val} | {r['test_accuracy']:.4f} | {r['normalized']:.4f}     | {skills}")


if __name__ == "__main__":
    main()
