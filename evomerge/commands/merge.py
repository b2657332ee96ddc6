"""``evomerge merge CONFIG --out DIR``: a one-shot merge from a mergekit YAML or an evomerge recipe JSON,
streamed tensor by tensor into a sharded Hugging Face folder (see docs/merge.md)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from evomerge.recipe.stream import WriteOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "merge",
        help="merge models from a mergekit YAML or a recipe JSON into a Hugging Face folder, streaming",
        description="CONFIG is a mergekit YAML (linear, task_arithmetic, ties, dare_ties, dare_linear, passthrough; "
        "mergekit's semantics) or an evomerge recipe JSON (kind weights, layerwise or stack; see docs/recipes.md) "
        "whose models are model folders.",
    )
    p.add_argument("config", help="mergekit YAML (.yaml/.yml) or evomerge recipe JSON (.json)")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty); written only when complete")
    add_write_options(p)
    p.add_argument("--seed", type=int, default=0, help="seed of DARE's random drops (per tensor and model) [0]")
    p.add_argument("--dry-run", action="store_true", help="print the plan and its expected peak memory; write nothing")
    keep = p.add_mutually_exclusive_group()
    keep.add_argument("--keep-embeddings-from", metavar="MODEL", help="merge the backbone only: copy embeddings and LM head (and tokenizer) from MODEL")
    keep.add_argument("--backbone-only", action="store_true", help="as --keep-embeddings-from the base model (a stack's first slot's model)")
    p.set_defaults(func=run)


def add_write_options(p: argparse._ActionsContainer) -> None:
    """The options of how a streamed merge is written (:func:`write_options` reads them)."""
    from evomerge.io.writer import DEFAULT_SHARD_SIZE

    p.add_argument("--max-shard-size", default=DEFAULT_SHARD_SIZE,
                   help=f"byte budget per output shard, e.g. 5GB, 500MB, 2GiB [{DEFAULT_SHARD_SIZE}]")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16", "float64"], help="output dtype (overrides the config's)")
    p.add_argument("--compute-dtype", default="float32", choices=["float32", "float64", "bfloat16", "float16"],
                   help="dtype of the per-tensor math [float32]")  # fmt: skip
    p.add_argument("--device", default="cpu", help="device of the per-tensor math (cpu, cuda, cuda:1) [cpu]")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def write_options(args: argparse.Namespace) -> WriteOptions:
    """The options :func:`add_write_options` added, parsed (a bad size is a UserError naming the option)."""
    from evomerge.io.writer import parse_size
    from evomerge.recipe.stream import DTYPES, WriteOptions

    return WriteOptions(parse_size(args.max_shard_size), DTYPES[args.dtype] if args.dtype else None,
                        DTYPES[args.compute_dtype], args.device, not args.no_progress)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from evomerge.console import log
    from evomerge.errors import ConfigError, UserError
    from evomerge.recipe.stream import execute

    fixed_mmap_threshold()
    path = Path(args.config)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    opts = write_options(args)
    budget, compute, out_dtype = opts.max_shard_bytes, opts.compute_dtype, opts.dtype
    if path.suffix.lower() in (".yaml", ".yml"):
        from evomerge.io.mergekit_config import load_mergekit_config
        from evomerge.recipe.stream import plan_mergekit

        cfg = load_mergekit_config(path)
        keep = args.keep_embeddings_from
        if args.backbone_only:
            if cfg.base_model is None:
                raise ConfigError(str(path), "base_model", "a base model whose embeddings --backbone-only keeps")
            keep = cfg.base_model
        plan = plan_mergekit(cfg, str(path), compute, out_dtype, keep, args.seed, path.read_text())
    elif path.suffix.lower() == ".json":
        from evomerge.recipe.schema import parse_recipe

        try:
            data = json.loads(path.read_text())
        except ValueError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        recipe = parse_recipe(data, str(path))
        first = recipe.model_refs()[0][1]  # the base, or a stack's first slot
        keep = args.keep_embeddings_from or (first if args.backbone_only else None)
        plan = recipe.plan(str(path), out_dtype, compute, keep)
        plan.extra_files["recipe.json"] = json.dumps(recipe.model_dump(mode="json"), indent=2) + "\n"
    else:
        raise UserError(f"{path}: expected a mergekit .yaml/.yml or a recipe .json")

    if args.dry_run:
        print_plan(plan, budget)
        return 0
    execute(plan, args.out, budget, device=opts.device, progress=opts.progress)
    log(f"merged {len(plan.jobs)} tensors ({plan.method}) into {args.out}")
    return 0


def fixed_mmap_threshold(nbytes: int = 1 << 20) -> None:
    """Have glibc serve every allocation of ``nbytes`` or more by its own mmap (``mallopt(M_MMAP_THRESHOLD)``).

    By default glibc raises that threshold to the size of each large block freed (up to 32 MiB), after
    which freed multi-megabyte tensors go back to the heap and fragment it, so a streamed merge's
    resident set creeps above what it holds (measured on TIES over 0.37 GB models: about 200 MB more
    peak RSS, and a run-to-run spread of as much). A fixed threshold returns each tensor's memory to the
    system when it is freed. Elsewhere than glibc this does nothing.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, nbytes)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def print_plan(plan, budget: int) -> None:  # noqa: ANN001 — a MergePlan; imported lazily
    from rich.table import Table

    from evomerge.console import stdout

    gib = 2**30
    largest, largest_bytes = plan.largest()
    width = max(len(j.inputs) for j in plan.jobs)
    stdout.print(f"method: {plan.method}   sources: {', '.join(plan.labels)}")
    table = Table("output tensor", "inputs", "shape", "parameters")
    for job in plan.jobs:
        ins = ", ".join(f"{plan.labels[i].removeprefix('model ')}:{n}" for i, n in job.inputs)
        table.add_row(job.name, ins, str(list(plan.info(job).shape)), job.note or ("copy" if job.combine is None else ""))
    stdout.print(table)
    stdout.print(
        f"{len(plan.jobs)} tensors, {plan.output_bytes() / gib:.3f} GiB out; largest input '{largest}' "
        f"{largest_bytes / gib:.3f} GiB at {str(plan.compute_dtype).removeprefix('torch.')}\n"
        f"expected peak memory: shard budget {budget / gib:.3f} GiB + ({width} inputs + 1) x largest "
        f"= {plan.peak_bytes(budget) / gib:.3f} GiB (plus the interpreter: about 0.25 GiB for torch, 0.45 GiB with the whole command line)"
    )
