"""Joint-MAP multidimensional 2PL (``jml``): planted structure recovered, scale standardised, D chosen by data."""

import numpy as np
import pytest
from scipy.linalg import subspace_angles
from scipy.stats import pearsonr

from evomerge.errors import UserError
from evomerge.fitness.anchors import ANCHORS, item_sd
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.estimators import ESTIMATORS
from evomerge.fitness.irt.backends import fit
from evomerge.fitness.irt.model import prob
from evomerge.fitness.irt.simulate import simulate_mirt


@pytest.fixture(scope="module")
def planted():
    """600 respondents × 400 items on four abilities, 10% of the answers missing."""
    y, params, theta = simulate_mirt(600, 400, dim=4, seed=5, missing=0.1)
    return y, params, theta, fit(y, "jml", dim=4)


def test_recovers_planted_structure(planted):
    y, truth, theta, result = planted
    assert result.converged and result.backend == "jml" and result.params.dim == 4
    assert np.degrees(subspace_angles(result.params.a, truth.a)).max() < 15
    d_hat, d_true = result.params.mdisc * result.params.b, truth.mdisc * truth.b
    assert pearsonr(d_hat, d_true)[0] >= 0.95
    p_fit, p_true = prob(result.theta, result.params), prob(theta, truth)
    assert np.abs(p_fit - p_true).mean() < 0.05


def test_ability_scale_is_the_population_standard(planted):
    """After standardisation the abilities have mean 0 and, with their posterior spread, covariance I."""
    result = planted[3]
    theta, se = result.theta, result.theta_se
    np.testing.assert_allclose(theta.mean(axis=0), 0.0, atol=1e-6)
    total = np.cov(theta.T, bias=True) + np.diag((se**2).mean(axis=0))
    np.testing.assert_allclose(np.diag(total), 1.0, atol=0.1)
    assert np.all(se > 0) and np.all(se < 1)


def test_calibration_chooses_dimension_by_heldout_likelihood(planted):
    y = planted[0]
    diag = calibrate(y, backend="jml", holdout=0.2, seed=0).diagnostics
    assert {f"heldout_loglik_dim{d}" for d in (4, 8, 12)} <= diag.keys()
    assert diag["heldout_loglik_dim4"] > diag["heldout_loglik_dim12"]  # twelve dimensions overfit four
    assert diag["dim"] in (4, 8)
    with pytest.raises(UserError, match="at least 2 dimensions"):
        fit(y, "jml", dim=1)


def test_constant_items_keep_their_intercept():
    """An item everyone answers right stays predicted right (its slope rises rather than d being clipped)."""
    y, _, _ = simulate_mirt(300, 120, dim=2, seed=1)
    y[:, 0], y[:, 1] = 1.0, 0.0
    result = fit(y, "jml", dim=2)
    p = prob(result.theta, result.params)
    assert p[:, 0].min() > 0.95 and p[:, 1].max() < 0.05
    assert np.all(np.abs(result.params.b) <= 6.0 + 1e-9)


def test_estimators_and_anchors_work_in_high_dimension(planted):
    """pirt from 100 random anchors on the 4-D bank tracks each respondent's accuracy; item sd is a
    quasi-Monte-Carlo expectation past three dimensions."""
    y, truth, theta, result = planted
    p_true = prob(theta, truth)
    sd = item_sd(result.params)
    assert sd.shape == (400,) and np.all((sd > 0) & (sd <= 0.5))
    anchors = ANCHORS.get("neyman")(result.params, 50, seed=0)
    assert len(anchors.items) == 50 and abs(anchors.weights.sum() - 1) < 1e-9
    rng = np.random.default_rng(0)
    errors = []
    for j in range(40):
        items = rng.choice(400, 100, replace=False)
        truth_acc = p_true[j].mean()
        answers = (rng.random(100) < p_true[j, items]).astype(float)
        errors.append(ESTIMATORS.get("pirt")(result.params, items, answers).value - truth_acc)
    assert np.abs(np.mean(errors)) < 0.02 and np.mean(np.abs(errors)) < 0.05
