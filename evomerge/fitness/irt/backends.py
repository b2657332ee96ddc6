"""Calibration backends by the names a space file or ``evomerge calibrate --backend`` uses.

Each backend is ``fit(responses, bounds, **options) -> IRTFit`` on a respondents × items matrix
of 0/1 with NaN for unanswered items. ``mml`` (unidimensional 2PL) is the default: on simulated
2PL data it recovers difficulties better and faster than ``pyirt`` (docs/irt.md,
benchmarks/irt_backends.py). ``mirt`` fits the compensatory multidimensional 2PL in D ∈ ``DIMS``
dimensions, D chosen by held-out likelihood in :func:`~evomerge.fitness.calibrate.calibrate`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evomerge.errors import UserError
from evomerge.fitness.irt.fit import FitBounds, IRTFit
from evomerge.fitness.irt.jml import fit_jml
from evomerge.fitness.irt.mirt import fit_mirt
from evomerge.fitness.irt.mml import fit_mml
from evomerge.fitness.irt.pyirt_backend import fit_pyirt
from evomerge.registry import Registry

Backend = Callable[..., IRTFit]
BACKENDS: Registry[Backend] = Registry("IRT backend")
BACKENDS.register("mml")(fit_mml)
BACKENDS.register("pyirt")(fit_pyirt)
BACKENDS.register("mirt")(fit_mirt)
BACKENDS.register("jml")(fit_jml)
DEFAULT_BACKEND = "mml"
#: Multidimensional backends and the dimensions calibration chooses among (the first is the default).
DIMS = {"mirt": (2, 3), "jml": (4, 8, 12)}


def fit(responses: np.ndarray, backend: str = DEFAULT_BACKEND, bounds: FitBounds = FitBounds(),
        dim: int | None = None) -> IRTFit:
    """Fit a 2PL (or, with ``mirt``, a D-dimensional 2PL) with the named backend."""
    fn = BACKENDS.get(backend)
    if backend in DIMS:
        return fn(responses, bounds, dim=dim or DIMS[backend][0])
    if dim not in (None, 1):
        raise UserError(f"IRT backend '{backend}' fits one ability dimension, not {dim}; use 'mirt' or 'jml'")
    return fn(responses, bounds)
