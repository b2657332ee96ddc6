"""``evomerge evaluate DIR [--task T] [--split test]``: reload an exported model, check it and score it.
``evomerge evaluate DIR --items FILE --format SPEC [--log-samples OUT]``: score a Hugging Face model
folder (an export, an ``evomerge merge`` output, any checkpoint) on an item file.

An export of a run over Hugging Face sources (its ``manifest.json`` says so) is checked against the
weight shards' sha256 its manifest records, then rescored on the test split of each of the run's item
tasks and compared with the recorded test metrics.

Exit status: 0 when the export checks out and every recorded test accuracy is reproduced exactly;
1 when the numbers differ from the record (a reproduced accuracy, or a source model's sha256 in the
local zoo); 2 for bad or tampered input (an unreadable or invalid file, a damaged
``model.safetensors``, weights or config that differ from what ``manifest.json`` recorded, a weight
shard of a Hugging Face export whose sha256 differs). Without a
manifest the model is scored with a warning and nothing can be compared.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

from evomerge.errors import UserError

if TYPE_CHECKING:
    from evomerge.search.hf_export import HFManifest

EPILOG = ("exit status: 0 verified; 1 the reproduced numbers differ from the record (accuracy, source "
          "hashes); 2 bad or tampered input (invalid files, weights or config not as the manifest records)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="reload an exported model, check it against its manifest and report its accuracy",
                       epilog=EPILOG)
    p.add_argument("model", help="folder written by 'evomerge export' (or, with --items, any Hugging Face model folder)")
    p.add_argument("--task", action="append", help="dataset/condition (repeatable; default: the run's tasks)")
    p.add_argument("--split", choices=["train", "val", "test", "all"],
                   help="split to score (default: test; with --items: all, every item of the file)")
    p.add_argument("--items", help="item file (JSONL / CSV / parquet) to score a Hugging Face model folder on")
    p.add_argument("--format", dest="format_spec", help="with --items: the format block (YAML file or inline)")
    p.add_argument("--seed", type=int, default=0, help="with --items: seed of the validation/test split")
    p.add_argument("--batch-size", type=int, default=16, help="with --items or a Hugging Face export: items per batch")
    p.add_argument("--device", default="cpu", help="with --items or a Hugging Face export: cpu or cuda[:i]")
    p.add_argument("--log-samples", metavar="OUT", help="with --items: also write lm-eval-harness sample "
                   "logs under OUT (samples_<task>_<date>.jsonl, results_<date>.json)")
    p.set_defaults(func=run)


def run_items(args: argparse.Namespace) -> int:
    """Score a Hugging Face folder on an item file; print the metrics; optionally write lm-eval logs."""
    from pathlib import Path

    from evomerge import __version__
    from evomerge.items import load_items, make_scorer
    from evomerge.items.readers import format_block
    from evomerge.items.records import parse_format
    from evomerge.items.sample_log import write_sample_log
    from evomerge.sources import open_source

    if args.format_spec is None:
        raise UserError("--items needs --format (the item file's format block)")
    if args.task:
        raise UserError("--task names built-in tasks; with --items the item file is the task")
    fmt = parse_format(*format_block(args.format_spec))
    items = load_items(args.items, fmt, seed=args.seed)
    if args.split not in (None, "all"):
        items = items.split(args.split)
        if not len(items):
            raise UserError(f"{args.items}: no items in the {args.split} split (use --split all)")
    scorer = make_scorer(items)
    source = open_source({"source": "hf", "path": args.model, "require_tokenizer": scorer.needs_tokenizer(tuple(items))},
                         file="<command line>", field="model")
    model = source.load_model(args.device)
    tokenizer = source.tokenizer() if source.has_tokenizer else None
    result = scorer.score(model, items, tokenizer=tokenizer, device=args.device, batch_size=args.batch_size)
    task = Path(args.items).stem
    row = {"task": task, "split": args.split or "all", "items": len(items),
           **{metric: result.accuracy(metric) for metric in result.correct}}
    if args.log_samples:
        samples, _ = write_sample_log(args.log_samples, str(args.model), task, items, result, __version__)
        row["samples"] = str(samples)
    print(json.dumps([row], indent=1))
    return 0


def run_hf_export(args: argparse.Namespace, manifest: HFManifest) -> list[str]:
    """Rescore an export over Hugging Face sources on its run's item tasks; print the rows; the problems."""
    from evomerge.items import make_scorer
    from evomerge.search.hf_export import verify_shards
    from evomerge.search.run_folder import RunFolder
    from evomerge.search.space import ItemTaskSpec
    from evomerge.sources import open_source

    if args.task:
        raise UserError("--task names built-in tasks; an export over Hugging Face sources is scored on its run's item tasks")
    verify_shards(args.model, manifest)
    space = RunFolder(manifest.run).load_space()
    if builtin := [t.name for t in space.tasks if not isinstance(t, ItemTaskSpec)]:
        raise UserError(f"{manifest.run}: tasks {', '.join(builtin)} are built-in datasets; score the export with --items")
    source = open_source({"source": "hf", "path": args.model}, file="<command line>", field="model")
    model = source.load_model(args.device)
    tokenizer = source.tokenizer() if source.has_tokenizer else None
    recorded = manifest.fitness.get("test_metrics") or {}
    rows, problems = [], []
    for task in space.tasks:
        items = task.item_set.split(args.split)
        result = make_scorer(items).score(model, items, tokenizer=tokenizer, device=args.device, batch_size=args.batch_size)
        row = {"task": task.name, "split": args.split, "items": len(items), "accuracy": result.accuracy(task.metric)}
        rows.append(compare_with_record(row, recorded.get(f"accuracy/{task.name}") if args.split == "test" else None, problems))
    print(json.dumps(rows, indent=1))
    return problems


def compare_with_record(row: dict, recorded: float | None, problems: list[str]) -> dict:
    """``row`` with the recorded accuracy and whether it is reproduced; a difference joins ``problems``.
    Accuracies are fractions k / n of the items, so they are compared as counts (a float32 record still matches)."""
    if recorded is None:
        return row
    n = row["items"]
    differ = abs(round(row["accuracy"] * n) - round(recorded * n))
    if differ:
        problems.append(f"{row['task']}: accuracy {row['accuracy']} differs from the recorded {recorded} "
                        f"({differ} correct answers more or fewer, of {n} items)")
    return row | {"recorded_accuracy": recorded, "matches_record": differ == 0}


def run(args: argparse.Namespace) -> int:
    if args.items or args.format_spec or args.log_samples:
        if not args.items:
            raise UserError("--format and --log-samples go with --items")
        return run_items(args)
    if args.split == "all":
        raise UserError("--split all goes with --items")
    args.split = args.split or "test"
    import sys

    from evomerge.search.hf_export import read_hf_manifest

    hf = read_hf_manifest(args.model)
    problems = run_hf_export(args, hf) if hf is not None else run_zoo_export(args)
    for problem in problems:
        print(f"evomerge: error: {problem}", file=sys.stderr)
    return 1 if problems else 0


def run_zoo_export(args: argparse.Namespace) -> list[str]:
    """Reload an export of zoo models, check it and its sources, rescore it; print the rows; the problems."""
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
        rows.append(compare_with_record(row, recorded.get(f"accuracy/{names.get(task.key, '')}") if args.split == "test" else None,
                                        problems))  # fmt: skip
    print(json.dumps(rows, indent=1))
    return problems
