"""Hugging Face candidates (issue 12): candidates built in place against save + reload, and evomerge's
multiple-choice scorer against lm-eval-harness's ``HFLM(pretrained=model)`` in-process.

Candidates: ``N_RECIPES`` seeded random layer-wise recipes (TIES or weighted average, parameters per
layer group x filter) over two "fine-tunes" of the model below (the base plus seeded noise of scale
``FT_NOISE``). Each is built two ways and scored on the same ``N_CANDIDATE_ITEMS`` items: in place into
one resident model (:class:`~evomerge.recipe.inplace.InPlaceBuilder`), and by the streaming merge into a
safetensors folder followed by ``AutoModelForCausalLM.from_pretrained``. ``in_place_speedup`` = save +
reload time over in-place time, each candidate's the better of two builds, summed over the candidates,
scoring excluded. A worker's one-time cost (loading the resident model, and the first build, which
reads the base and the task vectors into the cache) is ``in_place_setup_s``;
``in_place_speedup_with_setup`` counts it in. ``in_place_speedup_by_method``: the ratio per method
(TIES's own maths, which both paths do, weighs on its candidates). Every candidate's per-item ``acc``
and ``acc_norm`` must be identical on both paths (the run fails otherwise).

Scorer: same model, same items, same batch size.

The model is a seeded random Llama (about 7 M parameters) over a byte-level BPE tokenizer trained here
on the items' own text (pseudo-words; about 6,200 tokens); the items are 300 four-way multiple-choice questions with
contexts of 20-60 words. lm-eval scores them as ``output_type: multiple_choice`` does: one
``loglikelihood`` request ``(context, " " + choice)`` per choice, then ``acc`` = argmax of the
log-likelihoods and ``acc_norm`` = argmax of log-likelihood / len(choice)
(``ConfigurableTask.process_results``). Both runs are timed after one warm-up batch each; the
reported figures are the better of two timed runs. ``answers_identical`` is true when every item's
``acc`` and ``acc_norm`` agree with lm-eval's.

Run: ``OMP_NUM_THREADS=1 python benchmarks/hf_candidates.py``
"""

from __future__ import annotations

import itertools
import json
import os
import random
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from evomerge.items import MultipleChoiceFormat, load_items, make_scorer  # noqa: E402

OUT = Path(__file__).parent / "results" / "hf_candidates.json"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/hf_candidates.py"
N_ITEMS, N_CHOICES, BATCH, SEED = 300, 4, 32, 0
N_RECIPES, N_CANDIDATE_ITEMS, GROUPS, FT_NOISE = 8, 48, 2, 0.01
SYLLABLES = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]


def make_words(rng: random.Random, n: int = 4000) -> list[str]:
    """Pseudo-words of 1-4 syllables, enough of them that BPE learns a vocabulary of thousands of tokens."""
    return sorted({"".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4))) for _ in range(n)})


def make_items(path: Path, rng: random.Random) -> None:
    words = make_words(rng)
    with path.open("w") as f:
        for i in range(N_ITEMS):
            context = "Question: " + " ".join(rng.choice(words) for _ in range(rng.randint(20, 60))) + "?\nAnswer:"
            choices = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 4))) for _ in range(N_CHOICES)]
            while len(set(choices)) < N_CHOICES:
                choices = [c + " " + rng.choice(words) for c in choices]
            f.write(json.dumps({"question": context, "choices": choices, "answer": rng.randrange(N_CHOICES)}) + "\n")


def make_model(path: Path, texts: list[str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=8000, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    torch.manual_seed(SEED)
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=256, intermediate_size=640, num_hidden_layers=4, num_attention_heads=8,
                      num_key_value_heads=8, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(cfg).eval()
    return model, fast


def lm_eval_answers(lm, docs: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """lm-eval's loglikelihood requests for the docs, then its multiple_choice process_results."""
    from lm_eval.api.instance import Instance

    reqs = [Instance("loglikelihood", d, (d["question"], " " + c), j) for d in docs for j, c in enumerate(d["choices"])]
    lls = [ll for ll, _ in lm.loglikelihood(reqs, disable_tqdm=True)]
    acc, acc_norm = [], []
    for i, d in enumerate(docs):
        x = lls[i * N_CHOICES : (i + 1) * N_CHOICES]
        lengths = np.array([float(len(c)) for c in d["choices"]])
        acc.append(np.argmax(x) == d["answer"])
        acc_norm.append(np.argmax(x / lengths) == d["answer"])
    return np.array(acc), np.array(acc_norm)


def save_pair(root: Path, model, tok) -> tuple[Path, list[Path]]:
    """``root/base`` and two fine-tunes ``root/ft{t}`` (the base plus seeded noise), tokenizer beside each."""
    gen = torch.Generator().manual_seed(SEED + 1)
    dirs = []
    for name, noise in (("base", 0.0), ("ft0", FT_NOISE), ("ft1", FT_NOISE)):
        sd = {k: v + noise * torch.randn(v.shape, generator=gen) for k, v in model.state_dict().items()}
        model.save_pretrained(root / name, state_dict=sd)
        tok.save_pretrained(root / name)
        dirs.append(root / name)
    return dirs[0], dirs[1:]


def random_recipes(rng: random.Random) -> list[dict]:
    """Layer-wise TIES (density, lam) or weighted-average (weights) recipes, every cell drawn."""
    from evomerge.recipe.layerwise import FILTERS

    def cell(method: str) -> dict:
        if method == "ties":
            return {"density": round(rng.uniform(0.2, 1.0), 3), "lam": round(rng.uniform(0.5, 1.5), 3)}
        return {"weights": [round(rng.uniform(0.1, 1.0), 3) for _ in range(2)]}

    methods = [("ties", "average")[i % 2] for i in range(N_RECIPES)]
    return [{"kind": "layerwise", "base": "base", "models": ["ft0", "ft1"], "method": m, "groups": [{f: cell(m) for f in FILTERS} for _ in range(GROUPS)]}
            for m in methods]


def in_place_vs_reload(root: Path, model, tok, items) -> tuple[list[dict], dict]:
    """Every random recipe built in place and by save + reload, scored on ``items``; rows and summary."""
    from transformers import AutoModelForCausalLM

    from evomerge.io.tensors import TensorSource
    from evomerge.recipe.inplace import InPlaceBuilder
    from evomerge.recipe.layerwise import parse_layerwise
    from evomerge.recipe.stream import execute, plan_recipe

    base, fts = save_pair(root, model, tok)
    scorer = make_scorer(items)
    recipes = [parse_layerwise(r) for r in random_recipes(random.Random(SEED))]
    t0 = time.perf_counter()
    resident = AutoModelForCausalLM.from_pretrained(base).eval()
    builder = InPlaceBuilder(resident, TensorSource(base), {"ft0": TensorSource(fts[0]), "ft1": TensorSource(fts[1])})
    builder.build(recipes[0])
    setup_s = time.perf_counter() - t0
    build_s, reload_s, score_s = [], [], [0.0, 0.0]

    folders = itertools.count()

    def save_and_reload(r) -> torch.nn.Module:
        out = execute(plan_recipe(r.method, base, fts, params=r.resolver(builder.layers)), root / f"cand{next(folders)}", 1 << 30, progress=False)
        return AutoModelForCausalLM.from_pretrained(out).eval()

    for i, r in enumerate(recipes):
        build_s.append(timed(lambda: builder.build(r))[0])
        t0 = time.perf_counter()
        ours = scorer.score(resident, items, tokenizer=tok, device="cpu", batch_size=BATCH)
        score_s[0] += time.perf_counter() - t0

        seconds, reloaded = timed(lambda: save_and_reload(r))
        reload_s.append(seconds)
        t0 = time.perf_counter()
        theirs = scorer.score(reloaded, items, tokenizer=tok, device="cpu", batch_size=BATCH)
        score_s[1] += time.perf_counter() - t0
        for metric in ("acc", "acc_norm"):
            if not np.array_equal(ours.correct[metric], theirs.correct[metric]):
                sys.exit(f"candidate {i} ({r.method}): {metric} answers differ between in place and reloaded")
        print(f"candidate {i} {r.method:<8} in place {build_s[-1]:.3f} s, save + reload {reload_s[-1]:.3f} s, acc {ours.accuracy():.3f}")
        del reloaded
    rows = [
        {"candidates": "in place (InPlaceBuilder.build)", "n": N_RECIPES, "build_s": round(sum(build_s), 3),
         "per_candidate_s": round(sum(build_s) / N_RECIPES, 4), "setup_s": round(setup_s, 3), "score_s": round(score_s[0], 3)},
        {"candidates": "streaming merge + from_pretrained", "n": N_RECIPES, "build_s": round(sum(reload_s), 3),
         "per_candidate_s": round(sum(reload_s) / N_RECIPES, 4), "setup_s": 0.0, "score_s": round(score_s[1], 3)},
    ]
    by_method = {m: round(sum(t for t, r in zip(reload_s, recipes) if r.method == m) / sum(t for t, r in zip(build_s, recipes) if r.method == m), 2)
                 for m in sorted({r.method for r in recipes})}
    summary = {"in_place_speedup": round(sum(reload_s) / sum(build_s), 2), "in_place_speedup_by_method": by_method,
               "in_place_speedup_with_setup": round(sum(reload_s) / (setup_s + sum(build_s)), 2),
               "in_place_answers_identical": True,
               "in_place_setup_s": round(setup_s, 3), "candidates": N_RECIPES, "candidate_items": len(items), "layer_groups": GROUPS}
    return rows, summary


def timed(fn, repeats: int = 2):
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    import tempfile

    from lm_eval.models.huggingface import HFLM

    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mc.jsonl"
        make_items(path, rng)
        docs = [json.loads(line) for line in path.read_text().splitlines()]
        model, tok = make_model(Path(tmp), [d["question"] + " " + " ".join(d["choices"]) for d in docs])
        items = load_items(path, MultipleChoiceFormat(type="multiple_choice", context="question", choices="choices", gold="answer"))
        params = sum(p.numel() for p in model.parameters())
        scorer = make_scorer(items)
        candidate_rows, candidate_summary = in_place_vs_reload(Path(tmp), model, tok, items.subset(list(items.ids[:N_CANDIDATE_ITEMS])))
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=BATCH, device="cpu")
        # warm-up on a few items each
        scorer.score(model, items.subset(list(items.ids[:8])), tokenizer=tok, batch_size=BATCH)
        lm_eval_answers(lm, docs[:8])
        ours_s, ours = timed(lambda: scorer.score(model, items, tokenizer=tok, device="cpu", batch_size=BATCH))
        theirs_s, (acc, acc_norm) = timed(lambda: lm_eval_answers(lm, docs))
        print(f"evomerge {ours_s:.2f} s, lm-eval {theirs_s:.2f} s")
    identical = bool(np.array_equal(ours.correct["acc"], acc) and np.array_equal(ours.correct["acc_norm"], acc_norm))
    tokens = [len(tok.encode(d["question"])) for d in docs]
    rows = [
        {"scorer": "evomerge multiple_choice", "items": N_ITEMS, "requests": N_ITEMS * N_CHOICES, "wall_s": round(ours_s, 3),
         "items_per_s": round(N_ITEMS / ours_s, 1), "acc": float(ours.correct["acc"].mean()), "acc_norm": float(ours.correct["acc_norm"].mean())},
        {"scorer": "lm-eval HFLM.loglikelihood", "items": N_ITEMS, "requests": N_ITEMS * N_CHOICES, "wall_s": round(theirs_s, 3),
         "items_per_s": round(N_ITEMS / theirs_s, 1), "acc": float(acc.mean()), "acc_norm": float(acc_norm.mean())},
    ]
    summary = {
        **candidate_summary,
        "scorer_speedup_vs_lm_eval": round(theirs_s / ours_s, 2),
        "answers_identical": identical,
        "items": N_ITEMS, "choices": N_CHOICES, "batch_size": BATCH, "model_params": params, "vocab": len(tok),
        "context_tokens_mean": round(float(np.mean(tokens)), 1), "torch_threads": torch.get_num_threads(),
    }
    print(f"{'scorer':<30} {'wall_s':>8} {'items/s':>8} {'acc':>6} {'acc_norm':>9}")
    for r in rows:
        print(f"{r['scorer']:<30} {r['wall_s']:>8.2f} {r['items_per_s']:>8.1f} {r['acc']:>6.3f} {r['acc_norm']:>9.3f}")
    print(f"\n{'candidates':<36} {'n':>3} {'build_s':>8} {'per_cand_s':>10} {'setup_s':>8} {'score_s':>8}")
    for r in candidate_rows:
        print(f"{r['candidates']:<36} {r['n']:>3} {r['build_s']:>8.3f} {r['per_candidate_s']:>10.4f} {r['setup_s']:>8.3f} {r['score_s']:>8.3f}")
    rows = candidate_rows + rows
    print(json.dumps(summary, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "hf_candidates", "command": COMMAND, "rows": rows, "summary": summary}, indent=1) + "\n")
    if not identical:
        sys.exit(1)


if __name__ == "__main__":
    main()
