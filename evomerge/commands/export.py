"""``evomerge export RUN --out DIR [--candidate best|ID]``: write a run's candidate as a model folder."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's best (or given) candidate as a loadable model folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, manifest.json)")
    p.add_argument("--candidate", default="best", help="'best' or a candidate id from evaluations.jsonl")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.search.run_export import export_candidate

    out = export_candidate(args.run, args.out, args.candidate)
    log(f"exported {args.candidate} of {args.run} to {out}")
    return 0
