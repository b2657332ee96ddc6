"""How well the Llama's hidden states map onto GPT-2's in the LM family, per stitch point (issue 13).

For every stitch point of ``search_spaces/lm_cross_arch.yaml`` (Llama block ``i`` -> GPT-2 block
``j``) and each aligner, the map is fitted on token rows of 80% of the seven skills' training texts
(:class:`~evomerge.recipe.stitch_view.FitTexts`, 200 texts a skill) and scored two ways:

- ``r2``: the share of GPT-2's activation variance at block ``j`` the map explains on the held-out 20%
  of texts (``1 - Σ||b - T(a)||² / Σ||b - mean b||²``);
- ``path``: the stitched path alone (trunk weight 0: the Llama's front, the map, GPT-2's tail) on the
  first ``--items`` validation items of GPT-2's generation skills (upper, shift), the skills the stitch
  exists to bring.

Also timed: greedy decoding by a stitch with each model's key/value cache against recomputing the whole
sequence at every step (``cache_speedup``, the same tokens checked).

The control is GPT-2 stitched to itself (block ``j`` -> block ``j``, and ``j - 1`` -> ``j``, skipping a
block) through the same aligner: it shows that GPT-2's tail runs on a mapped residual when the map is good.
The ratio printed is the Llama->GPT-2 path accuracy over the control's.

Run: ``OMP_NUM_THREADS=1 python benchmarks/lm_stitch_fit.py`` (the LM family built first).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

torch.set_num_threads(1)

from evomerge.core.align import ConditionPair, make_aligner  # noqa: E402
from evomerge.items import load_items, make_scorer  # noqa: E402
from evomerge.items.scorers.lm import left_pad, pad_id  # noqa: E402
from evomerge.recipe.stitch_view import FitTexts, LMPath, PerToken, StitchedLM  # noqa: E402
from evomerge.sources.adapters import HFAdapter  # noqa: E402
from evomerge.zoo.lm.catalog import LMZoo  # noqa: E402
from evomerge.zoo.lm.tokenizer import char_tokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "lm_stitch_fit.json"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/lm_stitch_fit.py"
SOURCES = [f"model.layers.{i}" for i in range(4)]
TARGETS = [f"transformer.h.{j}" for j in range(3)]
GENERATION = ("upper", "shift")


def rows(fit: FitTexts, name: str, adapter: HFAdapter, layer: str, texts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows of the first ``texts`` training texts of every skill, split 80/20 by text."""
    train, test = [], []
    cut = texts * 4 // 5
    for task in fit.pairs:
        with torch.no_grad():
            for k, (inputs, _) in enumerate(fit.batches(task, texts)):
                h = adapter.forward_to(dict(inputs), layer)
                for r in range(len(h)):
                    (train if k * fit.batch_size + r < cut else test).append(h[r][inputs["attention_mask"][r].bool()])
    return torch.cat(train).float(), torch.cat(test).float()


def fitted(aligner: str, a: tuple[torch.Tensor, torch.Tensor], b: tuple[torch.Tensor, torch.Tensor]) -> tuple[PerToken, float]:
    al = make_aligner(aligner)
    al.fit([ConditionPair(a[0], b[0])], kinds=("vector", "vector"))
    module = al.as_module(None)
    with torch.no_grad():
        res = (b[1] - module(a[1])).pow(2).sum()
    return PerToken(module), float(1 - res / (b[1] - b[1].mean(0)).pow(2).sum())


def path_accuracy(trunk: HFAdapter, src: str, stitch: PerToken, branch: HFAdapter, dst: str, items: dict[str, Any]) -> dict[str, float]:
    model = StitchedLM(trunk, 0.0, [LMPath(branch, src, stitch, dst, 1.0)]).eval()
    with torch.no_grad():
        return {s: float(make_scorer(its).score(model, its, tokenizer=char_tokenizer(), batch_size=128).correct["exact_match"].mean())
                for s, its in items.items()}


def cache_speedup(llama: HFAdapter, gpt2: HFAdapter, fit: FitTexts, items: dict[str, Any]) -> dict[str, Any]:
    """Greedy decoding of the generation skills' prompts (12 new tokens, no stop) by a stitch routing both paths
    (ridge, Llama block 1 -> GPT-2 block 0, learned router): with each model's key/value cache, and recomputing
    the whole sequence at every step (what the view did before it kept caches)."""
    from transformers import StoppingCriteriaList

    from evomerge.recipe.stitch_view import fit_router

    a, b = fitted("ridge", rows(fit, "llama", llama, "model.layers.1", 50), rows(fit, "gpt2", gpt2, "transformer.h.0", 50))
    model = StitchedLM(llama, 1.0, [LMPath(gpt2, "model.layers.1", a, "transformer.h.0", 1.0)], routing="learned")
    model.gate = fit_router(model, fit, list(fit.pairs), 20, 50, 0)
    prompts = [i.fields["prompt"] for its in items.values() for i in its]
    ids, mask = left_pad([fit.tokenizer.encode(p) for p in prompts], pad_id(fit.tokenizer))
    width = ids.shape[1]
    out, secs = {}, {}
    for cached in (True, False):
        t = time.perf_counter()
        out[cached] = model.generate(ids, mask, max_length=width + 12, stopping_criteria=StoppingCriteriaList(),
                                     pad_token_id=0, use_cache=cached)
        secs[cached] = time.perf_counter() - t
    return {"prompts": len(prompts), "cached_s": secs[True], "uncached_s": secs[False],
            "speedup": secs[False] / secs[True], "same_tokens": bool(torch.equal(out[True], out[False]))}


def main() -> None:
    from transformers import AutoModelForCausalLM

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=100, help="validation items per skill for the path accuracy")
    p.add_argument("--texts", type=int, default=200, help="training texts per skill for the fit (80%) and R² (20%)")
    p.add_argument("--aligners", nargs="+", default=["ridge", "procrustes"])
    args = p.parse_args()
    start = time.perf_counter()
    zoo = LMZoo(seed=0)
    llama, gpt2 = (HFAdapter.from_model(AutoModelForCausalLM.from_pretrained(zoo.model_dir(m)).eval()) for m in ("lm-base", "lm-gpt2"))
    pairs, items = {}, {}
    for s in zoo.spec.all_skills():
        files = zoo.items(s)
        loaded = load_items(files.path, files.format, seed=0, name=s)
        pairs[s] = loaded.split("train").answered()
        if s in GENERATION:
            val = loaded.split("val")
            items[s] = val.subset(list(val.ids[: args.items]))
    fit = FitTexts(pairs, char_tokenizer())
    cache: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def acts(name: str, adapter: HFAdapter, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        if (name, layer) not in cache:
            cache[(name, layer)] = rows(fit, name, adapter, layer, args.texts)
        return cache[(name, layer)]

    out = []
    for aligner in args.aligners:
        for dst in TARGETS:
            controls = [(dst, dst)] + ([(TARGETS[TARGETS.index(dst) - 1], dst)] if dst != TARGETS[0] else [])
            for c_src, c_dst in controls:
                stitch, r2 = fitted(aligner, acts("gpt2", gpt2, c_src), acts("gpt2", gpt2, c_dst))
                acc = path_accuracy(gpt2, c_src, stitch, gpt2, c_dst, items)
                out.append({"aligner": aligner, "from": f"gpt2 {c_src}", "to": c_dst, "r2": r2, "path": acc, "control": True})
            for src in SOURCES:
                stitch, r2 = fitted(aligner, acts("llama", llama, src), acts("gpt2", gpt2, dst))
                acc = path_accuracy(llama, src, stitch, gpt2, dst, items)
                out.append({"aligner": aligner, "from": f"llama {src}", "to": dst, "r2": r2, "path": acc, "control": False})
            print(f"[{time.perf_counter() - start:5.0f}s] {aligner} -> {dst} done", flush=True)
    print(f"\n{'aligner':<11} {'from':<22} {'to':<16} {'R2':>6}  " + "  ".join(f"{s:>6}" for s in GENERATION))
    for r in out:
        print(f"{r['aligner']:<11} {r['from']:<22} {r['to']:<16} {r['r2']:6.3f}  " + "  ".join(f"{r['path'][s]:6.3f}" for s in GENERATION))
    speed = cache_speedup(llama, gpt2, fit, items)
    print(f"\ngreedy decoding of {speed['prompts']} prompts by a learned-router stitch: cached {speed['cached_s']:.2f}s, "
          f"whole sequence each step {speed['uncached_s']:.2f}s (x{speed['speedup']:.1f}); same tokens: {speed['same_tokens']}")
    llama_rows = [r for r in out if not r["control"]]
    control = [r for r in out if r["control"] and r["from"].endswith(r["to"])]
    best = max(llama_rows, key=lambda r: statistics.fmean(r["path"].values()))
    summary = {
        "best_llama_r2": max(r["r2"] for r in llama_rows),
        "best_llama_path_accuracy": statistics.fmean(best["path"].values()),
        "best_llama_stitch": f"{best['aligner']} {best['from']} -> {best['to']}",
        "control_r2_min": min(r["r2"] for r in control),
        "control_path_accuracy_mean": statistics.fmean(statistics.fmean(r["path"].values()) for r in control),
        "path_accuracy_ratio_llama_to_control": statistics.fmean(best["path"].values())
        / max(1e-9, statistics.fmean(statistics.fmean(r["path"].values()) for r in control)),
        "cache_speedup": speed["speedup"],
        "wall_s": round(time.perf_counter() - start, 1),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "lm_stitch_fit", "command": COMMAND, "rows": out, "summary": summary}, indent=1) + "\n")
    print(f"\nsummary: {json.dumps(summary, indent=1)}\nwrote {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
