"""``evomerge evaluate DIR [--task T] [--split test]``: reload an exported model, check it and score it.

Exit status: 0 when the export checks out and every recorded test accuracy is reproduced exactly;
1 when the numbers differ from the record (a reproduced accuracy, or a source model's sha256 in the
local zoo); 2 for bad or tampered input (an unreadable or invalid file, a damaged
``model.safetensors``, weights or config that differ from what ``manifest.json`` recorded). Without a
manifest the model is scored with a warning and nothing can be compared.
"""

from __future__ import annotations

import argparse
import json

EPILOG = ("exit status: 0 verified; 1 the reproduced numbers differ from the record (accuracy, source "
          "hashes); 2 bad or tampered input (invalid files, weights or config not as the manifest records)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reload an exported model, check it against its manifest and report its accuracy",
                       epilog=EPILOG)
    p.add_argument("model", help="folder written by 'evomerge export'")
    p.add_argument("--task", action="append", help="dataset/condition (repeatable; default: the run's tasks)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys
    import warnings

    from evomerge.data.tasks import load_task, parse_task_key
    from evomerge.evaluate import accuracy
    from evomerge.recipe.export import ExportConfig, ExportWarning, check_sources, load_exported, read_manifest

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportWarning)
        module, config = load_exported(args.model)
    for w in caught:
        print(f"evomerge: warning: {w.message}", file=sys.stderr)
    manifest = read_manifest(args.model)
    problems: list[str] = []
    if manifest is not None:
        problems, unchecked = check_sources(ExportConfig.model_validate(config), manifest)
        if unchecked:
            print(f"evomerge: note: source hashes not checked for {', '.join(unchecked)} (not built in the local zoo)",
                  file=sys.stderr)
    recorded = (manifest.fitness.get("test_metrics") or {}) if manifest is not None else {}
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
            if acc != rec:  # accuracies are fractions of items: exact, a difference is whole items
                problems.append(f"{task.key}: accuracy {acc} differs from the recorded {rec} "
                                f"({round(abs(acc - rec) * len(task))} of {len(task)} items answered differently)")
        rows.append(row)
    print(json.dumps(rows, indent=1))
    for problem in problems:
        print(f"evomerge: error: {problem}", file=sys.stderr)
    return 1 if problems else 0
