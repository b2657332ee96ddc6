"""Weight-space merging on the built-in language-model family (``evomerge zoo build --family lm``).

One Llama base pretrained on a mixture of character-level skills and one fine-tune per skill. Each
method merges all fine-tunes over the base (every tensor, embeddings and LM head included) at its
papers' default settings; the merged model is scored on every skill's test items with evomerge's
scorers (greedy exact match; lm-eval's multiple-choice ``acc``).

Defaults: average (equal weights); task arithmetic lambda = 1 (Ilharco et al. 2023, the naive sum);
TIES density 0.2, lambda = 1 (Yadav et al. 2023); DARE drop rate 0.9 with rescaling, lambda = 1
(Yu et al. 2024); TSV-M alpha = 1, rank 1/T of each matrix's (Gargiulo et al. 2025).

MASS (Crisostomi et al. 2025) routes each prompt (a multiple-choice context alone) to the fine-tune
whose update of the routing layer's weight explains the prompt's mean input to that layer best (top-1)
and answers with the TSV-M merge of the selected fine-tunes (:mod:`evomerge.recipe.mass_view`). Its
defaults here: the last block's attention query projection as the routing layer (the residual stream
after all but one block), route rank 4, top-1, TSV-M alpha 1 at the default rank (a single selected
task is its fine-tune). ``MASS tuned`` picks the routing layer and route rank from ``MASS_GRID`` on
validation. Each MASS row also gives ``routed_own``: per skill, the share of its test items routed to
its own fine-tune.

Tuned rows (``<method> tuned``): each method's main coefficient chosen on the first ``--tune-items``
validation items of every skill (mean accuracy) from ``TUNING`` (task arithmetic, TIES and DARE:
lambda; TSV-M: alpha; average has none), then scored on test like the defaults.

Normalized accuracy (TSV paper, after Ilharco et al.): merged accuracy / the fine-tune's accuracy on
the same skill, averaged over skills; its ``sd`` is over family seeds (null with one seed).

Run: ``OMP_NUM_THREADS=1 python benchmarks/lm_merging.py [--seeds 0 1 2]`` (each family is built if missing).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from evomerge.core.merge import merge
from evomerge.zoo.lm.catalog import LMZoo, score_skills
from evomerge.zoo.lm.family import BASE, model_id
from evomerge.zoo.lm.tokenizer import char_tokenizer

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/lm_merging.py"
OUT = Path(__file__).parent / "results" / "lm_merging.json"
DEFAULTS: dict[str, dict[str, Any]] = {
    "average": {},
    "task_arithmetic": {"lam": 1.0},
    "ties": {"density": 0.2, "lam": 1.0},
    "dare": {"p": 0.9, "lam": 1.0, "seed": 0},
    "tsv": {"alpha": 1.0},
}
#: MASS's routing at its defaults, and the grid its tuned row picks from ({block} counts from 0).
MASS_DEFAULT = {"layer": "model.layers.{last}.self_attn.q_proj", "route_rank": 4, "top_k": 1}
MASS_GRID = [{"layer": f"model.layers.{{{block}}}.{module}", "route_rank": r, "top_k": 1}
             for block in ("mid", "last") for module in ("self_attn.q_proj", "mlp.gate_proj") for r in (4, 16)]
#: The coefficient each tuned row searches, and its grid.
TUNING: dict[str, tuple[str, tuple[float, ...]]] = {
    "task_arithmetic": ("lam", (0.2, 0.3, 0.4, 0.5, 0.7)),
    "ties": ("lam", (0.3, 0.5, 0.7, 1.0, 1.5)),
    "dare": ("lam", (0.2, 0.3, 0.5, 0.7, 1.0)),
    "tsv": ("alpha", (0.3, 0.5, 0.7, 1.0, 1.5)),
}


def val_scorer(files: list[Any], seed: int, n: int) -> Any:
    """``score(model) -> mean accuracy`` over the first ``n`` validation items of every skill."""
    from evomerge.items import load_items, make_scorer

    sets = []
    for f in files:
        val = load_items(f.path, f.format, seed=seed, name=f.skill).split("val")
        sets.append((val.subset(list(val.ids)[:n]), f.metric))
    scorers, tokenizer = [make_scorer(items) for items, _ in sets], char_tokenizer()

    def score(model: Any) -> float:
        return statistics.fmean(float(sc.score(model, items, tokenizer=tokenizer, batch_size=128).correct[metric].mean())
                                for sc, (items, metric) in zip(scorers, sets))

    return score


def family_rows(seed: int, tune_items: int) -> list[dict[str, Any]]:
    """The rows of one family seed: the base, each fine-tune, and each method's merge."""
    import transformers
    from transformers import LlamaForCausalLM

    transformers.utils.logging.disable_progress_bar()
    zoo = LMZoo(seed=seed)
    zoo.build(workers=2, progress=True)
    skills = list(zoo.spec.skills)
    files = [zoo.items(s) for s in skills]
    own = {s: zoo.record(model_id(s))["skills"][s]["test"] for s in skills}
    model = LlamaForCausalLM.from_pretrained(str(zoo.model_dir(model_id(BASE))), local_files_only=True).eval()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    states = [LlamaForCausalLM.from_pretrained(str(zoo.model_dir(model_id(s))), local_files_only=True).state_dict()
              for s in skills]

    def row(method: str, params: dict[str, Any], test: dict[str, float], merge_s: float = 0.0) -> dict[str, Any]:
        return {"seed": seed, "method": method, "params": params, "per_skill": test,
                "abs_accuracy": sum(test.values()) / len(test),
                "normalized_accuracy": sum(test[s] / own[s] for s in skills) / len(skills), "merge_s": round(merge_s, 3)}

    taus = [torch.cat([(st[k] - base[k]).flatten().float() for k in base if base[k].is_floating_point()]) for st in states]
    pairs = [(i, j) for i in range(len(taus)) for j in range(i + 1, len(taus))]
    interference = {  # what the methods' premises are about: overlapping directions and sign conflicts
        "task_vector_cosine": {f"{skills[i]}/{skills[j]}": round(float(torch.nn.functional.cosine_similarity(taus[i], taus[j], 0)), 4)
                               for i, j in pairs},
        "sign_conflict_share": {f"{skills[i]}/{skills[j]}": round(float(((taus[i] * taus[j]) < 0).float().mean()), 4)
                                for i, j in pairs},
    }
    rows = [{**row("fine-tuned (each its own)", {}, own), "interference": interference},
            row("base", {}, {s: v["test"] for s, v in zoo.record(model_id(BASE))["skills"].items()})]
    for method, params in DEFAULTS.items():
        start = time.perf_counter()
        merged = merge(method, base, states, params)
        seconds = time.perf_counter() - start
        model.load_state_dict(merged)
        scores = score_skills(model, char_tokenizer(), files, seed)
        rows.append(row(method, params, {s: v["test"] for s, v in scores.items()}, seconds))
    score_val = val_scorer(files, seed, tune_items)
    for method, (coef, grid) in TUNING.items():
        tried = []
        for value in grid:
            params = {**DEFAULTS[method], coef: value}
            model.load_state_dict(merge(method, base, states, params))
            tried.append((score_val(model), value, params))
        val_acc, value, params = max(tried, key=lambda t: t[0])
        model.load_state_dict(merge(method, base, states, params))
        scores = score_skills(model, char_tokenizer(), files, seed)
        rows.append({**row(f"{method} tuned", params, {s: v["test"] for s, v in scores.items()}),
                     "tuned": {coef: value, "val_accuracy": round(val_acc, 4), "grid": list(grid)}})
    return rows + mass_rows(zoo, skills, files, seed, score_val, row)


def mass_rows(zoo: LMZoo, skills: list[str], files: list[Any], seed: int, score_val: Any, row: Any) -> list[dict[str, Any]]:
    """MASS at its defaults and tuned on validation over ``MASS_GRID`` (see the module docstring), each
    with the share of every skill's test items routed to its own fine-tune."""
    from transformers import LlamaForCausalLM

    from evomerge.io.tensors import TensorSource
    from evomerge.items import load_items
    from evomerge.recipe.inplace import InPlaceBuilder
    from evomerge.recipe.schema import parse_recipe

    base_dir = zoo.model_dir(model_id(BASE))
    model = LlamaForCausalLM.from_pretrained(str(base_dir), local_files_only=True).eval()
    builder = InPlaceBuilder(model, TensorSource(base_dir), {s: TensorSource(zoo.model_dir(model_id(s))) for s in skills})
    blocks = {"mid": model.config.num_hidden_layers // 2 - 1, "last": model.config.num_hidden_layers - 1}
    tests = [[p for p, _ in load_items(f.path, f.format, seed=seed, name=f.skill).split("test").answered()] for f in files]

    def view(routing: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        spec = {**routing, "layer": routing["layer"].format(**blocks)}
        recipe = {"kind": "weights", "base": BASE, "models": skills, "method": "tsv", "params": {"alpha": 1.0},
                  "mass": {"enabled": True, **spec}}
        return parse_recipe(recipe).routed_view(builder), spec

    def scored(name: str, routing: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        module, spec = view(routing)
        test = {s: v["test"] for s, v in score_skills(module, char_tokenizer(), files, seed).items()}
        own = {s: round(statistics.fmean(r == (i,) for r in module.route_texts(t, char_tokenizer())), 4)
               for i, (s, t) in enumerate(zip(skills, tests))}
        return {**row(name, {"alpha": 1.0, "mass": spec}, test), "routed_own": own, **extra}

    tried = [(score_val(view(r)[0]), r) for r in MASS_GRID]
    val_acc, best = max(tried, key=lambda t: t[0])
    grid = [{**view(r)[1], "val_accuracy": round(v, 4)} for v, r in tried]
    return [scored("mass", MASS_DEFAULT, {}),
            scored("mass tuned", best, {"tuned": {"val_accuracy": round(val_acc, 4), "grid": grid}})]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="family seeds (each built if missing)")
    parser.add_argument("--tune-items", type=int, default=250, help="validation items per skill for the tuned rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [r for seed in args.seeds for r in family_rows(seed, args.tune_items)]
    norm: dict[str, dict[int, float]] = {}
    for r in rows:
        norm.setdefault(r["method"], {})[r["seed"]] = r["normalized_accuracy"]
    summary = {
        "normalized_accuracy": {m: statistics.fmean(v.values()) for m, v in norm.items()},
        "normalized_accuracy_sd": {m: statistics.stdev(v.values()) if len(v) > 1 else None for m, v in norm.items()},
        "seeds": args.seeds,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    command = COMMAND + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1, 2] else "")
    command += f" --tune-items {args.tune_items}" if args.tune_items != 250 else ""
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "lm_merging", "command": command, "rows": rows, "summary": summary},
                              indent=1) + "\n")
    for m, v in summary["normalized_accuracy"].items():
        sd = summary["normalized_accuracy_sd"][m]
        print(f"{m:<28} normalized {v:.3f}" + (f" ± {sd:.3f}" if sd is not None else ""))


if __name__ == "__main__":
    main()
