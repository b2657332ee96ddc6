"""The ``pyirt`` backend: pyirt's EM for the 2PL (Hanson 2000), wrapped so nothing leaks.

pyirt 0.3.4 has process-wide side effects that this module contains:
- importing it compiles a Cython helper with ``pyximport`` into a fixed ``/tmp/pyximport``;
  we install our own import hook first, building into ``<cache>/pyximport`` (pyirt's own
  ``install`` then sees a hook and adds none), and remove the hook after the import;
- its optimizer module runs ``np.seterr(over='raise')`` at import; the previous numpy error
  state is restored afterwards;
- every E and M step starts ``multiprocessing`` processes whose targets are local functions
  (which cannot be pickled under the ``spawn``/``forkserver`` start methods) plus a
  ``Manager`` server process; we run those steps in the calling process instead, through a
  serial stand-in for the ``multiprocessing`` names it uses (pyirt with ``is_parallel=False``
  gives each step a single chunk, so nothing is lost);
- its ``irt()`` entry point configures the root logger at DEBUG with an extra console handler;
  we drive its model class directly with a quiet module logger, and silence its tqdm bars.

Its β is an intercept (P = σ(αθ + β)); :func:`evomerge.fitness.irt.model.from_intercept`
converts. Bounds are passed explicitly: α in ``bounds.a`` and β in the intercept range that
the box ``bounds.a × bounds.b`` implies; difficulties are then clipped to ``bounds.b``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import warnings
from collections.abc import Iterator
from types import ModuleType, SimpleNamespace
from unittest import mock

import numpy as np

from evomerge.cache import cache_dir
from evomerge.fitness.irt.fit import FitBounds, IRTFit, grid_posterior_moments
from evomerge.fitness.irt.model import ItemParams, from_intercept

_LOG = logging.getLogger(__name__)


def _import_pyirt() -> tuple[ModuleType, type]:
    """pyirt's solver module and data class, imported with the build dir and numpy state under our control."""
    import pyximport

    saved_err = np.geterr()
    hooks = pyximport.install(build_dir=str(cache_dir() / "pyximport"), language_level=3)
    try:
        from pyirt.dao import localDAO
        from pyirt.solver import model
    finally:
        pyximport.uninstall(*hooks)
        np.seterr(**saved_err)
    return model, localDAO


class _SerialProcess:
    """Runs the target at ``start()`` in this process; the rest of the Process API is a no-op."""

    def __init__(self, target, args=()):  # noqa: ANN001 - mirrors multiprocessing.Process
        self._target, self._args = target, args

    def start(self) -> None:
        self._target(*self._args)

    def is_alive(self) -> bool:
        return False

    def join(self) -> None:
        pass

    terminate = join


class _SerialValue:
    def __init__(self, _typecode: str, value: float):
        self.value = value

    def get_lock(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()


_SERIAL_MP = SimpleNamespace(
    Process=_SerialProcess, Value=_SerialValue, cpu_count=lambda: 1,
    Manager=lambda: SimpleNamespace(dict=dict),
)


@contextlib.contextmanager
def _contained(model: ModuleType) -> Iterator[None]:
    """pyirt's steps in-process, its progress bars and scipy deprecation warnings off, numpy
    overflow raising as its optimizer expects."""
    quiet_tqdm = functools.partial(model.tqdm, disable=True)
    with mock.patch.object(model, "mp", _SERIAL_MP), mock.patch.object(model, "tqdm", quiet_tqdm), \
            np.errstate(over="raise"), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def fit_pyirt(
    responses: np.ndarray,
    bounds: FitBounds = FitBounds(),
    *,
    n_theta: int = 21,
    max_iter: int = 30,
    tol: float = 1e-4,
    beta_bounds: tuple[float, float] | None = None,
) -> IRTFit:
    """Fit a 2PL with pyirt on a respondents × items matrix of 0/1 with NaN for unanswered items.

    ``beta_bounds`` overrides the intercept range implied by ``bounds`` (pyirt's own default is
    (−2, 2), which clips items with |a b| > 2).
    """
    model, local_dao = _import_pyirt()
    y = np.asarray(responses, dtype=float)
    rows, cols = np.nonzero(~np.isnan(y))
    # pyirt keys users and items by first appearance; string ids keep our order recoverable.
    data = [(f"u{j}", f"i{i}", int(y[j, i])) for j, i in zip(rows, cols)]
    a_hi = bounds.a[1]
    beta_box = list(beta_bounds or (-a_hi * bounds.b[1], -a_hi * bounds.b[0]))
    with _contained(model):
        solver = model.IRT_MMLE_2PL(local_dao(data, _LOG), _LOG, is_parallel=False, mode="debug")
        solver.set_options(list(bounds.theta), n_theta, list(bounds.a), beta_box, max_iter, tol)
        solver.set_guess_param({})
        solver.solve_EM()
        items = solver.get_item_param()
        posterior = solver.posterior_theta_distr
    # pyirt stops at the tolerance, at max_iter, or when its likelihood drops (keeping the last
    # better step); only the first counts as converged.
    ell = solver.ell_list
    converged = len(ell) >= 2 and 0.0 <= ell[-1] - ell[-2] <= tol
    # Items nobody answered get the prior mode a = 1, b = 0 (as in ``mml``); respondents who
    # answered nothing get the grid prior as posterior.
    fitted = [items.get(f"i{i}", {"alpha": 1.0, "beta": 0.0}) for i in range(y.shape[1])]
    params = from_intercept(np.array([f["alpha"] for f in fitted]), np.array([f["beta"] for f in fitted]))
    params = ItemParams(params.a, np.clip(params.b, *bounds.b))
    row_of = {solver.dao.translate("user", k): k for k in range(solver.dao.get_num("user"))}
    prior = np.append(posterior, solver.theta_density[None, :], axis=0)
    order = [row_of.get(f"u{j}", len(posterior)) for j in range(y.shape[0])]
    theta, theta_se = grid_posterior_moments(prior[order], solver.theta_prior_val)
    return IRTFit(params, theta, theta_se, len(ell), converged, "pyirt")
