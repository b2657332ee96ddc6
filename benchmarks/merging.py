"""Weight-space merging on the built-in zoo.

Part 1 (shared-base family): one pretrained CNN, one fine-tune per task, each with its own head.
Every method merges the trunks (keys outside ``layers.head.``); task ``t`` is scored with its own
head (the usual known-task protocol), except MASS, which routes each input and picks the heads
itself. Normalized accuracy = merged ÷ fine-tuned test accuracy, per task, averaged. Each
method's hyperparameters are chosen on the validation split; the test split is read once.

Part 2 (seeded twins and the triplet): naive averaging vs weight matching (+ REPAIR) vs C2M3:
accuracy and loss barrier at the midpoint, ``L(mid) - (L(A) + L(B)) / 2`` (test cross-entropy),
the three-way merge of the triplet, and the cycle error of pairwise matching vs C2M3.

Time and peak memory of each merge: wall clock, and the peak of live tensor memory at operator
granularity from ``torch.profiler`` (tracemalloc does not see torch's allocator).

Run: ``OMP_NUM_THREADS=1 python benchmarks/merging.py``
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile

from evomerge.core.c2m3 import c2m3, cycle_error, pairwise_maps, universe_maps
from evomerge.core.merge import is_trunk_key, merge
from evomerge.core.merge.tsv import default_rank, is_matrix
from evomerge.core.permutation import apply_permutation, lerp_state, permutation_spec, repair, weight_matching
from evomerge.core.route import MASS
from evomerge.data import load_task
from evomerge.data.tasks import TaskData
from evomerge.evaluate import accuracy
from evomerge.zoo.catalog import Zoo

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/merging.py"
OUT = Path(__file__).parent / "results" / "merging.json"
SEED = 0

TA_LAMS = [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0]
TIES_LAMS = [0.25, 0.5, 0.75, 1.0, 1.5, 2.0]
TSV_ALPHAS = [0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0, 1.2]
TSV_RANK_SHARES = {"1/T": None, "1/2": 2, "full": 1}  # kept rank per task: min(m, n) // divisor (None: T)
GRIDS: dict[str, list[dict[str, Any]]] = {
    "average": [{}],
    "task_arithmetic": [{"lam": lam} for lam in TA_LAMS],
    "ties": [{"density": d, "lam": lam} for d in (0.1, 0.2, 0.5, 0.8) for lam in TIES_LAMS],
    "dare": [{"p": p, "lam": lam, "seed": SEED} for p in (0.1, 0.5, 0.9) for lam in TA_LAMS],
    "dare_ties": [{"p": p, "lam": lam, "seed": SEED, "elect_sign": True} for p in (0.1, 0.5, 0.9) for lam in TIES_LAMS],
    "tsv": [{"alpha": a, "rank_share": r} for a in TSV_ALPHAS for r in TSV_RANK_SHARES],
}
WM_RESTARTS = 10
MASS_GRID = [{"route_rank": r, "top_k": k} for r in (2, 4, 8, 16) for k in (1, 2)]
MASS_LAYER = "layers.fc.1"  # the Linear layer after the convolutions; its input is routed


def peak_memory(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall time (s, without profiler) and peak live tensor memory (MB, profiler)."""
    start = time.perf_counter()
    fn()
    wall = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return out, wall, peak / 2**20


def as_model(module: nn.Module, sd: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    module.eval()
    return lambda x: functional_call(module, sd, (x,))


@torch.no_grad()
def loss(model: Callable[[torch.Tensor], torch.Tensor], task: TaskData, batch: int = 2048) -> float:
    total = sum(F.cross_entropy(model(task.x[i : i + batch]), task.y[i : i + batch], reduction="sum").item() for i in range(0, len(task), batch))
    return total / len(task)


# ---- part 1: shared base -------------------------------------------------------------------------


class SharedBase:
    def __init__(self, zoo: Zoo):
        specs = [zoo.spec(i) for i in zoo.ids() if zoo.spec(i).family == "shared_base"]
        self.fts = [s for s in specs if s.base is not None]
        self.base_id = self.fts[0].base
        self.base = zoo.adapter(self.base_id).state_dict()
        self.modules = [zoo.adapter(s.id).module for s in self.fts]
        self.states = [m.state_dict() for m in self.modules]
        self.heads = [{k: v for k, v in sd.items() if not is_trunk_key(k)} for sd in self.states]
        self.tasks = {
            split: [load_task(s.dataset, s.condition, split, SEED) for s in self.fts] for split in ("val", "test")
        }
        self.own = {split: [accuracy(as_model(m, sd), t) for m, sd, t in zip(self.modules, self.states, self.tasks[split])] for split in self.tasks}

    def names(self) -> list[str]:
        return [s.condition for s in self.fts]

    def scores(self, trunk: dict[str, torch.Tensor], split: str) -> list[float]:
        """Accuracy of ``trunk`` + each task's head on that task."""
        return [accuracy(as_model(m, {**trunk, **h}), t) for m, h, t in zip(self.modules, self.heads, self.tasks[split])]

    def mass_scores(self, mass: MASS, split: str) -> tuple[list[float], list[float]]:
        """MASS accuracy per task and the share of items routed (top-1) to their own task."""
        mass.eval()
        acc, routed = [], []
        for t, task in enumerate(self.tasks[split]):
            acc.append(accuracy(mass, task))
            with torch.no_grad():
                probs, _ = mass.route(task.x)
            routed.append((probs.argmax(dim=1) == t).float().mean().item())
        return acc, routed

    def normalized(self, acc: list[float], split: str) -> float:
        return sum(a / o for a, o in zip(acc, self.own[split])) / len(acc)

    def merge(self, method: str, params: dict[str, Any]) -> dict[str, torch.Tensor]:
        if method == "tsv":  # the rank share is a benchmark knob: turn it into TSV's per-layer ranks
            divisor = TSV_RANK_SHARES[params["rank_share"]] or len(self.states)
            ranks = {k: default_rank(v, divisor) for k, v in self.base.items() if is_trunk_key(k) and is_matrix(v)}
            params = {"alpha": params["alpha"], "rank": ranks}
        name = "dare" if method == "dare_ties" else method
        return merge(name, self.base, self.states, params, keys=is_trunk_key)

    def build_mass(self, params: dict[str, Any]) -> MASS:
        return MASS.from_finetuned(self.modules[0], self.base, self.states, MASS_LAYER, **params)


def tune(candidates: list[dict[str, Any]], score: Callable[[dict[str, Any]], float]) -> tuple[dict[str, Any], float]:
    return max(((p, score(p)) for p in candidates), key=lambda ps: ps[1])


def shared_base_part(zoo: Zoo) -> tuple[list[dict[str, Any]], dict[str, float], dict[str, float]]:
    sb = SharedBase(zoo)
    rows: list[dict[str, Any]] = []

    def row(method: str, params: dict[str, Any], acc: list[float], val_norm: float | None, wall: float, peak: float, **extra: Any) -> None:
        rows.append({
            "part": "shared_base", "method": method, "params": params,
            "abs_accuracy": sum(acc) / len(acc), "normalized_accuracy": sb.normalized(acc, "test"),
            "val_normalized_accuracy": val_norm, "per_task": dict(zip(sb.names(), acc)),
            "merge_s": wall, "merge_peak_mb": peak, **extra,
        })

    row("fine-tuned (each its own)", {}, sb.own["test"], 1.0, 0.0, 0.0)
    base_acc = sb.scores(sb.base, "test")
    row("pretrained trunk", {}, base_acc, sb.normalized(sb.scores(sb.base, "val"), "val"), 0.0, 0.0)
    for method, grid in GRIDS.items():
        params, val = tune(grid, lambda p: sb.normalized(sb.scores(sb.merge(method, p), "val"), "val"))
        trunk, wall, peak = peak_memory(lambda: sb.merge(method, params))
        row(method, params, sb.scores(trunk, "test"), val, wall, peak)
    params, val = tune(MASS_GRID, lambda p: sb.normalized(sb.mass_scores(sb.build_mass(p), "val")[0], "val"))

    def build_mass() -> MASS:  # routing subspaces plus the first-pass merge of all tasks
        m = sb.build_mass(params)
        m.merged(tuple(range(len(sb.fts))))
        return m

    mass, wall, peak = peak_memory(build_mass)
    acc, routed = sb.mass_scores(mass, "test")
    row("mass", params, acc, val, wall, peak, routing_accuracy=dict(zip(sb.names(), routed)),
        cached_combinations=[list(c) for c in mass.cache])
    oracle = [accuracy(as_model(m, {**mass.merged((t,)), **h}), task)
              for t, (m, h, task) in enumerate(zip(sb.modules, sb.heads, sb.tasks["test"]))]
    row("mass, oracle routing (TSV-C)", params, oracle, None, 0.0, 0.0)
    norm = {r["method"]: r["normalized_accuracy"] for r in rows if r["method"] in (*GRIDS, "mass")}
    routing = {"mass_routing_accuracy": sum(routed) / len(routed)}
    return rows, norm, routing


# ---- part 2: twins and triplet -------------------------------------------------------------------


def twin_groups(zoo: Zoo) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for i in zoo.ids():
        s = zoo.spec(i)
        if s.family == "twins":
            groups.setdefault((s.arch, s.dataset), []).append(i)
    return groups


def twins_part(zoo: Zoo) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows: list[dict[str, Any]] = []
    barriers: dict[str, list[float]] = {"naive": [], "weight_matching": [], "weight_matching+repair": [], "c2m3": []}
    cycles: dict[str, float] = {}
    for (arch, dataset), ids in twin_groups(zoo).items():
        module = zoo.adapter(ids[0]).module
        spec = permutation_spec(module)
        states = [zoo.adapter(i).state_dict() for i in ids]
        test = load_task(dataset, "all", "test", SEED)
        calib = load_task(dataset, "all", "train", SEED).x[:2000]

        def evaluate(sd: dict[str, torch.Tensor]) -> tuple[float, float]:
            m = as_model(module, sd)
            return accuracy(m, test), loss(m, test)

        ends = [evaluate(sd) for sd in states]
        res, c2m3_s, c2m3_mb = peak_memory(lambda: c2m3(spec, states))
        universe = [apply_permutation(spec, p, sd) for p, sd in zip(res.perms, states)]
        for a, b in itertools.combinations(range(len(ids)), 2):
            perms, wm_s, wm_mb = peak_memory(lambda: weight_matching(spec, states[a], states[b], seed=SEED, restarts=WM_RESTARTS))
            matched = apply_permutation(spec, perms, states[b])
            mids = {
                "naive": (lerp_state(states[a], states[b], 0.5), 0.0, 0.0),
                "weight_matching": (lerp_state(states[a], matched, 0.5), wm_s, wm_mb),
                "weight_matching+repair": (repair(module, spec, lerp_state(states[a], matched, 0.5), [states[a], matched], [0.5, 0.5], calib), wm_s, wm_mb),
                "c2m3": (lerp_state(universe[a], universe[b], 0.5), c2m3_s, c2m3_mb),
            }
            mean_loss = (ends[a][1] + ends[b][1]) / 2
            for method, (sd, wall, peak) in mids.items():
                acc, mid_loss = evaluate(sd)
                barriers[method].append(mid_loss - mean_loss)
                rows.append({
                    "part": "twins", "models": f"{ids[a]} + {ids[b]}", "method": method,
                    "endpoint_accuracy": (ends[a][0] + ends[b][0]) / 2, "midpoint_accuracy": acc,
                    "midpoint_loss": mid_loss, "loss_barrier": mid_loss - mean_loss, "merge_s": wall, "merge_peak_mb": peak,
                })
        if len(ids) >= 3:
            aligned = [states[0], *(apply_permutation(spec, weight_matching(spec, states[0], sd, seed=SEED, restarts=WM_RESTARTS), sd) for sd in states[1:])]
            merges = {
                "naive": merge("average", states[0], states),
                f"weight_matching (to {ids[0]})": merge("average", states[0], aligned),
                "c2m3": res.merged,
            }
            mean_loss = sum(e[1] for e in ends) / len(ends)
            for method, sd in merges.items():
                acc, l = evaluate(sd)
                rows.append({
                    "part": "triplet", "models": " + ".join(ids), "method": method,
                    "endpoint_accuracy": sum(e[0] for e in ends) / len(ends), "merged_accuracy": acc,
                    "merged_loss": l, "loss_barrier": l - mean_loss,
                })
            cycles["cycle_error_pairwise"] = cycle_error(pairwise_maps(spec, states, seed=SEED, restarts=WM_RESTARTS), len(ids))
            cycles["cycle_error_c2m3"] = cycle_error(universe_maps(res.perms), len(ids))
            cycles["c2m3_iterations"] = res.iterations
            cycles["c2m3_relative_gap"] = res.gap
    mean = {k: sum(v) / len(v) for k, v in barriers.items()}
    summary = {
        "barrier_naive": mean["naive"],
        "barrier_matched": mean["weight_matching"],
        "barrier_matched_repair": mean["weight_matching+repair"],
        "barrier_c2m3": mean["c2m3"],
        **cycles,
    }
    return rows, summary


# ---- output --------------------------------------------------------------------------------------


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_tables(rows: list[dict[str, Any]]) -> None:
    sb = [r for r in rows if r["part"] == "shared_base"]
    tasks = list(sb[0]["per_task"])
    print("\nShared-base family (test; task heads known except MASS; hyperparameters tuned on val)")
    head = f"{'method':<26}{'abs acc':>8}{'norm acc':>9}{'val norm':>9}  " + "".join(f"{t[:7]:>8}" for t in tasks) + f"{'merge s':>9}{'peak MB':>9}  params"
    print(head)
    for r in sb:
        print(f"{r['method']:<26}{r['abs_accuracy']:>8.3f}{r['normalized_accuracy']:>9.3f}{_fmt(r['val_normalized_accuracy']):>9}  "
              + "".join(f"{r['per_task'][t]:>8.3f}" for t in tasks) + f"{r['merge_s']:>9.3f}{r['merge_peak_mb']:>9.2f}  {json.dumps(r['params'])}")
    mass = next(r for r in sb if r["method"] == "mass")
    print("MASS top-1 routing accuracy: " + ", ".join(f"{t} {v:.3f}" for t, v in mass["routing_accuracy"].items()))
    print("\nSeeded twins / triplet pairs (test): midpoint of two models")
    print(f"{'models':<34}{'method':<24}{'ends acc':>9}{'mid acc':>9}{'mid loss':>9}{'barrier':>9}{'merge s':>9}{'peak MB':>9}")
    for r in (r for r in rows if r["part"] == "twins"):
        print(f"{r['models']:<34}{r['method']:<24}{r['endpoint_accuracy']:>9.3f}{r['midpoint_accuracy']:>9.3f}"
              f"{r['midpoint_loss']:>9.3f}{r['loss_barrier']:>9.3f}{r['merge_s']:>9.3f}{r['merge_peak_mb']:>9.2f}")
    print("\nTriplet: merge of all three")
    for r in (r for r in rows if r["part"] == "triplet"):
        print(f"{r['method']:<34}ends acc {r['endpoint_accuracy']:.3f}  merged acc {r['merged_accuracy']:.3f}  "
              f"loss {r['merged_loss']:.3f}  barrier {r['loss_barrier']:.3f}")


def main() -> None:
    torch.set_num_threads(1)
    start = time.perf_counter()
    zoo = Zoo(seed=SEED)
    zoo.build()
    sb_rows, norm, routing = shared_base_part(zoo)
    tw_rows, tw_summary = twins_part(zoo)
    rows = sb_rows + tw_rows
    print_tables(rows)
    summary = {"normalized_accuracy": norm, **routing, **tw_summary, "wall_s": time.perf_counter() - start}
    print("\nsummary:", json.dumps(summary, indent=1))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"benchmark": "merging", "command": COMMAND, "rows": rows, "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
