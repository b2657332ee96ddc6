"""``evomerge items FILE --format SPEC``: read an item file as a search would and summarise it.

``SPEC`` is a YAML file holding the format block, or the block inline (``'{type: multiple_choice,
context: question}'``). Prints the kind, the item count per split and the first ids (``--json``:
one object with ``kind``, ``items``, ``splits`` and ``ids``). A malformed line, a missing field or an
unknown format exits 2 naming the file and line.
"""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("items", help="check an item file (JSONL / CSV / parquet) against its format block")
    p.add_argument("path", help="the item file")
    p.add_argument("--format", required=True, dest="format_spec", help="format block: a YAML file or inline YAML")
    p.add_argument("--reader", help="jsonl, csv or parquet (default: from the file's suffix)")
    p.add_argument("--seed", type=int, default=0, help="seed of the validation/test split")
    p.add_argument("--val-fraction", type=float, default=0.5, help="share of unsplit items drawn for validation")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evomerge.items import load_items
    from evomerge.items.readers import format_block
    from evomerge.items.records import parse_format

    block, source = format_block(args.format_spec)
    fmt = parse_format(block, source)
    items = load_items(args.path, fmt, reader=args.reader, seed=args.seed, val_fraction=args.val_fraction)
    splits: dict[str, int] = {}
    for item in items:
        splits[item.split] = splits.get(item.split, 0) + 1
    if args.json:
        print(json.dumps({"kind": items.kind, "items": len(items), "splits": splits, "ids": list(items.ids)}))
    else:
        print(f"{args.path}: {len(items)} {items.kind} items; " + ", ".join(f"{k} {v}" for k, v in sorted(splits.items())))
        for item in items.items[:5]:
            print(f"  {item.id}  {item.split}  {item.where}")
    return 0
