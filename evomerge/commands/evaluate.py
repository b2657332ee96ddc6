"""``evomerge evaluate DIR [--task T] [--split test]``: reload an exported model and score it."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reload an exported model and report its accuracy")
    p.add_argument("model", help="folder written by 'evomerge export'")
    p.add_argument("--task", action="append", help="dataset/condition (repeatable; default: the run's tasks)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evomerge.data.tasks import load_task, parse_task_key
    from evomerge.evaluate import accuracy
    from evomerge.recipe.export import load_exported

    module, config = load_exported(args.model)
    manifest_path = Path(args.model) / "manifest.json"
    recorded = (json.loads(manifest_path.read_text())["fitness"].get("test_metrics") or {}) if manifest_path.exists() else {}
    names = {key: name for name, key in config["tasks"].items()}
    rows = []
    for key in args.task or list(config["tasks"].values()):
        dataset, condition = parse_task_key(key)
        task = load_task(dataset, condition, args.split, config["zoo_seed"])
        acc = accuracy(lambda x, k=task.key: module(x, k), task)
        row = {"task": task.key, "split": args.split, "items": len(task), "accuracy": acc}
        rec = recorded.get(f"accuracy/{names.get(task.key, '')}") if args.split == "test" else None
        if rec is not None:
            row |= {"recorded_accuracy": rec, "matches_record": acc == rec}
        rows.append(row)
    print(json.dumps(rows, indent=1))
    return 0
