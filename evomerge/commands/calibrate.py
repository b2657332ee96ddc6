"""``evomerge calibrate RUN [RUN ...] --task T --out item_banks/NAME.json``: fit an item bank;
``--from lm-eval|details|long|wide|pyirt PATH ...`` reads the responses from logs and tables instead."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit an IRT item bank (2PL or multidimensional 2PL) on the response matrices "
                       "of past runs, or of lm-eval logs, leaderboard details and tables (--from)")
    p.add_argument("runs", nargs="+", metavar="PATH", help="run folders (runs/<name>) holding responses.jsonl; "
                   "with --from, the files or folders that reader reads")
    p.add_argument("--task", required=True, help="task key dataset/condition, e.g. mnist1d/all; with --from, the "
                   "task's name in the logs (lm-eval's task name, a table's task column)")
    p.add_argument("--out", required=True, help="bank file to write, e.g. item_banks/mnist1d_all.json")
    p.add_argument("--from", dest="reader", metavar="FORMAT", help="read past evaluations instead of run folders: "
                   "lm-eval (--log_samples output), details (Open LLM Leaderboard parquet), long, wide, pyirt; "
                   "see docs/run_logs.md")
    p.add_argument("--filter", help="--from lm-eval/details: the filter to read (default: none, else the log's only one)")
    p.add_argument("--metric", help="--from lm-eval/details: the metric to read (default: the task's first)")
    p.add_argument("--join-on", help="--from details, v1 files: the content field that identifies an item across "
                   "models (e.g. example, full_prompt)")
    p.add_argument("--threshold", type=float, default=0.5, help="--from: a score s counts as correct when s >= this "
                   "(default 0.5)")
    p.add_argument("--keep-probabilities", action="store_true", help="--from: keep scores in [0, 1] as probabilities "
                   "instead of cutting them at --threshold (backend mml only)")
    p.add_argument("--split", default="val", choices=["val", "test"], help="item split (default val)")
    p.add_argument("--backend", default="mml", help="calibration backend: mml (1-D 2PL, default), pyirt, mirt "
                   "(multidimensional 2PL by grid EM, D <= 3) or jml (by joint MAP, any D); see docs/irt.md")
    p.add_argument("--dim", type=int, help="mirt and jml: ability dimensions (default: chosen by held-out "
                   "likelihood among 2, 3 for mirt and 4, 8, 12 for jml)")
    p.add_argument("--holdout", type=float, default=0.2, help="share of candidates held out for fit quality")
    p.add_argument("--seed", type=int, default=0, help="seed of the hold-out split")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from evomerge.console import log
    from evomerge.errors import UserError
    from evomerge.fitness.bank import bank_from_calibration, save_bank
    from evomerge.fitness.calibrate import calibrate
    from evomerge.fitness.irt.backends import BACKENDS
    from evomerge.fitness.readers import ReadOptions, read_matrix
    from evomerge.fitness.responses import read_responses

    BACKENDS.get(args.backend)
    if args.reader is None:
        given = [f"--{k.replace('_', '-')}" for k in ("filter", "metric", "join_on") if getattr(args, k)]
        if given or args.keep_probabilities:
            raise UserError(f"{', '.join(given or ['--keep-probabilities'])}: only with --from")
        matrix = read_responses(args.runs, args.task, args.split)
        where = f"{len(matrix.sources)} run(s)"
    else:
        if not 0.0 < args.threshold <= 1.0:
            raise UserError(f"--threshold: expected a score in (0, 1], got {args.threshold}")
        if args.keep_probabilities and args.backend != "mml":
            raise UserError(f"--keep-probabilities: backend 'mml' fits soft responses; '{args.backend}' needs 0/1")
        options = ReadOptions(task=args.task, split=args.split, filter=args.filter, metric=args.metric,
                              join_on=args.join_on, threshold=args.threshold, keep_probabilities=args.keep_probabilities)
        matrix = read_matrix(args.reader, args.runs, options)
        where = f"{len(matrix.sources)} file(s) ({', '.join(f'{k} {v}' for k, v in matrix.info.items())})"
    log(f"{args.task} ({args.split}): {len(matrix.candidates)} candidates x {len(matrix.item_ids)} items from {where}")
    calibration = calibrate(matrix.values, backend=args.backend, holdout=args.holdout, seed=args.seed, dim=args.dim,
                            progress=True)
    path = save_bank(bank_from_calibration(calibration, matrix), args.out)
    d = calibration.diagnostics
    quality = (f"held-out loglik {d['heldout_loglik']:.4f} (item means {d['heldout_loglik_item_means']:.4f}), "
               f"AUC {d['heldout_auc']:.3f}, accuracy MAE {d['heldout_mae']:.4f}") if d["n_heldout"] else "no hold-out"
    log(f"{args.backend}: {quality}; {d['n_flagged']} items flagged; wrote {path}")
    return 0
