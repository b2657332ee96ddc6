"""``evomerge zoo build|list``: train and list the built-in model zoo."""

from __future__ import annotations

import argparse
import json
import time

from rich.table import Table

from evomerge.console import log, stdout
from evomerge.data.datasets import DATASETS

from evomerge.zoo.catalog import Zoo


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="build or list the built-in model zoo")
    zsub = p.add_subparsers(dest="zoo_command", required=True, metavar="ACTION")
    b = zsub.add_parser("build", help="train every zoo model not yet in the cache")
    b.add_argument("--seed", type=int, default=0, help="zoo seed (data splits and training)")
    b.add_argument("--workers", type=int, default=2, help="training processes")
    b.set_defaults(func=run_build)
    ls = zsub.add_parser("list", help="list the zoo's models with their accuracies")
    ls.add_argument("--seed", type=int, default=0)
    ls.add_argument("--json", action="store_true", help="print JSON instead of a table")
    ls.add_argument("--dataset", help="only models trained on this dataset")
    ls.set_defaults(func=run_list)


def run_build(args: argparse.Namespace) -> int:
    zoo = Zoo(seed=args.seed)
    start = time.perf_counter()
    trained = zoo.build(workers=args.workers, log=log)
    log(f"zoo ready: {len(zoo.ids())} models, {len(trained)} trained now, {time.perf_counter() - start:.1f}s")
    return 0


def run_list(args: argparse.Namespace) -> int:
    zoo = Zoo(seed=args.seed)
    ids = zoo.ids()
    if args.dataset:
        DATASETS.get(args.dataset)  # unknown names: UserError listing the valid ones
        ids = [i for i in ids if zoo.spec(i).dataset == args.dataset]
    zoo.build(log=log, ids=ids)
    keys = ("id", "architecture", "dataset", "condition", "family", "params", "val_accuracy", "test_accuracy")
    rows = [{k: zoo.record(i)[k] for k in keys} for i in ids]
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    table = Table(title=f"evomerge zoo (seed {args.seed})")
    for k in keys:
        table.add_column(k, justify="right" if k in ("params", "val_accuracy", "test_accuracy") else "left")
    for r in rows:
        table.add_row(*(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys))
    stdout.print(table)
    return 0
