"""``evomerge probe``: CKA heatmaps per condition and the functional layer map of model pairs.

``evomerge probe --space FILE`` probes every pair of the space's models on each of its tasks
whose dataset both models read; ``--models a,b --task dataset/condition`` probes one pair.
Conditions are the task's classes (validation split, ``--per-class`` items each) or, with
``--conditioning task``, the task's items as one condition. Writes to ``--out`` (default
``runs/probe-<name>``): ``cka_<a>__<b>__<task>__<condition>.png`` and
``layer_map_<a>__<b>__<task>.json``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path
from typing import TYPE_CHECKING

from evomerge.errors import UserError

if TYPE_CHECKING:
    from evomerge.core.matching import LayerMap, StitchPoint
    from evomerge.core.probe import ProbeSet
    from evomerge.zoo.catalog import Zoo

CONDITIONINGS = ("class", "task")
#: ``CKA_MEASURES``' names, listed here so that parsing does not import torch; a test checks them.
MEASURES = ("debiased", "linear", "rbf")
#: What ``--theta`` thresholds, for help and messages.
SCORE = "mean over conditions of CKA x effective-rank ratio of a Hungarian-matched layer pair"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="CKA heatmaps and the functional layer map between zoo models")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--space", help="search space YAML: probe its models on its tasks")
    src.add_argument("--models", help="two zoo model ids, comma-separated (with --task)")
    p.add_argument("--task", help="dataset/condition, e.g. digits/all (with --models)")
    p.add_argument("--out", help="output folder (default runs/probe-<name>)")
    p.add_argument("--seed", type=int, default=0, help="zoo and data seed (with --models)")
    p.add_argument("--conditioning", choices=CONDITIONINGS, default="class", help="conditions: per class or whole task")
    p.add_argument("--per-class", type=int, default=100, help="items per class condition")
    p.add_argument("--measure", default="linear", help=f"similarity: {', '.join(MEASURES)} (default linear)")
    p.add_argument("--theta", type=float, default=0.5, help=f"stitch points: layer pairs whose matched score ({SCORE}) "
                   "exceeds theta (default 0.5)")
    p.set_defaults(func=run)


def _targets(args: argparse.Namespace) -> tuple[str, int, list[str], list[tuple[str, str]]]:
    """(name, seed, models, [(dataset, condition)]) from --space or --models/--task."""
    from evomerge.data.tasks import parse_task_key

    if args.space:
        from evomerge.search.space import load_space

        space = load_space(args.space)
        if not space.builtin_only:
            raise UserError(f"{args.space}: probe takes zoo model ids on built-in tasks (this space names model "
                            "sources or item files)")
        return space.name, space.zoo.seed, list(space.models), [(t.dataset, t.condition) for t in space.tasks]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(models) != 2:
        raise UserError(f"--models: expected two comma-separated zoo model ids, got {args.models!r}")
    if not args.task:
        raise UserError("--task: required with --models (dataset/condition, e.g. digits/all)")
    return "__".join(models), args.seed, models, [parse_task_key(args.task)]


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.core.similarity import CKA_MEASURES
    from evomerge.zoo.catalog import Zoo

    CKA_MEASURES.get(args.measure)
    if args.per_class < 4:
        raise UserError(f"--per-class: expected at least 4 items per class, got {args.per_class}")
    name, seed, models, tasks = _targets(args)
    zoo = Zoo(seed=seed)
    for m in models:
        zoo.spec(m)  # unknown ids: UserError listing the valid ones
    zoo.build(ids=models, progress=True)
    out = Path(args.out or f"runs/probe-{name}")
    written = probe_pairs(zoo, models, tasks, out, args.conditioning, args.per_class, args.measure, args.theta, seed)
    for path in written:
        log(f"wrote {path}")
    return 0


def _probes(dataset: str, condition: str, conditioning: str, per_class: int, seed: int) -> list[ProbeSet]:
    from evomerge.core.probe import class_probes, task_probe
    from evomerge.data.tasks import load_task

    task = load_task(dataset, condition, "val", seed)
    return class_probes(task, per_class) if conditioning == "class" else [task_probe(task)]


def probe_pairs(
    zoo: Zoo,
    models: list[str],
    tasks: list[tuple[str, str]],
    out: Path,
    conditioning: str = "class",
    per_class: int = 100,
    measure: str = "linear",
    theta: float = 0.5,
    seed: int = 0,
) -> list[Path]:
    """Heatmaps and layer maps for every model pair on every task both models read; the paths written."""
    from dataclasses import replace

    from evomerge.console import log
    from evomerge.core.matching import layer_map
    from evomerge.core.probe import ActivationCache, probe

    out.mkdir(parents=True, exist_ok=True)
    cache = ActivationCache()
    written: list[Path] = []
    for dataset, condition in tasks:
        readers = [m for m in models if zoo.spec(m).dataset == dataset]
        pairs = list(itertools.combinations(readers, 2))
        if not pairs:
            log(f"skipping {dataset}/{condition}: fewer than two of the models read {dataset}")
            continue
        probes = _probes(dataset, condition, conditioning, per_class, seed)
        for a, b in pairs:
            acts_a = probe(a, zoo.adapter(a), probes, cache=cache)
            acts_b = probe(b, zoo.adapter(b), probes, cache=cache)
            every = layer_map(acts_a, acts_b, theta=float("-inf"), measure=measure, model_a=a, model_b=b)
            lm = replace(every, theta=theta, points=[p for p in every.points if p.score > theta])
            stem = f"{a}__{b}__{dataset}-{condition}"
            path = out / f"layer_map_{stem}.json"
            lm.save(path)
            written.append(path)
            written += [plot_cka(lm, cond, out / f"cka_{stem}__{cond}.png") for cond in lm.cka]
            log(f"{a} vs {b} on {dataset}/{condition}: {stitch_points(lm, every.points[0] if every.points else None)}")
    return written


def stitch_points(lm: LayerMap, best: StitchPoint | None) -> str:
    """The top stitch points with their scores, or the best score seen when none exceeds theta."""
    if lm.points:
        return (", ".join(f"{p.layer_a}->{p.layer_b} {p.score:.2f}" for p in lm.points[:3])
                + f" (matched score > theta {lm.theta:g})")
    seen = f"; best {best.layer_a}->{best.layer_b} {best.score:.2f}" if best else ""
    return (f"no layer pair's matched score exceeds theta {lm.theta:g}{seen} (score: {SCORE}; "
            "the heatmaps show raw CKA)")


def plot_cka(lm: LayerMap, condition: str, path: Path) -> Path:
    """Heatmap of one condition's CKA matrix, matched stitch points marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(lm.layers_b), 1.0 + 0.5 * len(lm.layers_a)))
    im = ax.imshow(lm.cka[condition], vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(lm.layers_b)), lm.layers_b, rotation=45, ha="right")
    ax.set_yticks(range(len(lm.layers_a)), lm.layers_a)
    ax.set_xlabel(lm.model_b)
    ax.set_ylabel(lm.model_a)
    for p in lm.points:
        ax.scatter(lm.layers_b.index(p.layer_b), lm.layers_a.index(p.layer_a), marker="o", facecolors="none", edgecolors="red")
    ax.set_title(f"{lm.measure} CKA, {condition}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
