"""2PL calibration: both backends recover planted parameters; conventions convert consistently."""

import numpy as np
import pytest
from scipy.stats import pearsonr

from evomerge.errors import UserError
from evomerge.fitness.calibrate import calibrate, item_flags
from evomerge.fitness.irt.ability import ThetaPrior, estimate_theta
from evomerge.fitness.irt.backends import BACKENDS, fit
from evomerge.fitness.irt.fit import FitBounds
from evomerge.fitness.irt.mml import fit_mml
from evomerge.fitness.irt.model import ItemParams, from_intercept, information, prob, to_catsim, to_intercept
from evomerge.fitness.irt.simulate import simulate_2pl


@pytest.fixture(scope="module")
def sim500():
    return simulate_2pl(500, 200, seed=1)


def test_probability_and_information_known_values():
    p = ItemParams(np.array([2.0, 1.0]), np.array([0.5, -1.0]))
    # θ = b gives P = 1/2 and information a²/4.
    np.testing.assert_allclose(prob(0.5, p)[0], 0.5)
    np.testing.assert_allclose(information(-1.0, p)[1], 0.25)
    np.testing.assert_allclose(prob(0.0, p), [1 / (1 + np.e), 1 / (1 + np.exp(-1.0))])


def test_intercept_and_catsim_conventions_round_trip():
    from catsim import irt as catsim_irt

    p = ItemParams(np.array([0.7, 1.5, 2.2]), np.array([-1.2, 0.0, 0.9]))
    alpha, beta = to_intercept(p)
    # pyirt's σ(αθ + β) equals ours at every θ, and converting back is exact.
    theta = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(1 / (1 + np.exp(-(alpha * theta[:, None] + beta))), prob(theta, p))
    back = from_intercept(alpha, beta)
    np.testing.assert_allclose(back.b, p.b)
    rows = to_catsim(p)
    for t in theta:
        np.testing.assert_allclose(catsim_irt.icc_hpc(t, rows), prob(t, p))
        np.testing.assert_allclose(catsim_irt.inf_hpc(t, rows), information(t, p))


def test_mml_recovers_planted_parameters(sim500):
    y, truth, theta = sim500
    result = fit_mml(y)
    assert result.converged
    assert pearsonr(result.params.b, truth.b)[0] >= 0.95
    assert pearsonr(result.params.a, truth.a)[0] >= 0.7
    assert pearsonr(result.theta, theta)[0] >= 0.95
    # The scale is fixed by the N(0, 1) ability prior, so the difficulties match in level too.
    assert abs(np.mean(result.params.b - truth.b)) < 0.15


def test_mml_handles_missing_and_constant_items():
    y, truth, _ = simulate_2pl(400, 120, seed=2, missing=0.3)
    y[:, 0] = np.where(np.isnan(y[:, 0]), np.nan, 1.0)
    y[:, 1] = np.where(np.isnan(y[:, 1]), np.nan, 0.0)
    bounds = FitBounds()
    result = fit_mml(y, bounds)
    assert np.all(np.isfinite(result.params.a)) and np.all(np.isfinite(result.params.b))
    assert bounds.b[0] <= result.params.b.min() and result.params.b.max() <= bounds.b[1]
    assert result.params.b[0] < -2.5 and result.params.b[1] > 2.5  # pushed out, but finite
    assert pearsonr(result.params.b[2:], truth.b[2:])[0] >= 0.93


def test_both_backends_on_the_same_data_against_the_truth():
    y, truth, _ = simulate_2pl(300, 60, seed=3)
    r = {name: pearsonr(fit(y, name).params.b, truth.b)[0] for name in ("mml", "pyirt")}
    assert r["mml"] >= 0.95
    assert r["pyirt"] >= 0.9
    assert r["mml"] >= r["pyirt"] - 0.01


def test_pyirt_backend_leaks_nothing():
    import logging
    import sys

    y, _, _ = simulate_2pl(40, 15, seed=4)
    before_err, before_hooks = np.geterr(), list(sys.meta_path)
    root = logging.getLogger()
    before_log = (root.level, list(root.handlers))
    result = fit(y, "pyirt")
    assert np.all(np.isfinite(result.params.b))
    assert np.geterr() == before_err
    assert sys.meta_path == before_hooks
    assert (root.level, list(root.handlers)) == before_log


def test_unknown_backend_lists_valid_names():
    with pytest.raises(UserError, match="mml, pyirt"):
        BACKENDS.get("nope")


def test_map_ability_and_stderr():
    p = ItemParams(np.ones(400), np.zeros(400))
    # 300 of 400 correct on identical items: ML θ = logit(0.75); se = 1/sqrt(Σ P(1-P)).
    y = np.r_[np.ones(300), np.zeros(100)]
    theta, se = estimate_theta(p, y, ThetaPrior(sd=np.inf))
    np.testing.assert_allclose(theta, np.log(3), atol=1e-3)
    np.testing.assert_allclose(se, 1 / np.sqrt(400 * 0.75 * 0.25), rtol=1e-3)
    # A prior N(0, 1) shrinks towards 0 and adds precision 1.
    theta_map, se_map = estimate_theta(p, y, ThetaPrior(0.0, 1.0))
    assert 0 < theta_map < theta and se_map < se


def test_calibrate_reports_heldout_quality_and_flags(sim500):
    y, _, _ = sim500
    y = y.copy()
    y[:, 5] = 1.0
    cal = calibrate(y, holdout=0.2, seed=0)
    d = cal.diagnostics
    assert d["n_heldout"] == 100 and d["n_train"] == 400
    assert d["heldout_auc"] > 0.75
    assert d["heldout_loglik"] > d["heldout_loglik_item_means"]  # abilities explain something
    assert cal.flags[5] == ["all_correct"]
    assert len(cal.fit.params) == y.shape[1]  # flagged items are kept


def test_item_flags_and_bad_holdout():
    y = np.array([[1, 0, np.nan, 1], [1, 0, np.nan, 0]], dtype=float)
    assert item_flags(y) == [["all_correct"], ["all_wrong"], ["unanswered"], []]
    with pytest.raises(UserError, match="holdout"):
        calibrate(y, holdout=1.0)


@pytest.mark.parametrize("backend", ["mml", "pyirt"])
def test_unanswered_items_and_silent_respondents(backend):
    y, _, _ = simulate_2pl(60, 20, seed=12)
    y[:, 3] = np.nan
    y[7] = np.nan
    result = fit(y, backend)
    assert np.all(np.isfinite(result.params.a)) and np.all(np.isfinite(result.params.b))
    assert abs(result.params.b[3]) < 0.5 and abs(np.log(result.params.a[3])) < 0.5  # stays at the prior
    # Its posterior is the population distribution (pyirt re-estimates it, mml keeps N(0, 1)).
    assert abs(result.theta[7]) < 0.5 and 0.7 < result.theta_se[7] < 1.3
