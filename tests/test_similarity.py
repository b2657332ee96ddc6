"""CKA and effective rank against known answers."""

import math

import pytest
import torch

from evomerge.core.similarity import (
    CKA_MEASURES,
    debiased_cka,
    effective_rank,
    hsic_unbiased,
    linear_cka,
    rbf_cka,
)


def _data(n=200, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64)


def _rotation(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64)).Q


@pytest.mark.parametrize("name", ["linear", "rbf", "debiased"])
def test_self_similarity_is_one(name):
    x = _data()
    assert CKA_MEASURES.get(name)(x, x) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("name", ["linear", "rbf", "debiased"])
def test_invariant_to_rotation_scale_and_shift(name):
    x = _data()
    y = 3.5 * x @ _rotation(16) + 2.0
    assert CKA_MEASURES.get(name)(x, y) == pytest.approx(1.0, abs=1e-9)


def test_linear_cka_matches_gram_formula():
    x, y = _data(seed=0), _data(d=9, seed=2) + _data(seed=0)[:, :9]
    xc, yc = x - x.mean(0), y - y.mean(0)
    k, l = xc @ xc.T, yc @ yc.T
    expected = (k * l).sum() / (k.norm() * l.norm())
    assert linear_cka(x, y) == pytest.approx(float(expected), rel=1e-10)


def test_linear_cka_not_invariant_to_anisotropic_scaling():
    x = _data()
    y = x * torch.linspace(0.1, 10, 16, dtype=torch.float64)
    assert linear_cka(x, y) < 0.9


def test_flattens_conv_and_token_shapes():
    x = _data(n=64, d=24)
    assert linear_cka(x.reshape(64, 4, 6), x.reshape(64, 6, 4)) == pytest.approx(1.0, abs=1e-12)


def test_random_features_near_zero_for_large_n():
    x, y = _data(n=4000, d=10, seed=3), _data(n=4000, d=10, seed=4)
    # Biased linear CKA of independent features is about d/n-ish; debiased is centred at 0.
    assert linear_cka(x, y) < 0.01
    assert abs(debiased_cka(x, y)) < 0.005
    assert abs(debiased_cka(x[:400], y[:400], kernel="rbf")) < 0.02


def test_debiased_linear_feature_form_equals_gram_form():
    x, y = _data(n=60, d=8, seed=5), _data(n=60, d=5, seed=6)
    y = y + x[:, :5]
    gram = hsic_unbiased(x @ x.T, y @ y.T) / math.sqrt(hsic_unbiased(x @ x.T, x @ x.T) * hsic_unbiased(y @ y.T, y @ y.T))
    assert debiased_cka(x, y) == pytest.approx(gram, rel=1e-9)


def test_rbf_cka_detects_nonlinear_dependence_better_than_linear():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(500, 1, generator=g, dtype=torch.float64) * 6 - 3
    y = x.pow(2)
    assert rbf_cka(x, y) > linear_cka(x, y) + 0.3


def test_effective_rank_known_answers():
    n = 500
    g = torch.Generator().manual_seed(8)
    # Equal singular values on k orthogonal directions -> effective rank k.
    q = torch.linalg.qr(torch.randn(n, 5, generator=g, dtype=torch.float64)).Q
    q = q - q.mean(0)  # centring keeps the columns (nearly) orthogonal and equal-norm
    x = q @ _rotation(5)
    assert effective_rank(x) == pytest.approx(5.0, abs=0.05)
    rank_one = torch.randn(n, 1, generator=g, dtype=torch.float64) @ torch.randn(1, 12, generator=g, dtype=torch.float64)
    assert effective_rank(rank_one) == pytest.approx(1.0, abs=1e-6)


def test_mismatched_samples_raise():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(_data(n=10), _data(n=11))
    with pytest.raises(ValueError, match="at least 4"):
        debiased_cka(_data(n=3), _data(n=3))
