"""``evomerge calibrate RUN [RUN ...] --task T --out item_banks/NAME.json``: fit an item bank."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate", help="fit an IRT item bank (2PL or multidimensional 2PL) on the response matrices of past runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders (runs/<name>) holding responses.jsonl")
    p.add_argument("--task", required=True, help="task key dataset/condition, e.g. mnist1d/all")
    p.add_argument("--out", required=True, help="bank file to write, e.g. item_banks/mnist1d_all.json")
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
    from evomerge.fitness.bank import bank_from_calibration, save_bank
    from evomerge.fitness.calibrate import calibrate
    from evomerge.fitness.irt.backends import BACKENDS
    from evomerge.fitness.responses import read_responses

    BACKENDS.get(args.backend)
    matrix = read_responses(args.runs, args.task, args.split)
    log(f"{args.task} ({args.split}): {len(matrix.candidates)} candidates x {len(matrix.item_ids)} items "
        f"from {len(matrix.sources)} run(s)")
    calibration = calibrate(matrix.values, backend=args.backend, holdout=args.holdout, seed=args.seed, dim=args.dim,
                            progress=True)
    path = save_bank(bank_from_calibration(calibration, matrix), args.out)
    d = calibration.diagnostics
    quality = (f"held-out loglik {d['heldout_loglik']:.4f} (item means {d['heldout_loglik_item_means']:.4f}), "
               f"AUC {d['heldout_auc']:.3f}, accuracy MAE {d['heldout_mae']:.4f}") if d["n_heldout"] else "no hold-out"
    log(f"{args.backend}: {quality}; {d['n_flagged']} items flagged; wrote {path}")
    return 0
