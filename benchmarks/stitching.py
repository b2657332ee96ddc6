"""Functional alignment and stitching on the built-in zoo (issue 3; seed 002 §3.6 ablations).

For each pair (A's front -> map -> B's back) on its evaluation task:

1. Stitch points from the layer map (linear CKA per class condition, Hungarian, rank ratio):
   A's first, middle and last hidden layer (early / middle / late), each with its matched B layer.
2. Zero-shot accuracy of every registered aligner at every point, unconditioned.
3. At the best point (chosen on the validation split): conditioning none / class / transformation.
4. Tuning: stitch-tuned (only the map trains) and partial fine-tune (map + B's next layer), for the
   best zero-shot aligner at the best point, and for rank-2 / rank-4 / rank-8 maps at the late point (the
   low-parameter stitches).
5. Held-out conditions: a map fitted on class conditions 0-4 only, scored on classes 5-9, against
   a map fitted on all ten classes (and unconditioned fits on the same items).
6. Fit time of our closed-form CCA and Procrustes against scikit-learn's ``CCA`` and SciPy's
   ``orthogonal_procrustes`` on real activations (PCA to d = 128), n = 2000.

Accuracies are on the test split; choices (best point, best aligner) use the validation split.
P_rel = stitched / max(source accuracies) on the same task. Maps are fitted on the training split.

Run: ``OMP_NUM_THREADS=1 python benchmarks/stitching.py``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

torch.set_num_threads(1)

from scipy.linalg import orthogonal_procrustes  # noqa: E402
from sklearn.cross_decomposition import CCA as SkCCA  # noqa: E402

from evomerge.core.align import ALIGNERS, ConditionPair, make_aligner  # noqa: E402
from evomerge.core.align.cca import cca  # noqa: E402
from evomerge.core.align.procrustes import orthogonal_procrustes as our_procrustes  # noqa: E402
from evomerge.core.matching import layer_map  # noqa: E402
from evomerge.core.probe import ActivationCache, ProbeSet, class_probes, probe, task_probe  # noqa: E402
from evomerge.core.stitch import condition_pairs, fit_stitch, partial_finetune, tune_stitch  # noqa: E402
from evomerge.data.tasks import TaskData, load_task, parse_task_key  # noqa: E402
from evomerge.evaluate import accuracy  # noqa: E402
from evomerge.zoo.catalog import Zoo  # noqa: E402

OUT = Path(__file__).parent / "results" / "stitching.json"
COMMAND = "OMP_NUM_THREADS=1 python benchmarks/stitching.py"

# (kind, A: front, B: back, evaluation task)
PAIRS = [
    ("same arch, other seed", "cnn-mnist1d", "cnn-mnist1d-s1", "mnist1d/all"),
    ("MLP<->CNN", "cnn-digits", "mlp-digits", "digits/all"),
    ("MLP<->CNN", "mlp-digits", "cnn-digits", "digits/all"),
    ("MLP<->CNN", "cnn-mnist1d", "mlp-mnist1d", "mnist1d/all"),
    ("CNN<->transformer", "cnn-mnist1d", "tf-mnist1d", "mnist1d/all"),
    ("CNN<->transformer", "tf-digits", "cnn-digits", "digits/all"),
    ("related distributions", "mlp-digits-lo", "cnn-digits-hi", "digits/classes_5_9"),
]
#: Input transformations used as conditions (views of the same training items).
VIEWS = {"mnist1d": ["all", "noise", "negate"], "digits": ["all", "noise", "shift", "flip"]}
#: Fast settings for the iterative aligners.
PARAMS: dict[str, dict[str, Any]] = {
    "ot_emd": {"max_points": 800},
    "ot_sinkhorn": {"max_points": 400},
    "gromov": {"max_points": 250},
    "mlp": {"epochs": 8, "hidden": 64},
    "lowrank": {"rank": 16},
}
COND_ALIGNERS = ["ridge", "procrustes", "cca", "ot_emd"]
MAX_ITEMS = 1500  # items per fit (per view for transformation conditioning)
TUNE = {"epochs": 6, "lr": 2e-3, "batch_size": 128}


def probes_for(cond: str, train: TaskData) -> list[ProbeSet]:
    if cond == "none":
        return [task_probe(train, "pooled", MAX_ITEMS)]
    if cond == "class":
        return class_probes(train, per_class=MAX_ITEMS // 10)
    classes = torch.unique(train.y)
    out = []
    for view in VIEWS[train.dataset]:
        t = load_task(train.dataset, view, "train")
        idx = torch.nonzero(torch.isin(t.y, classes)).flatten()[: MAX_ITEMS // len(VIEWS[train.dataset])]
        out.append(ProbeSet(f"view_{view}", t.x[idx], tuple(t.item_ids[i] for i in idx.tolist()), t.y[idx]))
    return out


def stitch_points(zoo: Zoo, a: str, b: str, train: TaskData, cache: ActivationCache) -> tuple[dict[str, tuple[str, str]], Any]:
    """Early / middle / late layer of A (no head) with its matched B layer from the layer map."""
    probes = class_probes(train, per_class=40)
    ad_a, ad_b = zoo.adapter(a), zoo.adapter(b)
    la = [n for n in ad_a.layer_names if n != "head"]
    lb = [n for n in ad_b.layer_names if n != "head"]
    lm = layer_map(probe(a, ad_a, probes, la, cache), probe(b, ad_b, probes, lb, cache), theta=0.0, model_a=a, model_b=b)
    matched = {p.layer_a: p.layer_b for p in lm.points}
    mean_cka = np.mean([lm.cka[c] for c in lm.cka], axis=0)
    out = {}
    for depth, i in (("early", 0), ("middle", len(la) // 2), ("late", len(la) - 1)):
        out[depth] = (la[i], matched.get(la[i], lb[int(mean_cka[i].argmax())]))
    return out, lm


def evaluate(model: Any, val: TaskData, test: TaskData) -> tuple[float, float]:
    return accuracy(model, val), accuracy(model, test)


def main() -> None:
    start = time.perf_counter()
    zoo = Zoo(seed=0)
    zoo.build()
    cache = ActivationCache()
    rows: list[dict[str, Any]] = []

    def row(section: str, **kw: Any) -> dict[str, Any]:
        r = {"section": section, **kw}
        rows.append(r)
        return r

    for kind, a, b, task_key in PAIRS:
        ds, cond_name = parse_task_key(task_key)
        train, val, test = (load_task(ds, cond_name, s) for s in ("train", "val", "test"))
        ad_a, ad_b = zoo.adapter(a), zoo.adapter(b)
        src_test = max(accuracy(ad_a.module, test), accuracy(ad_b.module, test))
        base = {"pair": f"{a}->{b}", "kind": kind, "task": task_key,
                "acc_a": round(accuracy(ad_a.module, test), 4), "acc_b": round(accuracy(ad_b.module, test), 4)}
        points, _ = stitch_points(zoo, a, b, train, cache)

        def pairs_for(cond: str, la: str, lb: str, tr: TaskData = train) -> list[ConditionPair]:
            return condition_pairs(a, ad_a, la, b, ad_b, lb, probes_for(cond, tr), cache)

        def build(aligner: str, depth: str, cond: str, params: dict | None = None) -> tuple[Any, float]:
            la, lb = points[depth]
            pairs = pairs_for(cond, la, lb)
            t0 = time.perf_counter()
            model = fit_stitch(make_aligner(aligner, **(params or PARAMS.get(aligner, {}))), ad_a, la, ad_b, lb, pairs)
            return model, time.perf_counter() - t0

        def scored(section: str, model: Any, aligner: str, depth: str, cond: str, tuning: str, **extra: Any) -> dict:
            la, lb = points[depth]
            acc_val, acc_test = evaluate(model, val, test)
            return row(section, **base, layers=f"{depth}:{la}->{lb}", aligner=aligner, conditioning=cond, tuning=tuning,
                       val_acc=round(acc_val, 4), test_acc=round(acc_test, 4), p_rel=round(acc_test / src_test, 4),
                       stitch_params=model.stitch_params, stitch_share=round(model.stitch_share, 4), **extra)

        def zero_shot(section: str, aligner: str, depth: str, cond: str) -> dict:
            model, fit_s = build(aligner, depth, cond)
            return scored(section, model, aligner, depth, cond, "zero-shot", fit_s=round(fit_s, 3))

        # 2. every aligner at every point, unconditioned
        ablation = [zero_shot("aligner x layer", al, depth, "none") for depth in points for al in ALIGNERS.names()]
        best = max(ablation, key=lambda r: r["val_acc"])
        depth = best["layers"].split(":")[0]
        # 3. conditioning at the best point
        for al in COND_ALIGNERS:
            for cond in ("class", "transformation"):
                zero_shot("conditioning", al, depth, cond)
        # 4. tuning: the best zero-shot aligner at the best point; rank-2/4/8 maps at the late point
        variants = [(best["aligner"], depth, None)] + [("lowrank", "late", {"rank": r}) for r in (2, 4, 8)]
        for al, at, params in variants:
            label = al + "".join(f"({k}={v})" for k, v in (params or {}).items())
            model, fit_s = build(al, at, "none", params)
            scored("tuning", model, label, at, "none", "zero-shot", fit_s=round(fit_s, 3))
            pf, res = partial_finetune(model, train, blocks=1, **TUNE)  # on copies; model stays zero-shot
            scored("tuning", pf, label, at, "none", "partial fine-tune", trained_params=res.trained_params,
                   trained_share=round(res.trained_params / pf.num_params, 4), sources_unchanged=res.sources_unchanged)
            res = tune_stitch(model, train, **TUNE)
            scored("tuning", model, label, at, "none", "stitch-tuned", trained_params=res.trained_params,
                   sources_unchanged=res.sources_unchanged)
        print(f"[{time.perf_counter() - start:6.1f}s] {a}->{b} done", file=sys.stderr)

    # 5. held-out conditions: fit on classes 0-4, score on classes 5-9
    for a, b, ds in (("cnn-digits", "mlp-digits", "digits"), ("mlp-digits-lo", "cnn-digits-hi", "digits"),
                     ("cnn-mnist1d", "tf-mnist1d", "mnist1d")):
        ad_a, ad_b = zoo.adapter(a), zoo.adapter(b)
        train_all = load_task(ds, "all", "train")
        points, _ = stitch_points(zoo, a, b, train_all, cache)
        la, lb = points["late"]
        lo_test, hi_test = load_task(ds, "classes_0_4", "test"), load_task(ds, "classes_5_9", "test")
        src = max(accuracy(ad_a.module, hi_test), accuracy(ad_b.module, hi_test))
        per_class = class_probes(train_all, per_class=MAX_ITEMS // 10)
        lo_items = load_task(ds, "classes_0_4", "train")
        fits = {
            "class 0-4 (held out 5-9)": per_class[:5],
            "class 0-9": per_class,
            "none, items 0-4": [task_probe(lo_items, "pooled", MAX_ITEMS)],
            "none, items 0-9": [task_probe(train_all, "pooled", MAX_ITEMS)],
        }
        for al in ("ridge", "procrustes", "cca"):
            for fit_name, probes in fits.items():
                pairs = condition_pairs(a, ad_a, la, b, ad_b, lb, probes, cache)
                model = fit_stitch(make_aligner(al, **PARAMS.get(al, {})), ad_a, la, ad_b, lb, pairs)
                acc_hi, acc_lo = accuracy(model, hi_test), accuracy(model, lo_test)
                row("held-out conditions", pair=f"{a}->{b}", layers=f"late:{la}->{lb}", aligner=al, fit_on=fit_name,
                    acc_classes_0_4=round(acc_lo, 4), acc_classes_5_9=round(acc_hi, 4), p_rel_5_9=round(acc_hi / src, 4))

    # 6. fit time against scikit-learn and SciPy
    speed = speed_rows(zoo, cache)
    rows += speed
    report(rows, speed, time.perf_counter() - start)


def _pca(x: torch.Tensor, d: int) -> torch.Tensor:
    x = x.reshape(len(x), -1).double()
    x = x - x.mean(0)
    return x @ torch.linalg.svd(x, full_matrices=False).Vh[:d].T


def _best_time(fn: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def speed_rows(zoo: Zoo, cache: ActivationCache) -> list[dict[str, Any]]:
    """CCA and Procrustes fit times at n = 2000, d = 128 (PCA of real conv activations)."""
    train = load_task("mnist1d", "all", "train")
    p = [task_probe(train, "pooled", 2000)]
    xa = _pca(probe("cnn-mnist1d", zoo.adapter("cnn-mnist1d"), p, ["conv2"], cache)["pooled"]["conv2"], 128)
    xb = _pca(probe("tf-mnist1d", zoo.adapter("tf-mnist1d"), p, ["block1"], cache)["pooled"]["block1"], 128)
    w = torch.full((len(xa),), 1 / len(xa), dtype=torch.float64)
    k = 16
    ours_cca = _best_time(lambda: cca(xa, xb, w, k=k, reg=1e-3), 5)
    sk = SkCCA(n_components=k, max_iter=500)
    sk_cca = _best_time(lambda: sk.fit(xa.numpy(), xb.numpy()), 1)
    sk_corr = [float(np.corrcoef(u, v)[0, 1]) for u, v in zip(*(m.T for m in sk.transform(xa.numpy(), xb.numpy())))]
    our_corr = cca(xa, xb, w, k=k, reg=1e-3).corr.tolist()
    ours_pr = _best_time(lambda: our_procrustes(xa, xb, w, scale=False), 20)
    sp_pr = _best_time(lambda: orthogonal_procrustes(xa.numpy(), xb.numpy()), 20)
    ra = our_procrustes(xa, xb, w, scale=False).numpy()
    rs = orthogonal_procrustes(xa.numpy(), xb.numpy())[0]
    return [
        {"section": "speed", "method": f"CCA k={k}", "ours_s": round(ours_cca, 5), "reference": "sklearn CCA (NIPALS)",
         "reference_s": round(sk_cca, 4), "speedup": round(sk_cca / ours_cca, 1),
         "top_corr_ours": round(our_corr[0], 4), "top_corr_reference": round(sk_corr[0], 4),
         "mean_corr_ours": round(float(np.mean(our_corr)), 4), "mean_corr_reference": round(float(np.mean(sk_corr)), 4)},
        {"section": "speed", "method": "orthogonal Procrustes", "ours_s": round(ours_pr, 5),
         "reference": "scipy.linalg.orthogonal_procrustes", "reference_s": round(sp_pr, 5),
         "speedup": round(sp_pr / ours_pr, 2), "max_abs_diff": float(np.abs(ra - rs).max())},
    ]


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def report(rows: list[dict[str, Any]], speed: list[dict[str, Any]], wall: float) -> None:
    sections = dict.fromkeys(r["section"] for r in rows)
    for sec in sections:
        sub = [r for r in rows if r["section"] == sec]
        keys = [k for k in dict.fromkeys(k for r in sub for k in r) if k != "section"]
        print(f"\n## {sec}")
        print(" | ".join(keys))
        for r in sub:
            print(" | ".join(_fmt(r.get(k, "")) for k in keys))
    mc = [r for r in rows if r.get("kind") == "MLP<->CNN" and r["section"] in ("aligner x layer", "conditioning", "tuning")]
    zs = [r for r in mc if r["tuning"] == "zero-shot"]
    tuned = [r for r in mc if r["tuning"] == "stitch-tuned"]
    best_tuned = max(tuned, key=lambda r: r["p_rel"])
    small = [r for r in tuned if r["stitch_share"] < 0.02]
    related = [r for r in rows if r.get("kind") == "related distributions" and r["section"] == "conditioning"]
    related_none = [r for r in rows if r.get("kind") == "related distributions" and r["section"] == "aligner x layer"]
    cond_delta = {}
    for r in related:
        ref = next(x for x in related_none if x["aligner"] == r["aligner"] and x["layers"] == r["layers"])
        cond_delta[f"{r['aligner']}/{r['conditioning']}"] = round(r["test_acc"] - ref["test_acc"], 4)
    summary = {
        "best_zero_shot_p_rel": max(r["p_rel"] for r in zs),
        "best_zero_shot_row": {k: max(zs, key=lambda r: r["p_rel"])[k] for k in ("pair", "layers", "aligner", "conditioning")},
        "best_tuned_p_rel": best_tuned["p_rel"],
        "best_tuned_row": {k: best_tuned[k] for k in ("pair", "layers", "aligner", "stitch_params")},
        "stitch_param_share": best_tuned["stitch_share"],
        "best_tuned_p_rel_under_2pct_share": max((r["p_rel"] for r in small), default=None),
        "smallest_tuned_share": min(r["stitch_share"] for r in tuned),
        "cca_speedup_vs_sklearn": speed[0]["speedup"],
        "procrustes_speedup_vs_scipy": speed[1]["speedup"],
        "related_conditioning_minus_unconditioned": cond_delta,
        "summary_scope": "MLP<->CNN pairs (cnn-digits->mlp-digits, mlp-digits->cnn-digits, cnn-mnist1d->mlp-mnist1d)",
        "wall_s": round(wall, 1),
    }
    print("\n## summary")
    print(json.dumps(summary, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "stitching", "command": COMMAND, "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
