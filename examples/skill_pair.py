"""Write a worked example for "merge my two fine-tunes of one base on my item files".

    python examples/skill_pair.py DIR

writes, in about half a minute on one core, ``DIR/base``, ``DIR/up`` and ``DIR/down`` (a tiny
Llama base and two skill fine-tunes, each a Hugging Face folder with its tokenizer), the item files
``DIR/mc.jsonl`` (multiple choice) and ``DIR/gen.jsonl`` (generation), 256 items each, and ``DIR/space.yaml``: a
layer-wise search over the two fine-tunes (task arithmetic with a weight per layer group x
filter x model, TIES with a density per cell, or TSV-M) scored on both files. The models and items
come from :mod:`tests.hf_skills` (run from a source checkout); replace them with your own folders
and files, keeping the space's shape.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hf_skills import lm_pair  # noqa: E402

SPACE = {
    "name": "skill_pair",
    "seed": 0,
    "models": [{"name": "base", "source": "hf", "path": "base"},
               {"name": "up", "source": "hf", "path": "up"},
               {"name": "down", "source": "hf", "path": "down"}],
    "tasks": [
        {"name": "mc", "items": "mc.jsonl", "metric": "acc",
         "format": {"type": "multiple_choice", "context": "question", "choices": "choices", "gold": "answer",
                    "target_delimiter": ""}},
        {"name": "gen", "items": "gen.jsonl", "metric": "exact_match",
         "format": {"type": "generation", "until": ["\n"], "max_gen_toks": 6}},
    ],
    "recipe": {"kind": "layerwise", "base": "base", "models": ["up", "down"], "method": {"gene": "method"},
               "groups": 2, "grid": {"density": {"gene": "density"}, "weights": {"gene": "weights"}},
               "params": {"lam": {"gene": "lam"}, "rank": {"gene": "rank"}}},
    "genes": [{"name": "method", "type": "categorical", "choices": ["task_arithmetic", "ties", "tsv"]},
              {"name": "weights", "type": "float", "low": 0.0, "high": 1.2, "shape": [2, 3, 2],
               "when": {"method": "task_arithmetic"}},
              {"name": "density", "type": "float", "low": 0.2, "high": 1.0, "shape": [2, 3], "when": {"method": "ties"}},
              {"name": "lam", "type": "float", "low": 0.5, "high": 1.5, "when": {"method": "ties"}},
              {"name": "rank", "type": "int", "low": 1, "high": 8, "when": {"method": "tsv"}}],
    "objectives": [{"name": "acc", "metric": "accuracy", "direction": "max"}],
    "engine": {"name": "optuna_tpe", "population": 8},
    "budget": {"evaluations": 40},
}


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    root.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    lm_pair(root, items=256)
    (root / "space.yaml").write_text(yaml.safe_dump(SPACE, sort_keys=False))
    print(f"wrote {root}/{{base,up,down,mc.jsonl,gen.jsonl,space.yaml}}")


if __name__ == "__main__":
    main()
