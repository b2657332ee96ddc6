"""Search engines against hand recipes on the built-in language-model family (issue 13, item 4).

Spaces (``--space``): ``search_spaces/lm_skills.yaml`` (layer-wise merges of the four Llama skill
fine-tunes) and ``search_spaces/lm_cross_arch.yaml`` (the Llama base stitched to the family's GPT-2);
their genes unchanged, objective: mean validation accuracy. For each engine (DEAP GA, DEAP NSGA-II,
Optuna TPE, Optuna CMA-ES, random search) and seed, one search of ``--budget`` evaluations runs
through the project's runner (``run_search``, one in-process worker), the curve read at a quarter,
half and all of the budget as in ``benchmarks/search.py`` (whose ``Scorer`` and ``search_row`` this
reuses): the best-so-far validation accuracy and the test accuracy of that candidate (every skill's
test items).

To fit 2 cores, every search and hand recipe is selected on the first ``--val-items`` validation
items of each skill (default 250 of 1,000; the benchmark writes those item files into its work
folder); test figures use the first ``--test-items`` test items per skill (default all 1,000).

lm_skills hand recipes (the same layer-wise template, every cell one value): each method at its papers'
defaults (task arithmetic lambda = 1, TIES density 0.2 lambda 1, DARE p = 0.9 lambda 1, TSV-M
alpha 1 with the default rank 1/T; MASS routing on the last block's attention query input, route rank
4, top-1, as ``benchmarks/lm_merging.py``'s MASS row), and the best single-coefficient recipe tuned on validation
(task arithmetic and TIES at density 0.2 over lambda in ``TUNE_LAMBDAS``); the base alone
(task arithmetic at lambda 0) and each fine-tune on its own skill are references. Normalized
accuracy (TSV paper, after Ilharco et al. 2023): per skill, test accuracy / the skill's fine-tune's
test accuracy, averaged over skills.

lm_cross_arch references: each source alone, and their output ensemble (both models whole, next-token
distributions mixed 1:1, and with the learned router); hand stitches: ridge (its default alpha),
task-conditioned, learned router, at each of the 12 stitch points, the validation-best point kept
(``hand_tuned``); at that point every other aligner with the learned router and ridge with fixed
(mixture, trunk weight 1) and confidence routing. Normalized accuracy: per skill, test accuracy / the
better source's, averaged over the seven skills (the stitch's aim: each architecture's skills in one model).

``random_sd`` is random search's standard deviation over seeds. A run with one ``--space`` keeps the
other space's rows and summary already in the results file. ``--family-seed N`` (N > 0) runs on the LM
family of seed N (the space's ``zoo.seed`` replaced), filed as ``<space>_family<N>``; ``--cold`` runs every
search without the space's starting points (``engine.initial``), filed with ``_cold`` appended. The hand
recipes of lm_skills' ``engine.initial`` (MASS and TIES at their defaults) are among the rows below, so a
warm search's first candidates score what those rows score on validation.

Run: ``OMP_WAIT_POLICY=PASSIVE OMP_NUM_THREADS=1 python benchmarks/lm_search.py [--space lm_cross_arch]``
(the LM family built first: ``evomerge zoo build --family lm``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

torch.set_num_threads(1)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from search import Scorer, fmt, mean, search_row  # noqa: E402  (benchmarks/search.py)

from evomerge.commands.search import known_models  # noqa: E402
from evomerge.search.run_folder import RunFolder  # noqa: E402
from evomerge.search.space import SearchSpace, decode, parse_space, with_overrides  # noqa: E402
from evomerge.zoo.lm.catalog import LMZoo  # noqa: E402
from evomerge.zoo.lm.family import model_id  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SPACES = {name: ROOT / "search_spaces" / f"{name}.yaml" for name in ("lm_skills", "lm_cross_arch")}
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
    "mass layer 3 q_proj route rank 4 top-1": {"method": "tsv", "mass": True, "mass_layer": "model.layers.3.self_attn.q_proj",
                                               "route_rank": 4, "mass_top_k": 1},
}

Row = dict[str, Any]


def subset_space(space: SearchSpace, n_val: int, n_test: int | None = None) -> SearchSpace:
    """``space`` with each item file cut to its first ``n_val`` validation items and ``n_test`` test items
    (None: all; training items kept)."""
    WORK.mkdir(parents=True, exist_ok=True)
    tasks = []
    for t in space.model_dump(mode="json")["tasks"]:
        lines = Path(t["items"]).read_text().splitlines()
        split = [json.loads(ln)["split"] for ln in lines]
        val = [ln for ln, s in zip(lines, split) if s == "val"][:n_val]
        test = [ln for ln, s in zip(lines, split) if s == "test"][:n_test]
        cut = WORK / f"{space.name}-{t['name']}-val{n_val}-test{n_test or 'all'}.jsonl"
        cut.write_text("\n".join(val + test + [ln for ln, s in zip(lines, split) if s == "train"]) + "\n")
        tasks.append({**t, "items": str(cut)})
    return with_overrides(space, tasks=tasks, objectives=ACCURACY_ONLY)


def uniform(space: SearchSpace, genome: dict[str, Any]) -> dict:
    """The recipe whose every grid cell of each array gene holds the genome's one value."""
    genes = {g.name: g for g in space.genes}
    if genome["method"] == "tsv" and "mass" in genes:
        genome = {"mass": False, **genome}  # a static TSV-M unless the genome routes
    full: dict[str, Any] = {}
    for name, value in genome.items():
        full.update({e.name: value for e in genes[name].elements()})
    recipe = decode(space, full)
    if genome["method"] == "tsv" and "rank" in genome:
        recipe["grid"]["rank"] = None  # the method's default rank (1/T of each matrix's rank)
    return recipe


class LMRows:
    """Rows with per-skill test accuracies and their normalized figure (``own``: each skill's denominator;
    a skill no reference answers at all is left out of it)."""

    def __init__(self, space: SearchSpace, scorer: Scorer, own: dict[str, float]):
        self.space, self.scorer, self.own = space, scorer, own

    def normalized(self, test: dict[str, float]) -> float:
        return statistics.fmean(test[f"accuracy/{s}"] / self.own[s] for s in self.own if self.own[s] > 0)

    def hand(self, name: str, recipe: dict, kind: str = "hand") -> Row:
        val, test = self.scorer.scores(recipe)
        return {"space": self.space.name, "kind": kind, "name": name, "recipe": recipe,
                "val_accuracy": val["accuracy/mean"], "test_accuracy": test["accuracy/mean"],
                "per_skill": {s: test[f"accuracy/{s}"] for s in self.own}, "normalized": self.normalized(test),
                "added_params": int(test["added_params"])}

    def module_row(self, name: str, module: torch.nn.Module, added_params: int) -> Row:
        """A reference built outside the recipe kinds (a source alone, an ensemble), scored by the tasks'
        scorers on every validation (the benchmark's cut) and test item."""
        from evomerge.items import make_scorer
        from evomerge.zoo.lm.tokenizer import char_tokenizer

        acc: dict[str, dict[str, float]] = {"val": {}, "test": {}}
        tokenizer = char_tokenizer()
        for t in self.space.tasks:
            scorer = make_scorer(t.item_set)
            for split in acc:
                items = t.item_set.split(split)
                result = scorer.score(module, items, tokenizer=tokenizer, batch_size=128)
                acc[split][t.name] = float(result.correct[t.metric].mean())
        test = {f"accuracy/{k}": v for k, v in acc["test"].items()}
        return {"space": self.space.name, "kind": "reference", "name": name, "val_accuracy": statistics.fmean(acc["val"].values()),
                "test_accuracy": statistics.fmean(acc["test"].values()), "per_skill": acc["test"],
                "normalized": self.normalized(test), "added_params": added_params}


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


#: lm_cross_arch's hand grid: every stitch point of its genes, ridge at its default alpha, task-conditioned, learned router.
CROSS_HAND = {"aligner": "ridge", "ridge_alpha": 1.0, "lowrank_rank": 8, "cca_k": 8, "center": "condition",
              "conditioning": "task", "routing": "learned", "trunk_weight": 1.0}


def stitch(space: SearchSpace, **genes: Any) -> dict:
    """The space's stitch recipe for these genes (over :data:`CROSS_HAND`), its aligner at the library's defaults."""
    recipe = decode(space, {**CROSS_HAND, **genes})
    recipe["branches"][0]["aligner"]["params"] = {}
    return recipe


def cross_arch_rows(space: SearchSpace, scorer: Scorer) -> tuple[LMRows, list[Row]]:
    """lm_cross_arch's references (each source, their ensemble) and hand stitches (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    from evomerge.recipe.stitch_view import LMPath, StitchedLM, fit_router
    from evomerge.sources.adapters import HFAdapter

    models = {name: AutoModelForCausalLM.from_pretrained(src.path).eval() for name, src in space.sources.items()}
    trunk, (branch,) = space.recipe["trunk"], [b["model"] for b in space.recipe["branches"]]
    tasks = {t.name: t for t in space.tasks}
    no_norm = LMRows(space, scorer, dict.fromkeys(tasks, 1.0))
    alone = {m: no_norm.module_row(f"{m} alone", models[m], 0) for m in models}
    own = {t: max(alone[m]["per_skill"][t] for m in models) for t in tasks}
    lm = LMRows(space, scorer, own)
    rows = [{**r, "normalized": lm.normalized({f"accuracy/{k}": v for k, v in r["per_skill"].items()})} for r in alone.values()]
    a, b = HFAdapter.from_model(models[trunk]), HFAdapter.from_model(models[branch])
    ensemble = StitchedLM(a, 1.0, [LMPath(b, None, None, None, 1.0)])
    whole = sum(p.numel() for p in models[branch].parameters())
    rows.append(lm.module_row("ensemble of both (mixture 1:1)", ensemble, whole))
    routed = StitchedLM(a, 1.0, [LMPath(b, None, None, None, 1.0)], routing="learned")
    fit = scorer.val.fit_texts(trunk)  # the training texts the search's stitches fit on
    gate = space.recipe["gate"]
    routed.gate = fit_router(routed, fit, list(tasks), gate["items"] // len(tasks), gate["epochs"], space.seed)
    rows.append(lm.module_row("ensemble of both (learned router)", routed, whole + sum(p.numel() for p in routed.gate.parameters())))
    genes = {g.name: g for g in space.genes}
    grid = []
    for src in genes["source_layer"].choices:
        for dst in genes["target_layer"].choices:
            recipe = stitch(space, source_layer=src, target_layer=dst)
            grid.append((scorer.val.evaluate("grid", recipe).objectives["accuracy/mean"], src, dst, recipe))
    _, src, dst, best = max(grid, key=lambda g: g[0])
    rows.append({**lm.hand(f"ridge {src}->{dst} task-conditioned, learned router", best), "kind": "hand_tuned",
                 "grid_val": [{"source_layer": g[1], "target_layer": g[2], "val_accuracy": g[0]} for g in grid]})
    for aligner in ("lowrank", "cca", "procrustes"):
        recipe = stitch(space, aligner=aligner, source_layer=src, target_layer=dst)
        rows.append(lm.hand(f"{aligner} {src}->{dst} task-conditioned, learned router", recipe))
    for routing in ("mixture", "confidence"):
        recipe = stitch(space, routing=routing, source_layer=src, target_layer=dst)
        rows.append(lm.hand(f"ridge {src}->{dst} task-conditioned, {routing} w=1", recipe))
    return lm, rows


def family_space(path: Path, family_seed: int, cold: bool) -> SearchSpace:
    """The space at ``path``, over the LM family of ``family_seed`` (named ``<name>_family<seed>`` when not
    0); ``cold``: without the space's starting points (``engine.initial``; named ``<name>_cold``)."""
    data = yaml.safe_load(path.read_text())
    if family_seed:
        data["zoo"] = {**(data.get("zoo") or {}), "seed": family_seed}
        data["name"] = f"{data['name']}_family{family_seed}"
    if cold:
        data.get("engine", {}).pop("initial", None)
        data["name"] = f"{data['name']}_cold"
    return parse_space(data, str(path), known_models(), None, path.parent)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", choices=list(SPACES), default="lm_skills")
    p.add_argument("--budget", type=int, default=24, help="evaluations per search")
    p.add_argument("--seeds", type=int, default=3, help="seeds per engine (0..N-1)")
    p.add_argument("--val-items", type=int, default=250, help="validation items per skill for selection")
    p.add_argument("--test-items", type=int, default=None, help="test items per skill for the figures (default: all 1,000)")
    p.add_argument("--engines", nargs="+", default=ENGINES, choices=ENGINES)
    p.add_argument("--family-seed", type=int, default=0, help="the LM family's seed (built first)")
    p.add_argument("--cold", action="store_true", help="searches start without the space's engine.initial")
    args = p.parse_args()
    command = COMMAND + "".join(f" --{k.replace('_', '-')} {v}" for k, v, d in
                                (("space", args.space, "lm_skills"), ("budget", args.budget, 24), ("seeds", args.seeds, 3),
                                 ("val_items", args.val_items, 250), ("test_items", args.test_items, None),
                                 ("family_seed", args.family_seed, 0)) if v != d)
    command += " --cold" if args.cold else ""
    if args.engines != ENGINES:
        command += " --engines " + " ".join(args.engines)
    start = time.perf_counter()
    space = subset_space(family_space(SPACES[args.space], args.family_seed, args.cold), args.val_items, args.test_items)
    scorer = Scorer(space)
    if args.space == "lm_skills":
        zoo = LMZoo(seed=space.zoo.seed)
        own = {t.name: zoo.record(model_id(t.name))["skills"][t.name]["test"] for t in space.tasks}
        lm = LMRows(space, scorer, own)
        rows = [{"space": space.name, "kind": "reference", "name": "fine-tunes, each on its own skill",
                 "test_accuracy": statistics.fmean(own.values()), "per_skill": own, "normalized": 1.0}]
        rows += hand_rows(lm)
    else:
        lm, rows = cross_arch_rows(space, scorer)
    print(f"[{time.perf_counter() - start:6.0f}s] hand recipes done", flush=True)
    for engine in args.engines:
        for seed in range(args.seeds):
            run = WORK / space.name / f"{engine}-{seed}"
            shutil.rmtree(run, ignore_errors=True)  # a rerun starts every search afresh
            row = search_row(space, scorer, engine, seed, args.budget, run)
            recipes = {r["id"]: r["recipe"] for r in RunFolder(run).read_evaluations()}  # read once per run
            for c in row["curve"]:
                c["normalized"] = c["id"] and lm.normalized(scorer.test(recipes[c["id"]]))
            rows.append(row)
            print(f"[{time.perf_counter() - start:6.0f}s] {engine} seed {seed}: test {row['curve'][-1]['test_accuracy']:.4f} "
                  f"normalized {row['curve'][-1]['normalized']:.4f}", flush=True)
    summary = summarize(rows, args)
    summary["wall_s"] = round(time.perf_counter() - start, 1)
    print_table(space.name, rows)
    previous = json.loads(OUT.read_text()) if OUT.is_file() else {"rows": [], "summary": {}, "command": {}}
    commands = previous["command"] if isinstance(previous["command"], dict) else {"lm_skills": previous["command"]}
    result = {"benchmark": "lm_search", "command": {**commands, space.name: command},
              "rows": [r for r in previous["rows"] if r.get("space", "lm_skills") != space.name] + rows,
              "summary": {**previous["summary"], space.name: summary}}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(f"\nsummary: {json.dumps(summary, indent=1)}\nwrote {OUT.relative_to(ROOT)} in {summary['wall_s']:.0f}s")


def summarize(rows: list[Row], args: argparse.Namespace) -> dict[str, Any]:
    search = [r for r in rows if r["kind"] == "search"]
    final = {e: [r["curve"][-1]["normalized"] for r in search if r["engine"] == e] for e in args.engines}
    engine_norm = {e: mean(v) for e, v in final.items()}
    hand = max((r for r in rows if r["kind"] in ("hand", "hand_tuned")), key=lambda r: r["val_accuracy"])
    default = "optuna_tpe" if "optuna_tpe" in final else args.engines[0]
    rand = final.get("random", [])
    rand_sd = statistics.stdev(rand) if len(rand) > 1 else None
    refs = {r["name"]: r["normalized"] for r in rows if r["kind"] == "reference"}
    return {
        "objective": "mean validation accuracy (first val_items per skill); figures: test, normalized",
        "budget": args.budget, "seeds": list(range(args.seeds)), "val_items": args.val_items, "test_items": args.test_items or 1000,
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
        "reference_normalized": refs,
    }


def print_table(name: str, rows: list[Row]) -> None:
    search = [r for r in rows if r["kind"] == "search"]
    points = [c["evaluations"] for c in search[0]["curve"]] if search else []
    print(f"\n== {name}: best-so-far validation accuracy / test accuracy / normalized, mean±sd over seeds ==")
    for e in dict.fromkeys(r["engine"] for r in search):
        runs = [r for r in search if r["engine"] == e]
        cells = " | ".join(f"@{n}: {fmt([r['curve'][k]['val_accuracy'] for r in runs])} "
                           f"{fmt([r['curve'][k]['test_accuracy'] for r in runs])} {fmt([r['curve'][k]['normalized'] for r in runs])}"
                           for k, n in enumerate(points))
        print(f"{e:<13} {cells}")
    print(f"\n{'hand recipe / reference':<58} | val    | test   | normalized | added params | per skill (test)")
    for r in rows:
        if r["kind"] != "search":
            val = f"{r['val_accuracy']:.4f}" if "val_accuracy" in r else "  -   "
            added = f"{r['added_params']:>12,}" if "added_params" in r else f"{'-':>12}"
            skills = " ".join(f"{s} {v:.3f}" for s, v in r["per_skill"].items())
            print(f"{r['name']:<58} | {val} | {r['test_accuracy']:.4f} | {r['normalized']:.4f}     | {added} | {skills}")


if __name__ == "__main__":
    main()
