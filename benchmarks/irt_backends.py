"""Compare the IRT calibration backends on simulated 2PL data with known parameters.

For each shape (respondents x items) and seed, every backend fits the same response matrix;
we report the Pearson correlation of fitted with true difficulties and discriminations, the RMSE
of the difficulties, and the wall time. ``pyirt_defaults`` is pyirt with its own defaults
(11-point ability grid on [-4, 4], alpha in [0.25, 2], beta in [-2, 2]); ``pyirt`` is our wrapper's
settings (21 points on [-6, 6], the shared bounds). The last rows time ``mml`` alone on a bank
the size of a real validation split (pyirt would take minutes there).

Then the multidimensional backends on simulated D-dimensional 2PL data (``MIRT_SHAPE``, 10% missing):
``mirt`` (grid EM, D <= 3) and ``jml`` (joint MAP) fitted in the true D, and ``mirt`` in D = 3 where
the truth has 6 (grid EM cannot go further): mean absolute error and correlation of the fitted
P(correct) at the fitted abilities against the true P at the true abilities, and wall time.

    OMP_NUM_THREADS=1 python benchmarks/irt_backends.py [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy.stats import pearsonr  # noqa: E402

from evomerge.fitness.irt.fit import FitBounds  # noqa: E402
from evomerge.fitness.irt.jml import fit_jml  # noqa: E402
from evomerge.fitness.irt.mirt import fit_mirt  # noqa: E402
from evomerge.fitness.irt.mml import fit_mml  # noqa: E402
from evomerge.fitness.irt.model import prob  # noqa: E402
from evomerge.fitness.irt.pyirt_backend import fit_pyirt  # noqa: E402
from evomerge.fitness.irt.simulate import simulate_2pl, simulate_mirt  # noqa: E402

CONFIGS = {
    "mml": lambda y: fit_mml(y),
    "pyirt": lambda y: fit_pyirt(y),
    "pyirt_defaults": lambda y: fit_pyirt(y, FitBounds(a=(0.25, 2.0), theta=(-4.0, 4.0)), n_theta=11,
                                          max_iter=10, tol=1e-3, beta_bounds=(-2.0, 2.0)),
}
SHAPES = [(200, 500), (500, 500)]
LARGE = (400, 14_000)
MIRT_SHAPE = (500, 1000)
MIRT_CASES = [(3, "mirt", 3), (3, "jml", 3), (6, "mirt", 3), (6, "jml", 6)]  # (true D, backend, fitted D)


def measure_mirt(true_dim: int, backend: str, dim: int, seed: int) -> dict:
    y, truth, theta = simulate_mirt(*MIRT_SHAPE, dim=true_dim, seed=seed, missing=0.1)
    start = time.perf_counter()
    result = (fit_mirt if backend == "mirt" else fit_jml)(y, dim=dim)
    wall = time.perf_counter() - start
    p_fit, p_true = prob(result.theta, result.params), prob(theta, truth)
    return {"true_dim": true_dim, "backend": backend, "dim": dim, "seed": seed,
            "p_mae": float(np.abs(p_fit - p_true).mean()), "p_pearson": float(pearsonr(p_fit.ravel(), p_true.ravel())[0]),
            "wall_s": wall, "n_iter": result.n_iter, "converged": bool(result.converged)}


def measure(name: str, y: np.ndarray, truth, shape, seed: int) -> dict:
    start = time.perf_counter()
    result = CONFIGS[name](y)
    wall = time.perf_counter() - start
    b, a = result.params.b, result.params.a
    return {"backend": name, "respondents": shape[0], "items": shape[1], "seed": seed,
            "pearson_b": float(pearsonr(b, truth.b)[0]), "pearson_a": float(pearsonr(a, truth.a)[0]),
            "rmse_b": float(np.sqrt(np.mean((b - truth.b) ** 2))), "wall_s": wall,
            "n_iter": result.n_iter, "converged": bool(result.converged)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for shape in SHAPES:
        for seed in range(args.seeds):
            y, truth, _ = simulate_2pl(*shape, seed=seed)
            rows += [measure(name, y, truth, shape, seed) for name in CONFIGS]
    y, truth, _ = simulate_2pl(*LARGE, seed=0)
    rows.append(measure("mml", y, truth, LARGE, 0))

    summary: dict = {"default_backend": "mml"}
    print(f"{'shape':>12} {'backend':>15} {'pearson_b':>9} {'pearson_a':>9} {'rmse_b':>7} {'wall_s':>7} "
          f"{'time / mml':>10} {'r_b - mml':>9}")
    for shape in [*SHAPES, LARGE]:
        key = f"{shape[0]}x{shape[1]}"
        sel = {n: [r for r in rows if (r["respondents"], r["items"]) == shape and r["backend"] == n] for n in CONFIGS}
        mean = {n: {m: float(np.mean([r[m] for r in rs])) for m in ("pearson_b", "pearson_a", "rmse_b", "wall_s")}
                for n, rs in sel.items() if rs}
        for n, m in mean.items():
            ratio = m["wall_s"] / mean["mml"]["wall_s"]
            print(f"{key:>12} {n:>15} {m['pearson_b']:9.4f} {m['pearson_a']:9.3f} {m['rmse_b']:7.3f} "
                  f"{m['wall_s']:7.2f} {ratio:10.1f} {m['pearson_b'] - mean['mml']['pearson_b']:+9.4f}")
        summary[key] = mean
    summary["pyirt_time_ratio_500x500"] = summary["500x500"]["pyirt"]["wall_s"] / summary["500x500"]["mml"]["wall_s"]

    mirt_rows = [measure_mirt(*case, seed) for case in MIRT_CASES for seed in range(args.seeds)]
    print(f"\nMultidimensional, {MIRT_SHAPE[0]} x {MIRT_SHAPE[1]}, 10% missing; fitted vs true P(correct)")
    print(f"{'true D':>6} {'backend':>7} {'D':>2} {'P MAE':>6} {'P r':>6} {'wall_s':>7} {'time / mirt D=3':>15}")
    base = np.mean([r["wall_s"] for r in mirt_rows if (r["true_dim"], r["backend"]) == (3, "mirt")])
    for true_dim, backend, dim in MIRT_CASES:
        sel = [r for r in mirt_rows if (r["true_dim"], r["backend"], r["dim"]) == (true_dim, backend, dim)]
        m = {k: float(np.mean([r[k] for r in sel])) for k in ("p_mae", "p_pearson", "wall_s")}
        print(f"{true_dim:6d} {backend:>7} {dim:2d} {m['p_mae']:6.3f} {m['p_pearson']:6.3f} {m['wall_s']:7.2f} "
              f"{m['wall_s'] / base:15.2f}")
        summary[f"mirt_true{true_dim}_{backend}_d{dim}"] = m
    rows += mirt_rows
    out = {"benchmark": "irt_backends", "command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
           "rows": rows, "summary": summary}
    path = Path(__file__).parent / "results" / "irt_backends.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
