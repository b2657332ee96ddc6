"""``evomerge export RUN --out DIR [--candidate best|ID]``: write a run's candidate as a model folder
(a run over Hugging Face sources: a Hugging Face folder, streamed as ``evomerge merge`` writes one)."""

from __future__ import annotations

import argparse

from evomerge.commands.merge import add_write_options, fixed_mmap_threshold, write_options


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a run's best (or given) candidate as a loadable model folder")
    p.add_argument("run", help="run folder")
    p.add_argument("--out", required=True, help="output folder (model.safetensors, config.json, manifest.json)")
    p.add_argument("--candidate", default="best", help="'best' or a candidate id from evaluations.jsonl")
    add_write_options(p.add_argument_group("runs over Hugging Face sources"))
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.search.run_export import export_candidate

    fixed_mmap_threshold()
    out = export_candidate(args.run, args.out, args.candidate, write_options(args))
    log(f"exported {args.candidate} of {args.run} to {out}")
    return 0
