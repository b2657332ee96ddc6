"""Aligners: a conformance suite every registered aligner inherits, plus known answers."""

import pytest
import torch
from torch import nn

from evomerge.core.align import ALIGNERS, ConditionPair, Layout, make_aligner
from evomerge.core.align.cca import cca
from evomerge.core.align.gromov import gromov_plan
from evomerge.core.align.ot import transport_plan
from evomerge.errors import UserError

D64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def orthonormal(rows, cols, seed, dtype=torch.float32):
    """A (rows, cols) matrix with orthonormal columns (or rows, if wider than tall)."""
    big, small = max(rows, cols), min(rows, cols)
    q = torch.linalg.qr(torch.randn(big, small, generator=gen(seed), dtype=D64)).Q
    return (q if rows >= cols else q.T).to(dtype)


def linear_pair(n, fa, fb, seed=0, noise=0.01):
    """``b = 2·a Q + 1 + noise``: a relation every aligner can learn."""
    a = torch.randn(n, fa, generator=gen(seed))
    b = 2 * a @ orthonormal(fa, fb, seed + 1) + 1 + noise * torch.randn(n, fb, generator=gen(seed + 2))
    return a, b


# Layer shapes (no batch), kinds, and the expected per-position / flat reading.
SHAPES = {
    "mlp": ((12,), (10,), ("vector", "vector")),
    "conv": ((4, 6), (5, 6), ("conv", "conv")),
    "conv2d": ((3, 2, 3), (4, 2, 3), ("conv", "conv")),
    "tokens": ((6, 4), (6, 5), ("tokens", "tokens")),
    "conv_to_tokens": ((4, 6), (6, 5), ("conv", "tokens")),
    "conv_to_vector": ((4, 6), (10,), ("conv", "vector")),
}


def shaped_pair(name, n=96, seed=0):
    sa, sb, kinds = SHAPES[name]
    la, lb = Layout.of(sa, kinds[0]), Layout.of(sb, kinds[1])
    if not (la.positional and lb.positional and la.positions == lb.positions):
        la, lb = la.flat(), lb.flat()
    ra, rb = linear_pair(n * la.positions, la.features, lb.features, seed)
    return la.from_rows(ra, n), lb.from_rows(rb, n), kinds


class AlignerConformance:
    """Behaviour every aligner must show. Subclasses set ``name`` and fast ``params``."""

    name: str = ""
    params: dict = {}
    max_error_ratio = 0.2

    def make(self, **extra):
        return make_aligner(self.name, **{**self.params, **extra})

    @pytest.mark.parametrize("shape", list(SHAPES))
    def test_shapes_round_trip(self, shape):
        a, b, kinds = shaped_pair(shape)
        al = self.make().fit((a, b), kinds=kinds)
        out = al.transform(a[:7])
        assert out.shape == (7, *b.shape[1:])
        assert out.dtype == torch.float32
        assert al.as_module()(a[:7]).shape == out.shape

    def test_fit_reduces_error_vs_trivial_map(self):
        a, b = linear_pair(400, 12, 10)
        al = self.make().fit((a, b))
        err = (al.transform(a) - b).pow(2).mean()
        trivial = (b - b.mean(0)).pow(2).mean()  # best constant map
        assert err < self.max_error_ratio * trivial

    def test_deterministic_under_seed(self):
        a, b = linear_pair(300, 12, 10, noise=0.3)
        out1 = self.make(seed=3).fit((a, b)).transform(a)
        out2 = self.make(seed=3).fit((a, b)).transform(a)
        assert torch.equal(out1, out2)

    def test_module_is_trainable_and_independent(self):
        a, b = linear_pair(200, 12, 10)
        al = self.make().fit((a, b))
        mod = al.as_module()
        assert isinstance(mod, nn.Module)
        params = [p for p in mod.parameters() if p.requires_grad]
        assert sum(p.numel() for p in params) == al.num_params > 0
        before = al.transform(a)
        with torch.no_grad():
            for p in params:
                p.add_(1.0)
        assert torch.equal(al.transform(a), before)
        assert not torch.allclose(mod(a), before)

    def test_condition_means(self):
        a, b = linear_pair(300, 12, 10)
        pairs = [ConditionPair(a[:150], b[:150], 1.0, "x"), ConditionPair(a[150:] + 3, b[150:] - 2, 1.0, "y")]
        al = self.make().fit(pairs)
        mod_y = al.as_module(condition="y")
        assert torch.allclose(mod_y.shift_a, (a[150:] + 3).mean(0), atol=1e-5)
        assert torch.allclose(mod_y.shift_b, (b[150:] - 2).mean(0), atol=1e-5)
        with pytest.raises(UserError, match="fitted condition"):
            al.as_module(condition="z")

    def test_errors(self):
        with pytest.raises(RuntimeError, match="not fitted"):
            self.make().transform(torch.zeros(2, 12))
        with pytest.raises(ValueError, match="rows"):
            self.make().fit((torch.zeros(5, 3), torch.zeros(6, 3)))
        with pytest.raises(UserError, match="bad parameters"):
            make_aligner(self.name, no_such_parameter=1)


class TestProcrustes(AlignerConformance):
    name = "procrustes"


class TestCCA(AlignerConformance):
    name = "cca"


class TestRidge(AlignerConformance):
    name = "ridge"


class TestLowRank(AlignerConformance):
    name = "lowrank"
    params = {"rank": 10}


class TestOTEMD(AlignerConformance):
    name = "ot_emd"
    params = {"max_points": 200}


class TestOTSinkhorn(AlignerConformance):
    name = "ot_sinkhorn"
    params = {"max_points": 200}


class TestGromov(AlignerConformance):
    name = "gromov"
    params = {"max_points": 100}


class TestMLP(AlignerConformance):
    name = "mlp"
    params = {"epochs": 3, "hidden": 16}


def test_every_registered_aligner_has_a_conformance_class():
    covered = {cls.name for cls in AlignerConformance.__subclasses__()}
    assert covered == set(ALIGNERS.names())


def test_unknown_aligner_is_a_user_error():
    with pytest.raises(UserError, match="unknown aligner 'nope'; valid: cca"):
        make_aligner("nope")


# ---- known answers -------------------------------------------------------------------------


def test_procrustes_recovers_rotation_scale_and_offset():
    a = torch.randn(500, 16, generator=gen(0), dtype=D64)
    r = orthonormal(16, 16, 1, D64)
    b = 2.5 * a @ r - 4.0
    al = make_aligner("procrustes").fit((a, b))
    w = al.as_module().core.weight.T.to(D64)
    assert (w / 2.5 - r).abs().max() < 1e-5
    assert (al.transform(a).to(D64) - b).abs().max() < 1e-4


@pytest.mark.parametrize("fa,fb", [(8, 12), (12, 8)])
def test_procrustes_semi_orthogonal_when_widths_differ(fa, fb):
    a = torch.randn(400, fa, generator=gen(2), dtype=D64)
    q = orthonormal(fa, fb, 3, D64)
    b = a @ q
    w = make_aligner("procrustes", scale=False).fit((a, b)).as_module().core.weight.T.to(D64)
    if fa < fb:  # an isometric embedding: recovered exactly
        assert (w - q).abs().max() < 1e-5
    small = min(fa, fb)
    gram = w.T @ w if fa >= fb else w @ w.T
    assert torch.allclose(gram, torch.eye(small, dtype=D64), atol=1e-5)


def test_cca_recovers_planted_components():
    n, k = 3000, 3
    z = torch.randn(n, k, generator=gen(4), dtype=D64)
    z = z - z.mean(0)
    a = torch.cat([z, torch.randn(n, 5, generator=gen(5), dtype=D64)], 1) @ torch.randn(8, 8, generator=gen(6), dtype=D64)
    zb = z @ torch.randn(k, k, generator=gen(7), dtype=D64)
    b = torch.cat([zb, torch.randn(n, 6, generator=gen(8), dtype=D64)], 1) @ torch.randn(9, 9, generator=gen(9), dtype=D64)
    a, b = a - a.mean(0), b - b.mean(0)
    res = cca(a, b, torch.full((n,), 1 / n, dtype=D64), reg=0.0)
    assert res.corr[:k].min() > 0.999
    assert res.corr[k] < 0.1
    # The top canonical variables of A span the planted components.
    u = a @ res.pa[:, :k]
    coef = torch.linalg.lstsq(u, z).solution
    assert (u @ coef - z).pow(2).sum() / z.pow(2).sum() < 1e-6
    # Canonical variables have unit variance and are paired.
    assert torch.allclose(u.T @ u / n, torch.eye(k, dtype=D64), atol=1e-6)


def test_cca_with_all_components_and_no_ridge_is_least_squares():
    a, b = linear_pair(500, 8, 6, noise=0.5)
    out_cca = make_aligner("cca", reg=0.0).fit((a, b)).transform(a)
    out_ols = make_aligner("ridge", alpha=0.0).fit((a, b)).transform(a)
    assert torch.allclose(out_cca, out_ols, atol=1e-4)


def test_ridge_equals_normal_equations():
    a = torch.randn(300, 7, generator=gen(10), dtype=D64)
    b = a @ torch.randn(7, 4, generator=gen(11), dtype=D64) + 0.3 * torch.randn(300, 4, generator=gen(12), dtype=D64) + 2
    x = torch.cat([a, torch.ones(300, 1, dtype=D64)], 1)
    theta = torch.linalg.solve(x.T @ x, x.T @ b)  # normal equations with an intercept
    mod = make_aligner("ridge", alpha=0.0).fit((a, b)).as_module()
    w = mod.core.weight.T.to(D64)
    assert torch.allclose(w, theta[:7], atol=1e-5)
    assert torch.allclose(mod(a.float()).to(D64), x @ theta, atol=1e-4)


def test_ridge_shrinks_toward_zero():
    a, b = linear_pair(200, 8, 5)
    small = make_aligner("ridge", alpha=0.0).fit((a, b)).as_module().core.weight.norm()
    big = make_aligner("ridge", alpha=10.0).fit((a, b)).as_module().core.weight.norm()
    assert big < 0.5 * small


def test_condition_centring_equals_regression_with_condition_intercepts():
    """Per-condition centring = least squares with one intercept per condition (dummy variables)."""
    g = gen(13)
    m = torch.randn(6, 4, generator=g, dtype=D64)
    offsets = [torch.randn(4, generator=g, dtype=D64) * 5 for _ in range(3)]
    parts = []
    for c in range(3):
        a = torch.randn(100, 6, generator=g, dtype=D64) + c
        parts.append((a, a @ m + offsets[c] + 0.2 * torch.randn(100, 4, generator=g, dtype=D64)))
    pairs = [ConditionPair(a, b, 1.0, f"c{c}") for c, (a, b) in enumerate(parts)]
    al = make_aligner("ridge", alpha=0.0).fit(pairs)
    x = torch.cat([torch.cat([a, torch.nn.functional.one_hot(torch.full((100,), c), 3).to(D64)], 1) for c, (a, _) in enumerate(parts)])
    y = torch.cat([b for _, b in parts])
    theta = torch.linalg.lstsq(x, y).solution
    for c, (a, _) in enumerate(parts):
        expected = x[100 * c : 100 * (c + 1)] @ theta
        assert torch.allclose(al.transform(a, condition=f"c{c}").to(D64), expected, atol=1e-4)
    # Global centring is plain pooled least squares: a different map when offsets differ.
    pooled = make_aligner("ridge", alpha=0.0, center="global").fit(pairs).as_module().core.weight.T
    assert not torch.allclose(pooled.to(D64), theta[:6], atol=1e-2)


def test_condition_weights_steer_the_fit():
    g = gen(14)
    a1, a2 = torch.randn(200, 3, generator=g, dtype=D64), torch.randn(200, 3, generator=g, dtype=D64)
    m1, m2 = torch.eye(3, dtype=D64), -torch.eye(3, dtype=D64)
    fit = lambda w1, w2: make_aligner("ridge", alpha=0.0).fit(  # noqa: E731
        [ConditionPair(a1, a1 @ m1, w1, "one"), ConditionPair(a2, a2 @ m2, w2, "two")]
    ).as_module().core.weight.T.to(D64)
    assert torch.allclose(fit(1.0, 0.0), m1, atol=1e-6)
    assert torch.allclose(fit(0.0, 1.0), m2, atol=1e-6)
    assert fit(1.0, 1.0).abs().max() < 0.3


def test_lowrank_recovers_a_low_rank_map():
    a = torch.randn(400, 10, generator=gen(15), dtype=D64)
    m = torch.randn(10, 2, generator=gen(16), dtype=D64) @ torch.randn(2, 8, generator=gen(17), dtype=D64)
    b = a @ m
    al = make_aligner("lowrank", rank=2, alpha=0.0).fit((a, b))
    assert al.num_params == 2 * (10 + 8) + 8
    assert torch.allclose(al.transform(a).to(D64), b, atol=1e-4)
    one = make_aligner("lowrank", rank=1, alpha=0.0).fit((a, b))
    assert (one.transform(a).to(D64) - b).pow(2).mean() > 0.05 * b.pow(2).mean()


@pytest.mark.parametrize("method", ["emd", "sinkhorn"])
def test_transport_plan_recovers_a_permutation(method):
    a = torch.randn(60, 5, generator=gen(18), dtype=D64)
    perm = torch.randperm(60, generator=gen(19))
    b = a[perm] + 0.01 * torch.randn(60, 5, generator=gen(20), dtype=D64)
    plan = transport_plan(torch.cdist(a, b).pow(2), method, reg=0.005)
    assert torch.allclose(plan.sum(1), torch.full((60,), 1 / 60, dtype=D64), atol=1e-6)
    # b[j] = a[perm[j]]: the coupling sends a[perm[j]] to b[j].
    assert torch.equal(plan.argmax(dim=1)[perm], torch.arange(60))


def test_gromov_plan_recovers_a_permutation_up_to_rotation():
    a = torch.randn(40, 4, generator=gen(21), dtype=D64) * torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=D64)
    perm = torch.randperm(40, generator=gen(22))
    b = a[perm] @ orthonormal(4, 6, 23, D64).to(D64)  # another space, rotated, shuffled
    plan = gromov_plan(a, b)
    assert torch.equal(plan.argmax(dim=1)[perm], torch.arange(40))


def test_ot_aligner_fits_unpaired_clouds():
    a = torch.randn(150, 6, generator=gen(24))
    perm = torch.randperm(150, generator=gen(25))
    b = a[perm] * 1.5 + 0.01 * torch.randn(150, 6, generator=gen(26))  # pairs are scrambled
    ridge_err = (make_aligner("ridge").fit((a, b)).transform(a) - 1.5 * a).pow(2).mean()
    al = make_aligner("ot_emd", init="identity").fit((a, b))
    err = (al.transform(a) - 1.5 * a).pow(2).mean()
    assert err < 1e-3 < ridge_err


def test_ot_corrects_noisy_pairs():
    a, b = linear_pair(300, 6, 6, noise=0.0)
    bad = b.clone()
    idx = torch.randperm(300, generator=gen(27))[:90]
    bad[idx] = b[idx[torch.randperm(90, generator=gen(28))]]  # 30% of the pairs shuffled
    err = lambda name: (make_aligner(name).fit((a, bad)).transform(a) - b).pow(2).mean()  # noqa: E731
    assert err("ot_emd") < 0.1 * err("ridge")


def test_mlp_beats_linear_on_a_nonlinear_relation():
    a = torch.randn(2000, 4, generator=gen(29))
    b = torch.cat([a.pow(2), torch.sin(2 * a)], 1)
    lin = (make_aligner("ridge").fit((a, b)).transform(a) - b).pow(2).mean()
    mlp = (make_aligner("mlp", epochs=40, hidden=64, lr=3e-3).fit((a, b)).transform(a) - b).pow(2).mean()
    assert mlp < 0.5 * lin


def test_layout_rules():
    assert Layout.of((10,)).positional is False
    assert Layout.of((4, 6)).positional is False  # ambiguous 2-D: flattened unless stated
    conv = Layout.of((4, 6), "conv")
    tok = Layout.of((6, 4), "tokens")
    assert (conv.positions, conv.features, tok.positions, tok.features) == (6, 4, 6, 4)
    x = torch.arange(2 * 4 * 6.0).reshape(2, 4, 6)
    rows = conv.to_rows(x)
    assert rows.shape == (12, 4) and torch.equal(rows[1], x[0, :, 1])
    assert torch.equal(conv.from_rows(rows, 2), x)
    x2 = torch.arange(2 * 3 * 2 * 5.0).reshape(2, 3, 2, 5)
    c2 = Layout.of((3, 2, 5))
    assert torch.equal(c2.from_rows(c2.to_rows(x2), 2), x2)
    with pytest.raises(ValueError, match="does not match"):
        conv.to_rows(torch.zeros(2, 5, 6))
