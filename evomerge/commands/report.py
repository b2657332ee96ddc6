"""``evomerge report RUN``: plots and a markdown summary of a run folder into ``RUN/report/``."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="write plots and a markdown summary of a run into RUN/report/")
    p.add_argument("run", metavar="RUN", help="run folder (runs/<name>)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.search.report import write_report

    log(f"wrote {write_report(args.run)}")
    return 0
