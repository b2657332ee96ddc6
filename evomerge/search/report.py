"""A run's report: fitness over evaluations, Pareto front, gene importance, markdown summary.

Gene importance is Optuna's (fANOVA) on a study rebuilt from ``evaluations.jsonl``:
each finished candidate is enqueued into an in-memory study and told its values, so
runs of every engine (DEAP ones too) get the same analysis.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import optuna  # noqa: E402

from evomerge.console import figure  # noqa: E402
from evomerge.errors import UserError, read_json  # noqa: E402
from evomerge.search.engines.random_search import RandomSearch  # noqa: E402
from evomerge.search.pareto import pareto_front  # noqa: E402
from evomerge.search.run_folder import RunFolder, evaluated  # noqa: E402
from evomerge.search.runner import describe  # noqa: E402
from evomerge.search.space import EngineSpec, SearchSpace  # noqa: E402


def gene_importance(space: SearchSpace, records: list[dict[str, Any]]) -> dict[str, float]:
    """fANOVA importance of each gene for the first objective (failed candidates left out)."""
    engine = RandomSearch(space.model_copy(update={"engine": EngineSpec(name="random")}))
    for rec in records:
        if rec["status"] == "ok":
            engine.study.enqueue_trial({k: v for k, v in rec["genome"].items() if v is not None})
            cand = engine.ask()
            engine.tell(cand.id, space.record_values(rec))
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=space.seed)
    return optuna.importance.get_param_importances(engine.study, evaluator=evaluator, target=lambda t: t.values[0])


def _plot_fitness(space: SearchSpace, records: list[dict[str, Any]], path: Path) -> None:
    fig, axes = plt.subplots(len(space.objectives), 1, figsize=(7, 2.6 * len(space.objectives)), squeeze=False)
    for ax, obj in zip(axes[:, 0], space.objectives):
        xs = [i for i, r in enumerate(records) if r["status"] == "ok"]
        ys = [records[i]["objectives"][obj.name] for i in xs]
        ax.scatter(xs, ys, s=10, alpha=0.6, label="candidate")
        best, running = None, []
        for y in ys:
            best = y if best is None else (max if obj.direction == "max" else min)(best, y)
            running.append(best)
        ax.step(xs, running, where="post", color="C3", label=f"best ({obj.direction})")
        failed = [i for i, r in enumerate(records) if r["status"] != "ok"]
        if failed and ys:  # drawn at the worst value seen
            worst = min(ys) if obj.direction == "max" else max(ys)
            ax.scatter(failed, [worst] * len(failed), marker="x", color="grey", s=14, label="failed")
        ax.set_ylabel(obj.name)
        ax.legend(loc="best", fontsize=7)
    axes[-1, 0].set_xlabel("evaluation")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _scale_if_wide(ax: Any, axis: str, values: list[float]) -> str:
    """Make ``axis`` logarithmic (symlog with zeros) when its non-negative values span more than
    two decades; the label suffix saying so."""
    positive = [v for v in values if v > 0]
    if not positive or min(values) < 0 or max(positive) / min(positive) <= 100:
        return ""
    set_scale = ax.set_xscale if axis == "x" else ax.set_yscale
    if len(positive) == len(values):
        set_scale("log")
    else:
        set_scale("symlog", linthresh=min(positive))
    return ", log scale"


def _plot_pareto(space: SearchSpace, ok: list[dict[str, Any]], front: list[int], path: Path) -> None:
    """The second objective (a cost, e.g. added parameters) across, the first up."""
    a, b = space.objectives[:2]
    xs, ys = [r["objectives"][b.name] for r in ok], [r["objectives"][a.name] for r in ok]
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    ax.scatter(xs, ys, s=10, alpha=0.5, label="candidates")
    pts = sorted((xs[i], ys[i]) for i in front)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="C3", label="Pareto front")
    ax.set_xlabel(f"{b.name} ({b.direction}{_scale_if_wide(ax, 'x', xs)})")
    ax.set_ylabel(f"{a.name} ({a.direction}{_scale_if_wide(ax, 'y', ys)})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_importance(importance: dict[str, float], path: Path) -> None:
    names = list(importance)[::-1]
    fig, ax = plt.subplots(figsize=(5.5, 0.4 * len(names) + 1.2))
    ax.barh(names, [importance[n] for n in names])
    ax.set_xlabel("importance (fANOVA, first objective)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _fmt(objectives: dict[str, float]) -> str:
    return ", ".join(f"{k} {figure(v)}" for k, v in objectives.items())


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report/`` (PNG plots and ``report.md``); return the markdown path."""
    folder = RunFolder(run_dir)
    space = folder.load_space()
    records = evaluated(folder.read_evaluations())
    if not records:
        raise UserError(f"{folder.evaluations_path}: no evaluations to report")
    out = folder.path / "report"
    out.mkdir(exist_ok=True)
    ok = [r for r in records if r["status"] == "ok"]
    summary = read_json(folder.summary_path) if folder.summary_path.exists() else {}
    lines = [f"# Run {folder.path.name}", "",
             f"- space `{space.name}`, engine `{space.engine.name}`, seed {space.seed}",
             f"- evaluations {len(records)} ({len(records) - len(ok)} failed), "
             f"wall time {summary.get('wall_s', records[-1]['elapsed_s']):.1f} s", ""]
    _plot_fitness(space, records, out / "fitness.png")
    lines += ["![fitness over evaluations](fitness.png)", ""]
    best = summary.get("best")
    if best:
        lines += ["## Best", "", f"`{best['id']}`: {describe(space, best)}", ""]
        if best.get("estimates"):  # IRT fitness: each task's estimate (validation) and the combination
            lines += ["| task | estimator | accuracy | stderr | items | verified |", "|---|---|---|---|---|---|"]
            lines += [f"| {e['task']} | {e['estimator']} | {e['value']:.4f} | {e['stderr']:.4f} | {e['items']:,} | "
                      f"{'yes' if e['verified'] else 'no'} |" for e in best["estimates"]]
            lines += [""]
    if len(space.objectives) > 1 and ok:
        front = pareto_front([space.record_values(r) for r in ok], space.directions)
        _plot_pareto(space, ok, front, out / "pareto.png")
        lines += ["## Pareto front", "", "| id | objectives |", "|---|---|"]
        lines += [f"| `{ok[i]['id']}` | {_fmt(ok[i]['objectives'])} |" for i in front]
        lines += ["", "![Pareto front](pareto.png)", ""]
    lines += ["## Gene importance", ""]
    try:
        importance = gene_importance(space, records)
    except (ValueError, RuntimeError) as exc:  # too few or constant evaluations
        lines += [f"not computed: {exc}", ""]
    else:
        _plot_importance(importance, out / "importance.png")
        lines += [f"- `{k}`: {v:.3f}" for k, v in importance.items()]
        lines += ["", "Conditional genes are left out unless active in every candidate (Optuna's rule).", "",
                  "![gene importance](importance.png)", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
