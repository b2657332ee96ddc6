"""IRT fitness on the language-model family's skills (``search_spaces/lm_skills.yaml``), banks from
past runs (MERGE³'s setting) against banks from the search's own runs.

1. *Banks from past runs only*: models that are not merge candidates, trained deterministically from
   the family (:class:`~evomerge.zoo.lm.catalog.LMZoo` of the space's ``zoo.seed``): the family's own
   members (base and the four fine-tunes), short fine-tunes of the base on each skill (``--ft-steps``
   AdamW steps at the family's ``ft_lr``, and ``--low-lr-steps`` at a tenth of it) and on pairs of
   skills (``--pairs``), each with the family's data path (:func:`~evomerge.zoo.lm.train.train_lm`
   over :func:`~evomerge.zoo.lm.skills.generate`'s training items). Each is scored on every skill's
   validation items by ``evomerge evaluate --items ... --log-samples`` (lm-eval sample logs), and one
   2PL bank per skill is calibrated from those logs by ``evomerge calibrate --from lm-eval`` (the
   commands themselves, in-process). Models and logs are kept under ``runs/lm_irt/<family>/``.
2. *Banks from the search's own runs*: a random-engine run on the space (full fitness, seed 1,
   ``--random-budget`` candidates); ``--own-train`` of them calibrate one bank per skill
   (:func:`~evomerge.fitness.calibrate.calibrate`, hold-out 0.2), the rest are the held-out pool.
3. *Fidelity*: for each bank source x estimator (``mean``, ``irt``, ``pirt``, ``gpirt``, ``mpirt``;
   MERGE³'s ``mp-irt`` and ``gmp-irt``, whose parents' abilities are the source models' θ from their
   full answers) x anchor items per skill (``--ks``: 100, 40, 20 of 1,000 = 10x, 25x, 50x fewer) x
   anchor seed (``--anchor-seeds``, random anchors as the search draws them), each skill's estimate
   (:mod:`evomerge.fitness.estimators`) is combined into the weighted mean with its standard error
   (:func:`~evomerge.fitness.multitask.combine`, what the multi-task fitness does) and compared with
   the full validation mean accuracy: MAE in points, Spearman (scipy) on the held-out pool, and
   Spearman and top-1 agreement on the *close* pool (the last ``--close`` candidates of the
   full-fitness TPE search of seed ``--search-seeds[0]``). Cost reduction = items ÷ anchors.
4. *Search*: the space with TPE, ``--search-budget`` candidates, seeds ``--search-seeds``, with full
   fitness (reused when its run folder is complete: the search is deterministic given space and
   seed) and with IRT fitness (estimator ``irt``, ``--search-items`` random anchors per skill, the
   past-runs banks, one per task): the winner's full test mean accuracy, the gap in points (full
   minus IRT) and the share of item evaluations (``summary.json``'s ``item_evaluations``).

Estimator formulas and their sources: :mod:`evomerge.fitness.estimators` (p-IRT and gp-IRT: Polo
et al. 2024, tinyBenchmarks; mp-IRT and gmp-IRT: Mencattini et al. 2025, MERGE³, as their code
defines them). Summary keys (``../shared/DESIGN.md``): ``mae_points``, ``spearman``, ``cost_reduction``
at the best setting with a past-runs bank and at least 50x fewer items (else the largest reduction
run), ``irt_search_gap_points``, ``irt_search_item_share``, ``merge3_mae_points`` (MERGE³'s best at
that reduction, past-runs bank).

    OMP_NUM_THREADS=1 python benchmarks/lm_irt.py    # 21 past models, 32 random, 3 x 2 searches of 16

Smoke run (11 past models, 10 random candidates, one search of 4 each; about 5 minutes):

    OMP_NUM_THREADS=1 python benchmarks/lm_irt.py --pretrain-steps 20 --ft-steps --low-lr-steps 10 --pairs 1 \
        --pair-steps 10 --random-budget 10 --own-train 5 --close 3 --search-budget 4 --search-seeds 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from irt_fidelity import rank_metrics, search  # noqa: E402 (benchmarks/ is the script's folder)

from evomerge.cli import main as evomerge_cli
from evomerge.fitness.anchors import ANCHORS
from evomerge.fitness.bank import load_bank
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.estimators import ESTIMATORS, recipe_prior
from evomerge.fitness.irt.ability import estimate_ability
from evomerge.fitness.multitask import TaskEstimate, combine
from evomerge.fitness.readers import ReadOptions, read_matrix
from evomerge.fitness.responses import read_responses
from evomerge.fitness.search_fitness import PARENT_ESTIMATORS
from evomerge.items.sample_log import sanitize_model_name
from evomerge.recipe.schema import parse_recipe
from evomerge.search.space import SearchSpace, load_space, with_overrides

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "lm_skills.yaml"
WORK = ROOT / "runs" / "lm_irt"
OUT = ROOT / "benchmarks" / "results" / "lm_irt.json"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/lm_irt.py"
ESTIMATOR_NAMES = ("mean", "irt", "pirt", "gpirt", "mpirt", "mp-irt", "gmp-irt")
MERGE3 = ("mp-irt", "gmp-irt")
PAIRS = (("reverse", "sort"), ("count", "compare"), ("reverse", "count"), ("sort", "compare"))
LOW_LR = 0.1  # the low learning rate of some past models, a share of the family's ft_lr
RANDOM = {"engine.name": "random", "engine.settings": {}}  # as `evomerge search --engine random`


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pretrain-steps", type=int, nargs="*", default=[60, 120], help="shorter pretraining runs of the base")
    p.add_argument("--ft-steps", type=int, nargs="*", default=[15], help="fine-tunes per skill at the family's ft_lr")
    p.add_argument("--low-lr-steps", type=int, nargs="*", default=[20, 60], help="fine-tunes per skill at ft_lr / 10")
    p.add_argument("--pairs", type=int, default=2, help=f"fine-tunes on pairs of skills at ft_lr / 10 (at most {len(PAIRS)})")
    p.add_argument("--pair-steps", type=int, default=40)
    p.add_argument("--random-budget", type=int, default=32, help="candidates of the random run (own-runs bank + pool)")
    p.add_argument("--own-train", type=int, default=12, help="random-run candidates the own-runs banks calibrate on")
    p.add_argument("--close", type=int, default=8, help="last candidates of the full TPE search: the close pool")
    p.add_argument("--ks", type=int, nargs="+", default=[100, 40, 20], help="anchor items per skill")
    p.add_argument("--anchors", nargs="+", default=["random"], help="anchor selections")
    p.add_argument("--anchor-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search-budget", type=int, default=16)
    p.add_argument("--search-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--search-items", type=int, default=20, help="anchor items per skill of the IRT-fitness search")
    p.add_argument("--workers", type=int, default=2, help="processes training, scoring and searching at once")
    return p.parse_args()


# ---- 1. banks from past runs -------------------------------------------------------------------

def past_models(args: argparse.Namespace, skills: tuple[str, ...]) -> list[dict[str, Any]]:
    """The non-candidate models: the family's members; shorter pretraining runs of the base (another
    seed); fine-tunes of the family's base on one skill (``train_member`` with fewer steps, at the
    family's ``ft_lr`` and at a tenth of it) and on pairs of skills (at a tenth of ``ft_lr``).
    ``updates``: the :class:`~evomerge.zoo.lm.family.LMFamilySpec` fields changed for that model."""
    out: list[dict[str, Any]] = [{"name": "lm-base", "family": True}]
    out += [{"name": f"lm-{s}", "family": True} for s in skills]
    out += [{"name": f"pre-{n}", "member": "base", "updates": {"base_steps": n}} for n in args.pretrain_steps]
    for s in skills:
        out += [{"name": f"ft-{s}-{n}", "member": s, "updates": {"ft_steps": n}} for n in args.ft_steps]
        out += [{"name": f"ft-{s}-{n}-lowlr", "member": s, "updates": {"ft_steps": n, "ft_lr": LOW_LR}}
                for n in args.low_lr_steps]
    out += [{"name": f"ft-{a}+{b}-{args.pair_steps}-lowlr", "skills": [a, b], "steps": args.pair_steps}
            for a, b in PAIRS[: args.pairs]]
    return out


def train_past(job: dict[str, Any], zoo: Any, out: Path) -> None:
    """Train a past model into ``out``: by the family's ``train_member`` (seed: the family's + 1, so
    other data and batches than the family's own), or on a pair of skills by the same data path."""
    from transformers import LlamaForCausalLM

    from evomerge.zoo.lm.family import BASE, interleaved, train_and_save, train_member

    base_dir = zoo.model_dir("lm-base")
    if "member" in job:
        spec = zoo.spec.model_copy(update={k: v * zoo.spec.ft_lr if k == "ft_lr" else v for k, v in job["updates"].items()})
        train_member(spec, job["member"], zoo.seed + 1, out, None if job["member"] == BASE else base_dir)
        return
    spec = zoo.spec
    model = LlamaForCausalLM.from_pretrained(str(base_dir), local_files_only=True)
    train_and_save(model, interleaved(job["skills"], spec.train_items, zoo.seed + 1), out, steps=job["steps"],
                   lr=spec.ft_lr * LOW_LR, batch_size=spec.batch_size,
                   seed=1000 * (zoo.seed + 1) + sum(spec.skills.index(s) + 1 for s in job["skills"]) * 7)


def past_model(job: dict[str, Any], space_path: str, folder: str) -> dict[str, Any]:
    """Train one past model if it is not there yet (family members are the family's folders), then
    write its lm-eval sample logs on every skill's validation items with ``evomerge evaluate``."""
    torch.set_num_threads(1)
    import transformers

    from evomerge.zoo.lm.catalog import LMZoo

    transformers.utils.logging.disable_progress_bar()
    space = load_space(space_path)
    zoo = LMZoo(seed=space.zoo.seed)
    work = Path(folder)
    paths = {m["name"]: m["path"] for m in space.models}
    if job.get("family"):
        model_dir = Path(paths.get(job["name"].removeprefix("lm-"), zoo.model_dir(job["name"])))
    else:
        model_dir = work / "models" / job["name"]
        if not (model_dir / "config.json").is_file():
            tmp = model_dir.with_name(model_dir.name + ".tmp")
            train_past(job, zoo, tmp)
            tmp.rename(model_dir)
    logs = work / "logs"
    accuracy = {}
    for t in space.tasks:
        done = sorted((logs / sanitize_model_name(str(model_dir))).glob(f"results_*.json"))
        results = [r["results"][t.name] for r in map(json.loads, (p.read_text() for p in done)) if t.name in r["results"]]
        if results:
            accuracy[t.name] = next(v for k, v in results[-1].items() if k.startswith(f"{t.metric},"))
            continue
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            code = evomerge_cli(["evaluate", str(model_dir), "--items", str(t.items),
                                 "--format", str(zoo.items(t.name).format_file),
                                 "--split", "val", "--seed", str(t.seed), "--batch-size", "128",
                                 "--log-samples", str(logs)])
        if code:
            raise RuntimeError(f"evomerge evaluate {model_dir} on {t.name}: exit {code}")
        accuracy[t.name] = json.loads(stdout.getvalue())[0][t.metric]
    return {"model": job["name"], "val_accuracy": accuracy, "logs": str(logs / sanitize_model_name(str(model_dir)))}


def calibrate_past(space: SearchSpace, work: Path, folders: list[str]) -> dict[str, Path]:
    """One bank per skill from the past models' lm-eval log ``folders`` (one per model), by ``evomerge
    calibrate --from lm-eval``; a bank is kept while it was fitted on these folders and is newer than their logs."""
    banks = {}
    newest_log = max(p.stat().st_mtime for f in folders for p in Path(f).glob("*.json*"))
    for t in space.tasks:
        banks[t.name] = work / "banks" / f"{t.name}.json"
        if banks[t.name].is_file() and banks[t.name].stat().st_mtime > newest_log and \
                {str(Path(src.path).parent) for src in load_bank(banks[t.name]).sources} == set(folders):
            continue
        code = evomerge_cli(["calibrate", "--from", "lm-eval", *folders, "--task", t.name, "--split", "val",
                             "--out", str(banks[t.name])])
        if code:
            raise RuntimeError(f"evomerge calibrate --from lm-eval ({len(folders)} model folders) --task {t.name}: exit {code}")
    return banks


# ---- searches -----------------------------------------------------------------------------------

def search_job(overrides: dict[str, Any], run_dir: str, reuse: bool) -> dict[str, Any]:
    """The space with ``overrides`` searched in this process (:func:`irt_fidelity.search`)."""
    return search(with_overrides(load_space(SPACE), **overrides), Path(run_dir), reuse)


def recipes(run: Path) -> dict[str, dict]:
    return {f"{run.name}/{r['id']}": r["recipe"] for r in map(json.loads, (run / "evaluations.jsonl").open())}


# ---- 3. fidelity --------------------------------------------------------------------------------

class Bank:
    """One skill's calibrated parameters (in the run's item order), held-out error and the sources' θ."""

    def __init__(self, params: Any, heldout_mae: float, source_answers: dict[str, np.ndarray]):
        self.params, self.mae = params, heldout_mae
        self.thetas = {m: estimate_ability(params, a)[0] for m, a in source_answers.items()}


def estimate(bank: Bank, estimator: str, anchors: Any, row: np.ndarray, kind: Any, skill: str) -> Any:
    """One skill's estimate for a candidate (parsed recipe ``kind``) whose full answers are ``row``
    (only the anchors' are read); priors and parents as :class:`~evomerge.fitness.evaluator.CandidateEvaluator` sets them."""
    prior = recipe_prior(*zip(*[(bank.thetas[m], c) for m, c in kind.mixing(skill).items()])) if estimator == "mpirt" else None
    parents = np.array([np.atleast_1d(bank.thetas[m]) for m in kind.parents()]) if estimator in PARENT_ESTIMATORS else None
    return ESTIMATORS.get(estimator)(bank.params, anchors.items, row[anchors.items], weights=anchors.weights,
                                     prior=prior, pirt_mae=bank.mae, parent_thetas=parents)


def fidelity(banks: dict[str, dict[str, Bank]], pools: dict[str, tuple[dict[str, np.ndarray], list[str]]],
             all_recipes: dict[str, dict], weights: dict[str, float], args: argparse.Namespace) -> list[dict]:
    """Rows bank source x estimator x anchors x K: MAE, Spearman (held-out pool), Spearman and top-1 (close pool)."""
    rows = []
    kinds = {n: parse_recipe(r) for n, r in all_recipes.items()}
    truth = {pool: np.array([sum(weights[s] * y[s][i].mean() for s in y) / sum(weights.values())
                             for i in range(len(names))]) for pool, (y, names) in pools.items()}
    for source, skill_banks in banks.items():
        n_items = len(next(iter(skill_banks.values())).params)
        for selector in args.anchors:
            for k in args.ks:
                anchor_sets = [{s: ANCHORS.get(selector)(b.params, k, seed=seed) for s, b in skill_banks.items()}
                               for seed in args.anchor_seeds]
                for estimator in ESTIMATOR_NAMES:
                    row: dict[str, Any] = {"bank": source, "estimator": estimator, "anchors": selector, "k": k,
                                           "cost_reduction": n_items / k}
                    for pool, (y, names) in pools.items():
                        per_seed = []
                        for anchors in anchor_sets:
                            est = np.array([combine([TaskEstimate(s, estimator, e.value, e.stderr, e.n_items, False)
                                                     for s, b in skill_banks.items()
                                                     for e in [estimate(b, estimator, anchors[s], y[s][i], kinds[n], s)]],
                                                    weights).value for i, n in enumerate(names)])
                            per_seed.append(rank_metrics(est, truth[pool]))
                        for key in ("mae_points", "spearman", "top1"):
                            row[f"{pool}_{key}"] = float(np.mean([m[key] for m in per_seed]))
                    rows.append(row)
    return rows


def skill_rows(run: Path, skills: list[str]) -> tuple[dict[str, np.ndarray], list[str], dict[str, list[str]]]:
    """Each skill's full validation answers (candidates x items) of a full-fitness run, the rows' names,
    each skill's item ids."""
    matrices = {s: read_responses([run], s) for s in skills}
    names = matrices[skills[0]].candidates
    assert all(m.candidates == names and not np.isnan(m.values).any() for m in matrices.values()), run
    return {s: m.values for s, m in matrices.items()}, names, {s: m.item_ids for s, m in matrices.items()}


def positions(ids: list[str], wanted: list[str]) -> np.ndarray:
    """Where each of ``wanted`` stands in ``ids``."""
    where = {i: k for k, i in enumerate(ids)}
    return np.array([where[i] for i in wanted])


@contextlib.contextmanager
def cancel_on_error(pool: ProcessPoolExecutor) -> Any:
    """A failed job stops the benchmark: the jobs not started yet are cancelled."""
    try:
        yield
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    from evomerge.zoo.lm.catalog import LMZoo

    space = load_space(SPACE)
    zoo = LMZoo(seed=space.zoo.seed)
    work = WORK / zoo.root.name
    work.mkdir(parents=True, exist_ok=True)
    skills = [t.name for t in space.tasks]
    weights = {t.name: t.weight for t in space.tasks}
    jobs = past_models(args, zoo.spec.skills)
    random_run = work / f"random_s1_b{args.random_budget}"
    full_runs = {seed: work / f"full_s{seed}_b{args.search_budget}" for seed in args.search_seeds}
    irt_runs = {seed: work / f"irt_k{args.search_items}_s{seed}_b{args.search_budget}" for seed in args.search_seeds}
    base_tasks = space.model_dump(mode="json")["tasks"]
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool, \
            cancel_on_error(pool):
        past = [pool.submit(past_model, job, str(SPACE), str(work)) for job in jobs]
        random = pool.submit(search_job, {**RANDOM, "seed": 1, "budget.evaluations": args.random_budget},
                             str(random_run), True)
        full = {seed: pool.submit(search_job, {"seed": seed, "budget.evaluations": args.search_budget}, str(run), True)
                for seed, run in full_runs.items()}
        past_rows = [f.result() for f in past]
        print(f"past models ({len(past_rows)}), validation accuracy per skill:", flush=True)
        for r in past_rows:
            print(f"  {r['model']:<24} " + "  ".join(f"{s} {v:.3f}" for s, v in r["val_accuracy"].items()), flush=True)
        bank_files = calibrate_past(space, work, [r["logs"] for r in past_rows])
        irt_fitness = {"estimator": "irt", "items": args.search_items, "anchors": "random"}
        irt_tasks = [{**t, "bank": str(bank_files[t["name"]])} for t in base_tasks]
        newest_bank = max(p.stat().st_mtime for p in bank_files.values())  # a run on these banks is reused
        irt = {seed: pool.submit(search_job, {"seed": seed, "budget.evaluations": args.search_budget,
                                              "fitness": irt_fitness, "tasks": irt_tasks}, str(run),
                                 (run / "summary.json").is_file() and (run / "summary.json").stat().st_mtime > newest_bank)
               for seed, run in irt_runs.items()}
        random.result()
        done = {("full", seed): f.result() for seed, f in full.items()} | {("irt", seed): f.result() for seed, f in irt.items()}

    # the sources' full answers (for mpirt's prior and MERGE³'s parents), read back from the past logs
    y_random, names, item_ids = skill_rows(random_run, skills)
    source_paths = {m["path"]: m["name"] for m in space.models}
    source_answers: dict[str, dict[str, np.ndarray]] = {}
    for s in skills:
        matrix = read_matrix("lm-eval", [r["logs"] for r in past_rows], ReadOptions(task=s, split="val"))
        order = positions(matrix.item_ids, item_ids[s])
        source_answers[s] = {source_paths[c]: matrix.values[r, order] for r, c in enumerate(matrix.candidates)
                             if c in source_paths}
    banks: dict[str, dict[str, Bank]] = {"past": {}, "own": {}}
    calibrations: dict[str, dict[str, Any]] = {"past": {}, "own": {}}
    for s in skills:
        bank = load_bank(bank_files[s])
        banks["past"][s] = Bank(bank.params.subset(positions(bank.item_ids, item_ids[s])), bank.diagnostics["heldout_mae"],
                                source_answers[s])
        calibrations["past"][s] = bank.diagnostics
    perm = np.random.default_rng(0).permutation(len(names))
    train, held = perm[: args.own_train], np.sort(perm[args.own_train:])
    for s in skills:
        cal = calibrate(y_random[s][train], holdout=0.2, seed=0)
        banks["own"][s] = Bank(cal.fit.params, cal.diagnostics["heldout_mae"], source_answers[s])
        calibrations["own"][s] = {k: None if isinstance(v, float) and not math.isfinite(v) else v  # as a bank file has it
                                  for k, v in cal.diagnostics.items()}
    for source in banks:
        for s, d in calibrations[source].items():
            print(f"bank {source:4} {s:8}: {d['n_candidates']} models, held-out loglik {d['heldout_loglik']:.3f} "
                  f"(item means {d['heldout_loglik_item_means']:.3f}), AUC {d['heldout_auc'] or float('nan'):.3f}, "
                  f"accuracy MAE {d['heldout_mae']:.4f}", flush=True)
    close_run = full_runs[args.search_seeds[0]]
    y_close, close_names, _ = skill_rows(close_run, skills)
    pools = {"held": ({s: y[held] for s, y in y_random.items()}, [names[i] for i in held]),
             "close": ({s: y[-args.close:] for s, y in y_close.items()}, close_names[-args.close:])}
    rows = fidelity(banks, pools, recipes(random_run) | recipes(close_run), weights, args)
    report(args, rows, done, calibrations, past_rows, len(held), start)


def report(args: argparse.Namespace, rows: list[dict], done: dict[tuple[str, int], dict], calibrations: dict,
           past_rows: list[dict], n_held: int, start: float) -> None:
    """Print the tables; write benchmarks/results/lm_irt.json."""
    print(f"\nFidelity: estimate of the mean validation accuracy over the skills vs the full one; held: {n_held} "
          f"held-out random-run candidates, close: the last {args.close} of the full TPE search "
          f"(seed {args.search_seeds[0]}); averaged over anchor seeds {args.anchor_seeds}")
    print(f"{'bank':4} {'estimator':9} {'anchors':8} {'K':>4} {'x fewer':>7} | {'MAE pt':>6} {'Spear':>6} | "
          f"{'close MAE':>9} {'Spear':>6} {'top-1':>5}")
    for r in rows:
        print(f"{r['bank']:4} {r['estimator']:9} {r['anchors']:8} {r['k']:4d} {r['cost_reduction']:7.1f} | "
              f"{r['held_mae_points']:6.2f} {r['held_spearman']:6.3f} | {r['close_mae_points']:9.2f} "
              f"{r['close_spearman']:6.3f} {r['close_top1']:5.2f}")
    searches = []
    for (fitness, seed), s in sorted(done.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        full = done["full", seed]
        searches.append({"fitness": fitness, "seed": seed, "winner": s["best"]["id"],
                         "winner_val_objective": s["best"]["objectives"]["accuracy"],
                         "winner_full_test_accuracy": s["best"]["full_test_accuracy"],
                         "item_evaluations": s["item_evaluations"], "wall_s": s["wall_s"],
                         "item_share": s["item_evaluations"] / full["item_evaluations"]})
    print(f"\nSearch: TPE, {args.search_budget} candidates, seeds {args.search_seeds}; IRT fitness: irt, "
          f"{args.search_items} random anchors per skill, banks from past runs")
    print(f"{'fitness':7} {'seed':>4} {'winner':7} {'val acc':>7} {'test acc':>8} {'item evals':>10} {'share':>6} {'wall s':>7}")
    for s in searches:
        print(f"{s['fitness']:7} {s['seed']:4d} {s['winner']:7} {s['winner_val_objective']:7.4f} "
              f"{s['winner_full_test_accuracy']:8.4f} {s['item_evaluations']:10d} {s['item_share']:6.3f} {s['wall_s']:7.1f}")
    mean_test = {f: float(np.mean([s["winner_full_test_accuracy"] for s in searches if s["fitness"] == f]))
                 for f in ("full", "irt")}
    share = float(np.mean([s["item_share"] for s in searches if s["fitness"] == "irt"]))

    past = [r for r in rows if r["bank"] == "past"]
    reduction = min(max(r["cost_reduction"] for r in past), 50.0)
    best = min((r for r in past if r["cost_reduction"] >= reduction), key=lambda r: r["held_mae_points"])
    at_best = [r for r in rows if r["cost_reduction"] == best["cost_reduction"] and r["anchors"] == best["anchors"]]
    merge3 = min((r for r in at_best if r["bank"] == "past" and r["estimator"] in MERGE3), key=lambda r: r["held_mae_points"])
    by = {key: {b: {r["estimator"]: r[key] for r in at_best if r["bank"] == b} for b in ("past", "own")}
          for key in ("held_mae_points", "held_spearman", "close_spearman", "close_top1")}
    summary = {
        "mae_points": best["held_mae_points"], "spearman": best["held_spearman"],
        "cost_reduction": best["cost_reduction"],
        "best_setting": {k: best[k] for k in ("bank", "estimator", "anchors", "k")},
        "close_pool_spearman": best["close_spearman"], "close_pool_top1": best["close_top1"],
        "merge3_mae_points": merge3["held_mae_points"], "merge3_setting": merge3["estimator"],
        f"mae_points_at_{best['cost_reduction']:g}x": by["held_mae_points"],
        f"spearman_at_{best['cost_reduction']:g}x": by["held_spearman"],
        f"close_spearman_at_{best['cost_reduction']:g}x": by["close_spearman"],
        f"close_top1_at_{best['cost_reduction']:g}x": by["close_top1"],
        "full_search_test_accuracy": mean_test["full"], "irt_search_test_accuracy": mean_test["irt"],
        "irt_search_gap_points": 100 * (mean_test["full"] - mean_test["irt"]),
        "irt_search_item_share": share,
        "past_models": {r["model"]: r["val_accuracy"] for r in past_rows},
        "calibration": calibrations,
        "wall_s": time.perf_counter() - start,
    }
    print(f"\nBest past-runs setting at {best['cost_reduction']:g}x fewer items: {summary['best_setting']}: MAE "
          f"{summary['mae_points']:.2f} points, Spearman {summary['spearman']:.3f} (close pool {best['close_spearman']:.3f}, "
          f"top-1 {best['close_top1']:.2f}); MERGE3's best ({merge3['estimator']}) MAE {merge3['held_mae_points']:.2f}")
    print(f"IRT search: winner test {mean_test['irt']:.4f} vs full {mean_test['full']:.4f} (gap "
          f"{summary['irt_search_gap_points']:.2f} points) at {share:.3f} of the item evaluations; total "
          f"{summary['wall_s']:.0f}s")
    command = " ".join([COMMAND, *sys.argv[1:]])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "lm_irt", "command": command,
                               "rows": rows + [{"search": s} for s in searches], "summary": summary}, indent=1,
                              default=float) + "\n")
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
