"""``evomerge zoo build|list``: train and list the built-in model zoo; ``--family lm``: the language-model
family (:class:`~evomerge.zoo.lm.catalog.LMZoo`), built and listed on its own."""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evomerge.zoo.catalog import Zoo
    from evomerge.zoo.lm.catalog import LMZoo

#: The columns of ``zoo list``; ``built`` is false for a model not yet trained (its accuracies null).
COLUMNS = ("id", "architecture", "dataset", "condition", "family", "params", "val_accuracy", "test_accuracy", "built")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="build or list the built-in model zoo")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    b = zsub.add_parser("build", help="train every zoo model not yet in the cache")
    b.add_argument("--seed", type=int, default=0, help="zoo seed (data splits and training)")
    b.add_argument("--workers", type=int, default=2, help="training processes")
    b.add_argument("--family", choices=["lm"], help="build the language-model family instead of the default zoo")
    b.set_defaults(func=run)
    ls = zsub.add_parser("list", help="list the zoo's models, built or not, with their accuracies")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--dataset", help="only models trained on this dataset")
    ls.add_argument("--build", action="store_true", help="train the listed models missing from the cache first")
    ls.add_argument("--workers", type=int, default=2, help="training processes (with --build)")
    ls.add_argument("--family", choices=["lm"], help="list the language-model family instead of the default zoo")
    ls.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.family == "lm":
        from evomerge.zoo.lm.catalog import LMZoo

        return run_lm(LMZoo(seed=args.seed), args)
    from evomerge.zoo.catalog import Zoo

    zoo = Zoo(seed=args.seed)
    if args.zoo_command == "build":
        return build(zoo, args.workers)
    return list_models(zoo, args)


def run_lm(zoo: LMZoo, args: argparse.Namespace) -> int:
    """``zoo build|list --family lm``: rows as for the default zoo (``dataset`` lm, ``condition`` the
    skill), plus ``skills``: every skill's validation and test accuracy (a built model's)."""
    if args.zoo_command == "build" or args.build:
        build(zoo, args.workers)
    if args.zoo_command == "build":
        return 0
    if args.dataset not in (None, "lm"):
        from evomerge.errors import UserError

        raise UserError(f"the LM family's dataset is 'lm', not '{args.dataset}'")
    rows = [lm_row(zoo, i) for i in zoo.ids()]
    return print_rows(rows, f"evomerge LM family (seed {zoo.seed}, {zoo.root})", args.json, zoo.spec.all_skills())


def lm_row(zoo: LMZoo, model_id: str) -> dict[str, Any]:
    """An LM-family model's row: its record's :data:`COLUMNS` and ``skills`` when built, else null figures."""
    if zoo.is_built(model_id):
        rec = zoo.record(model_id)
        return {k: rec[k] for k in COLUMNS[:-1]} | {"skills": rec["skills"], "built": True}
    member = model_id.removeprefix("lm-")
    return {"id": model_id, "architecture": zoo.spec.architecture(member), "dataset": "lm",
            "condition": zoo.spec.condition(member), "family": "lm", "params": None,
            "val_accuracy": None, "test_accuracy": None, "skills": None, "built": False}


def build(zoo: Zoo | LMZoo, workers: int) -> int:
    from evomerge.console import log

    start = time.perf_counter()
    trained = zoo.build(workers=workers, progress=True)
    log(f"zoo ready: {len(zoo.ids())} models, {len(trained)} trained now, {time.perf_counter() - start:.1f}s")
    return 0


def row(zoo: Zoo, model_id: str) -> dict[str, Any]:
    """The model's ``zoo list`` row: its record when built; else its spec, its parameter count
    (an untrained network's) and null accuracies."""
    if zoo.is_built(model_id):
        return {k: zoo.record(model_id)[k] for k in COLUMNS[:-1]} | {"built": True}
    from evomerge.zoo.catalog import new_net

    spec = zoo.spec(model_id)
    return {"id": spec.id, "architecture": spec.arch, "dataset": spec.dataset, "condition": spec.condition,
            "family": spec.family, "params": sum(p.numel() for p in new_net(spec, 0).parameters()),
            "val_accuracy": None, "test_accuracy": None, "built": False}


def list_models(zoo: Zoo, args: argparse.Namespace) -> int:
    from evomerge.data.datasets import DATASETS

    ids = zoo.ids()
    if args.dataset:
        DATASETS.get(args.dataset)  # unknown names: UserError listing the valid ones
        ids = [i for i in ids if zoo.spec(i).dataset == args.dataset]
    if args.build:
        zoo.build(workers=args.workers, ids=ids, progress=True)
    return print_rows([row(zoo, i) for i in ids], f"evomerge zoo (seed {zoo.seed})", args.json)


def print_rows(rows: list[dict[str, Any]], title: str, as_json: bool, skills: tuple[str, ...] = ()) -> int:
    """The rows as JSON, or as a table of :data:`COLUMNS` (models not built dimmed), plus a test-accuracy
    column per skill of ``skills`` (read from each row's ``skills``; then ``dataset`` and ``family``, one
    value for a whole family, are left out of the table)."""
    from evomerge.console import log, stdout

    if as_json:
        print(json.dumps(rows, indent=1))
        return 0
    from rich.table import Table

    missing = sum(not r["built"] for r in rows)
    table = Table(title=title + ("; skill columns: test accuracy" if skills else ""))
    columns = [k for k in COLUMNS[:-1] if not (skills and k in ("dataset", "family"))]
    for k in columns:
        table.add_column(k, justify="right" if k in ("params", "val_accuracy", "test_accuracy") else "left")
    for skill in skills:
        table.add_column(skill, justify="right")
    for r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in columns]
        if not r["built"]:
            cells[-2:] = ["not built", "not built"]
        cells += [f"{r['skills'][s]['test']:.3f}" if r["built"] else "" for s in skills]
        table.add_row(*cells, style=None if r["built"] else "dim")
    stdout.print(table)
    if missing:
        log(f"{missing} of {len(rows)} models not built; train them with 'evomerge zoo build' or 'zoo list --build'"
            " (with --family for a family built on its own)")
    return 0
