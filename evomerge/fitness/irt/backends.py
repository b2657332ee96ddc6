"""Calibration backends by the names a space file or ``evomerge calibrate --backend`` uses.

Each backend is ``fit(responses, bounds) -> IRTFit`` on a respondents × items matrix of 0/1
with NaN for unanswered items. ``mml`` is the default: on simulated 2PL data it recovers
difficulties better and faster than ``pyirt`` (docs/irt.md, benchmarks/irt_backends.py).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from evomerge.fitness.irt.fit import FitBounds, IRTFit
from evomerge.fitness.irt.mml import fit_mml
from evomerge.fitness.irt.pyirt_backend import fit_pyirt
from evomerge.registry import Registry

Backend = Callable[..., IRTFit]
BACKENDS: Registry[Backend] = Registry("IRT backend")
BACKENDS.register("mml")(fit_mml)
BACKENDS.register("pyirt")(fit_pyirt)
DEFAULT_BACKEND = "mml"


def fit(responses: np.ndarray, backend: str = DEFAULT_BACKEND, bounds: FitBounds = FitBounds()) -> IRTFit:
    """Fit a 2PL with the named backend."""
    return BACKENDS.get(backend)(responses, bounds)
