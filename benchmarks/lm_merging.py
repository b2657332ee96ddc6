"""Weight-space merging on the built-in language-model family (``evomerge zoo build --family lm``).

One Llama base pretrained on a mixture of character-level skills and one fine-tune per skill. Each
method merges all fine-tunes over the base (every tensor, embeddings and LM head included) at its
papers' default settings; the merged model is scored on every skill's test items with evomerge's
scorers (greedy exact match; lm-eval's multiple-choice ``acc``).

Defaults: average (equal weights); task arithmetic lambda = 1 (Ilharco et al. 2023, the naive sum);
TIES density 0.2, lambda = 1 (Yadav et al. 2023); DARE drop rate 0.9 with rescaling, lambda = 1
(Yu et al. 2024); TSV-M alpha = 1, rank 1/T of each matrix's (Gargiulo et al. 2025).

Normalized accuracy (TSV paper, after Ilharco et al.): merged accuracy / the fine-tune's accuracy on
the same skill, averaged over skills; its ``sd`` is over family seeds (null with one seed).

Run: ``OMP_NUM_THREADS=1 python benchmarks/lm_merging.py [--seeds 0 1 2]`` (each family built first).
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


def family_rows(seed: int) -> list[dict[str, Any]]:
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

    rows = [row("fine-tuned (each its own)", {}, own),
            row("base", {}, {s: v["test"] for s, v in zoo.record(model_id(BASE))["skills"].items()})]
    for method, params in DEFAULTS.items():
        start = time.perf_counter()
        merged = merge(method, base, states, params)
        seconds = time.perf_counter() - start
        model.load_state_dict(merged)
        scores = score_skills(model, char_tokenizer(), files, seed)
        rows.append(row(method, params, {s: v["test"] for s, v in scores.items()}, seconds))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="family seeds (each built if missing)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    rows = [r for seed in args.seeds for r in family_rows(seed)]
    norm: dict[str, dict[int, float]] = {}
    for r in rows:
        norm.setdefault(r["method"], {})[r["seed"]] = r["normalized_accuracy"]
    summary = {
        "normalized_accuracy": {m: statistics.fmean(v.values()) for m, v in norm.items()},
        "normalized_accuracy_sd": {m: statistics.stdev(v.values()) if len(v) > 1 else None for m, v in norm.items()},
        "seeds": args.seeds,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    command = COMMAND + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0] else "")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "lm_merging", "command": command, "rows": rows, "summary": summary},
                              indent=1) + "\n")
    for m, v in summary["normalized_accuracy"].items():
        print(f"{m:<28} normalized {v:.3f}")


if __name__ == "__main__":
    main()
