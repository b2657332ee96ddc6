"""Multidimensional 2PL: recovery of planted loadings (up to rotation), D-dim MAP and its stderr, estimators."""

import numpy as np
import pytest
from scipy.linalg import orthogonal_procrustes, subspace_angles
from scipy.stats import pearsonr

from evomerge.errors import UserError
from evomerge.fitness.anchors import ANCHORS
from evomerge.fitness.calibrate import calibrate
from evomerge.fitness.estimators import ESTIMATORS
from evomerge.fitness.irt.ability import ThetaPrior, estimate_ability
from evomerge.fitness.irt.backends import fit
from evomerge.fitness.irt.mirt import principal_axes
from evomerge.fitness.irt.model import ItemParams, information, prob
from evomerge.fitness.irt.simulate import simulate_mirt


@pytest.fixture(scope="module")
def planted():
    """1,000 respondents × 200 items, two abilities, 10% of the answers missing."""
    y, params, theta = simulate_mirt(1000, 200, dim=2, seed=3, missing=0.1)
    return y, params, theta, fit(y, "mirt", dim=2)


def test_recovers_planted_loadings_up_to_rotation(planted):
    y, truth, theta, result = planted
    assert result.converged and result.params.dim == 2
    # The loading subspace, ‖a‖ and the intercept d = ‖a‖ b do not depend on the rotation.
    assert np.degrees(subspace_angles(result.params.a, truth.a)).max() < 12  # 8° at this size
    rotation, _ = orthogonal_procrustes(result.params.a, truth.a)
    assert pearsonr((result.params.a @ rotation).ravel(), truth.a.ravel())[0] >= 0.95
    assert pearsonr(result.params.mdisc, truth.mdisc)[0] >= 0.9
    d_hat, d_true = result.params.mdisc * result.params.b, truth.mdisc * truth.b
    assert pearsonr(d_hat, d_true)[0] >= 0.97 and np.abs(d_hat - d_true).mean() < 0.2
    # Predicted probabilities at the respondents' abilities match the generating ones.
    p_fit, p_true = prob(result.theta, result.params), prob(theta, truth)
    assert np.abs(p_fit - p_true).mean() < 0.05


def test_orientation_is_principal_axes(planted):
    a = planted[3].params.a
    gram = a.T @ a
    assert abs(gram[0, 1]) < 1e-6 * gram[0, 0] and gram[0, 0] >= gram[1, 1]
    assert np.all(a.sum(axis=0) > 0)
    rotation = principal_axes(a)
    np.testing.assert_allclose(np.abs(rotation), np.eye(2), atol=1e-6)


def test_calibration_prefers_two_dimensions_to_one(planted):
    y = planted[0]
    one = calibrate(y, holdout=0.2, seed=0).diagnostics
    two = calibrate(y, backend="mirt", holdout=0.2, seed=0, dim=2).diagnostics
    assert two["dim"] == 2 and two["heldout_loglik"] > one["heldout_loglik"] + 0.01
    with pytest.raises(UserError, match="one ability dimension"):
        fit(y, "mml", dim=2)


def test_map_stderr_covers_truth_at_nominal_rate():
    """The D-dim MAP's covariance gives 95% ellipses (χ²₂) that hold the true θ about 95% of the time."""
    _, params, theta = simulate_mirt(1, 150, dim=2, seed=8)
    rng = np.random.default_rng(0)
    thetas = rng.normal(0.0, 1.0, (400, 2))
    y = (rng.random((400, len(params))) < prob(thetas, params)).astype(float)
    hits = []
    for t, row in zip(thetas, y):
        est, cov = estimate_ability(params, row, ThetaPrior(0.0, 1.0))
        diff = est - t
        hits.append(diff @ np.linalg.solve(cov, diff) <= 5.991)
    assert 0.91 <= np.mean(hits) <= 0.98


@pytest.mark.parametrize("name", ["pirt", "greg"])
def test_accuracy_stderr_covers_truth_in_two_dimensions(name):
    y, params, _ = simulate_mirt(300, 2000, dim=2, seed=5)
    truth = y.mean(axis=1)
    hits = []
    for j in range(len(y)):
        anchors = ANCHORS.get("stratified")(params, 50, seed=j)
        est = ESTIMATORS.get(name)(params, anchors.items, y[j, anchors.items], weights=anchors.weights)
        hits.append(abs(est.value - truth[j]) <= 1.96 * est.stderr)
    assert 0.9 <= np.mean(hits) <= 0.99


def test_greg_is_unbiased_under_a_wrong_model():
    """Predictions from a misfitting 1-D bank: the difference estimator's mean error stays at zero."""
    y, params, _ = simulate_mirt(200, 2000, dim=2, seed=6)
    # One ability instead of two, and the first axis's items miscalibrated by one unit of difficulty.
    wrong = ItemParams(params.mdisc, params.b + (np.arange(2000) % 2 == 0))
    truth = y.mean(axis=1)
    err = {"greg": []}
    for j in range(len(y)):
        anchors = ANCHORS.get("random")(wrong, 100, seed=j)
        for name in err:
            err[name].append(ESTIMATORS.get(name)(wrong, anchors.items, y[j, anchors.items]).value - truth[j])
    assert abs(np.mean(err["greg"])) < 0.006  # the mean of 200 errors of sd ~0.04


def test_stratified_anchors_cover_every_dimension():
    _, params, _ = simulate_mirt(1, 1000, dim=2, seed=2)
    main_axis = np.arange(1000) % 2
    anchors = ANCHORS.get("stratified")(params, 20, seed=0)
    assert len(anchors.items) == 20 and np.isclose(anchors.weights.sum(), 1.0)
    assert 8 <= np.sum(main_axis[anchors.items] == 0) <= 12
    assert information(np.zeros(2), params).shape == (1000,)


def test_neyman_anchors_favour_uncertain_items():
    """Neyman allocation: items everyone answers alike (S_i ≈ 0) get few anchors, weights still sum to one."""
    params = ItemParams(np.ones(1000), np.r_[np.full(500, -8.0), np.linspace(-1, 1, 500)])
    anchors = ANCHORS.get("neyman")(params, 20, seed=0)
    assert np.isclose(anchors.weights.sum(), 1.0) and len(np.unique(anchors.items)) == len(anchors.items)
    assert np.sum(anchors.items < 500) <= 2
