"""CLI subcommands: each module defines ``register(sub)`` and ``run(args) -> int``."""
