"""The ``evomerge`` command. Subcommands live in :mod:`evomerge.commands`, one module each.

A :class:`~evomerge.errors.UserError` raised anywhere becomes its message on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from evomerge import __version__
from evomerge.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    import evomerge.commands as commands

    parser = argparse.ArgumentParser(prog="evomerge", description="Evolutionary search for model-merge recipes.")
    parser.add_argument("--version", action="version", version=f"evomerge {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"evomerge.commands.{info.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # inside the try, so a reader that closed the pipe is handled below
        return code
    except UserError as err:
        print(f"evomerge: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("evomerge: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (``| head``): quiet, as the Python docs advise (signal docs)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
