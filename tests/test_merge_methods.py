"""Merge methods: a conformance suite every registered method runs, then per-method properties."""

from __future__ import annotations

import pytest
import torch

from evomerge.core.merge import MERGE_METHODS, is_trunk_key, layer_value, merge, task_vectors
from evomerge.core.merge.dare import dare_drop, key_generator
from evomerge.core.merge.ties import trim_by_magnitude
from evomerge.core.merge.tsv import low_rank, nearest_orthogonal, tsv_compress, tsv_merge
from evomerge.errors import ConfigError, UserError


def make_base(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layers.conv.weight": torch.randn(6, 3, 3, generator=g),
        "layers.conv.bias": torch.randn(6, generator=g),
        "layers.fc.weight": torch.randn(8, 12, generator=g),
        "layers.fc.bias": torch.randn(8, generator=g),
        "layers.bn.num_batches_tracked": torch.tensor(7),
        "layers.head.weight": torch.randn(4, 8, generator=g),
    }


def make_finetuned(base, n: int, scale: float = 0.1, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [
        {k: v + scale * torch.randn(v.shape, generator=g) if v.is_floating_point() else v.clone() for k, v in base.items()}
        for _ in range(n)
    ]


def assert_sd_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=1e-5, msg=k)


@pytest.fixture(params=MERGE_METHODS.names())
def method(request):
    return request.param


class TestMergeConformance:
    """Every registered method: shapes, key filter, no-op on zero updates, determinism, errors."""

    def test_registry_holds_the_yaml_names(self):
        assert {"average", "task_arithmetic", "ties", "dare", "tsv"} <= set(MERGE_METHODS.names())

    def test_same_keys_shapes_dtypes(self, method):
        base = make_base()
        out = merge(method, base, make_finetuned(base, 3))
        assert out.keys() == base.keys()
        for k in base:
            assert out[k].shape == base[k].shape and out[k].dtype == base[k].dtype

    def test_keys_outside_filter_are_the_base(self, method):
        base = make_base()
        fts = make_finetuned(base, 3)
        out = merge(method, base, fts, keys=is_trunk_key)
        assert torch.equal(out["layers.head.weight"], base["layers.head.weight"])
        assert torch.equal(out["layers.bn.num_batches_tracked"], base["layers.bn.num_batches_tracked"])
        assert not torch.equal(out["layers.fc.weight"], base["layers.fc.weight"])

    def test_unchanged_models_merge_to_base(self, method):
        base = make_base()
        assert_sd_close(merge(method, base, make_finetuned(base, 3, scale=0.0)), base)

    def test_deterministic_and_pure(self, method):
        base = make_base()
        fts = make_finetuned(base, 3)
        copies = [{k: v.clone() for k, v in sd.items()} for sd in [base, *fts]]
        a, b = merge(method, base, fts), merge(method, base, fts)
        assert all(torch.equal(a[k], b[k]) for k in a)
        for orig, sd in zip(copies, [base, *fts]):
            assert all(torch.equal(orig[k], sd[k]) for k in sd)

    def test_half_precision_keeps_dtype(self, method):
        base = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in make_base().items()}
        out = merge(method, base, make_finetuned(base, 2))
        assert out["layers.fc.weight"].dtype == torch.bfloat16

    def test_no_models_is_a_user_error(self, method):
        with pytest.raises(UserError, match="at least one"):
            merge(method, make_base(), [])

    def test_shape_mismatch_is_a_user_error(self, method):
        base = make_base()
        fts = make_finetuned(base, 2)
        fts[1]["layers.fc.weight"] = torch.zeros(8, 11)
        with pytest.raises(UserError, match=r"model 1: parameter 'layers.fc.weight'"):
            merge(method, base, fts)

    def test_missing_key_is_a_user_error(self, method):
        base = make_base()
        fts = make_finetuned(base, 2)
        del fts[0]["layers.fc.bias"]
        with pytest.raises(UserError, match="no parameter 'layers.fc.bias'"):
            merge(method, base, fts)

    def test_unknown_param_is_a_config_error(self, method):
        with pytest.raises(ConfigError, match="no_such_param"):
            merge(method, make_base(), make_finetuned(make_base(), 2), {"no_such_param": 1})


def test_unknown_method_lists_valid_names():
    with pytest.raises(UserError, match="valid: average, dare"):
        merge("sum", make_base(), [make_base()])


def test_out_of_range_density_names_field():
    with pytest.raises(ConfigError, match="field 'density'"):
        merge("ties", make_base(), [make_base()], {"density": 1.5})


def test_layer_value_longest_prefix_and_default():
    spec = {"layers": 1.0, "layers.fc": 2.0, "*": 3.0}
    assert layer_value(spec, "layers.fc.weight", "x") == 2.0
    assert layer_value(spec, "layers.fcx.weight", "x") == 1.0
    assert layer_value(spec, "other.w", "x") == 3.0
    assert layer_value(0.5, "any", "x") == 0.5
    with pytest.raises(ConfigError, match="'lam'.*other.w"):
        layer_value({"layers": 1.0}, "other.w", "lam")


def test_averaging_identical_models_returns_the_model():
    base, model = make_base(0), make_base(5)
    assert_sd_close(merge("average", base, [model, model, model]), model)


def test_average_is_the_mean_of_models():
    base = make_base()
    fts = make_finetuned(base, 3, scale=1.0)
    out = merge("average", base, fts)
    torch.testing.assert_close(out["layers.fc.weight"], torch.stack([f["layers.fc.weight"] for f in fts]).mean(0))


def test_weighted_average_is_the_weighted_mean_of_models():
    base = make_base()
    a, b = make_finetuned(base, 2, scale=1.0)
    out = merge("average", base, [a, b], {"weights": [1.0, 3.0]})
    torch.testing.assert_close(out["layers.fc.weight"], (a["layers.fc.weight"] + 3 * b["layers.fc.weight"]) / 4)
    with pytest.raises(ConfigError, match="average.weights"):
        merge("average", base, [a, b], {"weights": [1.0]})


def test_tsv_factors_cached_once_give_the_same_merge():
    base = make_base()
    fts = make_finetuned(base, 2, scale=1.0)
    m, key = MERGE_METHODS.get("tsv"), "layers.fc.weight"
    deltas = [f[key] - base[key] for f in fts]
    params = m.parse({"rank": [1, 2], "alpha": 0.7})
    cached = [m.factor(key, d) for d in deltas]
    assert torch.equal(m.merge_deltas(key, base[key], deltas, params, cached), m.merge_tensor(key, base[key], [f[key] for f in fts], params))


def test_ties_with_cached_sorted_magnitudes_gives_the_same_merge():
    base = make_base()
    fts = make_finetuned(base, 3, scale=1.0)
    m, key = MERGE_METHODS.get("ties"), "layers.fc.weight"
    deltas = [f[key] - base[key] for f in fts]
    cached = [m.factor(key, d) for d in deltas]
    for density in (0.1, 0.37, 1.0):
        params = m.parse({"density": density, "lam": 0.8})
        assert torch.equal(m.merge_deltas(key, base[key], deltas, params, cached), m.merge_tensor(key, base[key], [f[key] for f in fts], params))


def test_task_arithmetic_lambda_zero_returns_base():
    base = make_base()
    assert_sd_close(merge("task_arithmetic", base, make_finetuned(base, 3), {"lam": 0.0}), base, atol=0)


def test_task_arithmetic_per_layer_and_per_task():
    base = make_base()
    fts = make_finetuned(base, 2)
    taus = task_vectors(base, fts)
    out = merge("task_arithmetic", base, fts, {"lam": {"layers.fc": 0.5, "*": 0.0}, "weights": [1.0, 3.0]})
    torch.testing.assert_close(out["layers.conv.weight"], base["layers.conv.weight"])
    expect = base["layers.fc.weight"] + 0.5 * (taus[0]["layers.fc.weight"] + 3 * taus[1]["layers.fc.weight"])
    torch.testing.assert_close(out["layers.fc.weight"], expect)


def test_task_arithmetic_wrong_number_of_weights():
    with pytest.raises(ConfigError, match="2 weights"):
        merge("task_arithmetic", make_base(), make_finetuned(make_base(), 2), {"weights": [1.0]})


def test_trim_keeps_largest_magnitudes():
    t = torch.tensor([0.1, -5.0, 2.0, -0.3, 4.0])
    assert torch.equal(trim_by_magnitude(t, 0.6), torch.tensor([0.0, -5.0, 2.0, 0.0, 4.0]))
    assert torch.equal(trim_by_magnitude(t, 1.0), t)


def test_ties_known_answer():
    base = {"w": torch.zeros(4)}
    fts = [{"w": torch.tensor([1.0, -2.0, 3.0, 0.5])}, {"w": torch.tensor([3.0, 1.0, -1.0, 0.0])}]
    # sign mass: [+4, -1, +2, +0.5] -> elected [+, -, +, +]; disjoint means [2, -2, 3, 0.5]
    out = merge("ties", base, fts, {"density": 1.0})
    torch.testing.assert_close(out["w"], torch.tensor([2.0, -2.0, 3.0, 0.5]))


def agreeing_models(base, n=3):
    g = torch.Generator().manual_seed(3)
    signs = {k: torch.randint(0, 2, v.shape, generator=g) * 2.0 - 1 for k, v in base.items() if v.is_floating_point()}
    return [
        {k: (v + signs[k] * (0.1 + torch.rand(v.shape, generator=g))) if k in signs else v for k, v in base.items()}
        for _ in range(n)
    ]


def test_ties_full_density_agreeing_signs_is_task_arithmetic():
    base = make_base()
    fts = agreeing_models(base, 3)
    ties = merge("ties", base, fts, {"density": 1.0, "lam": 0.9})  # disjoint mean = sum / 3
    ta = merge("task_arithmetic", base, fts, {"lam": 0.3})
    assert_sd_close(ties, ta)


def test_ties_conflicting_sign_is_dropped():
    base = {"w": torch.zeros(1)}
    out = merge("ties", base, [{"w": torch.tensor([2.0])}, {"w": torch.tensor([-1.0])}], {"density": 1.0})
    assert out["w"].item() == 2.0  # task arithmetic would give 1.0


def test_dare_p_zero_is_task_arithmetic():
    base = make_base()
    fts = make_finetuned(base, 3)
    assert_sd_close(merge("dare", base, fts, {"p": 0.0, "lam": 0.7}), merge("task_arithmetic", base, fts, {"lam": 0.7}))


def test_dare_with_sign_election_at_p_zero_is_ties_at_full_density():
    base = make_base()
    fts = make_finetuned(base, 3)
    assert_sd_close(merge("dare", base, fts, {"p": 0.0, "elect_sign": True}), merge("ties", base, fts, {"density": 1.0}))


def test_dare_drop_rate_and_unbiased_rescale():
    delta = torch.ones(200_000)
    out = dare_drop(delta, 0.9, key_generator(0, "w", 0))
    assert abs((out == 0).float().mean().item() - 0.9) < 0.005
    torch.testing.assert_close(out[out != 0], torch.full_like(out[out != 0], 10.0))
    assert abs(out.mean().item() - 1.0) < 0.05


def test_dare_seeded():
    base = make_base()
    fts = make_finetuned(base, 2)
    a = merge("dare", base, fts, {"p": 0.5, "seed": 1})
    b = merge("dare", base, fts, {"p": 0.5, "seed": 1})
    c = merge("dare", base, fts, {"p": 0.5, "seed": 2})
    assert torch.equal(a["layers.fc.weight"], b["layers.fc.weight"])
    assert not torch.equal(a["layers.fc.weight"], c["layers.fc.weight"])


def test_tsv_one_task_full_rank_is_the_task_vector():
    base = make_base()
    fts = make_finetuned(base, 1, scale=1.0)
    assert_sd_close(merge("tsv", base, fts, {"rank": 100}), fts[0], atol=1e-4)
    assert_sd_close(merge("tsv", base, fts), fts[0], atol=1e-4)  # default rank min(m, n) // 1


def test_tsv_orthogonal_tasks_is_task_arithmetic():
    """Updates in orthogonal row and column spaces do not interfere: TSV-M is their sum."""
    base = {"w": torch.zeros(6, 6)}
    q1, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(0)))
    q2, _ = torch.linalg.qr(torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    d1 = q1[:, :2] @ torch.diag(torch.tensor([3.0, 1.0])) @ q2[:, :2].T
    d2 = q1[:, 2:4] @ torch.diag(torch.tensor([2.0, 0.5])) @ q2[:, 2:4].T
    out = merge("tsv", base, [{"w": d1}, {"w": d2}], {"rank": 2, "alpha": 1.0})
    torch.testing.assert_close(out["w"], d1 + d2, atol=1e-5, rtol=1e-5)


def test_tsv_decorrelates_overlapping_subspaces():
    """Two tasks writing the same rank-1 direction: TSV-M keeps its norm instead of doubling it."""
    u, v = torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    d = 2 * torch.outer(u, v)
    out = merge("tsv", {"w": torch.zeros(3, 3)}, [{"w": d}, {"w": d}], {"rank": 1})
    ta = merge("task_arithmetic", {"w": torch.zeros(3, 3)}, [{"w": d}, {"w": d}])
    assert torch.linalg.matrix_norm(out["w"], ord=2) < torch.linalg.matrix_norm(ta["w"], ord=2)


def test_nearest_orthogonal_of_full_column_rank_has_orthonormal_columns():
    Q = nearest_orthogonal(torch.randn(7, 3, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(Q.T @ Q, torch.eye(3), atol=1e-5, rtol=0)


def test_tsv_rank_per_task_and_layer():
    base = make_base()
    fts = make_finetuned(base, 2, scale=1.0)
    comp = tsv_compress(task_vectors(base, fts), rank={"layers.fc": [1, 3], "*": 2})
    assert comp[0]["layers.fc.weight"].S.numel() == 1 and comp[1]["layers.fc.weight"].S.numel() == 3
    assert comp[0]["layers.conv.weight"].S.numel() == 2
    assert "layers.fc.bias" not in comp[0]
    lr = low_rank(task_vectors(base, fts)[0]["layers.conv.weight"], 100)
    torch.testing.assert_close(lr.dense(), fts[0]["layers.conv.weight"] - base["layers.conv.weight"], atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match="2 ranks"):
        merge("tsv", base, fts, {"rank": [1, 2, 3]})


def test_tsv_rank_one_is_best_rank_one_approximation():
    base = {"w": torch.zeros(5, 4)}
    d = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    out = merge("tsv", base, [{"w": d}], {"rank": 1, "alpha": 2.0})
    U, S, Vh = torch.linalg.svd(d)
    torch.testing.assert_close(out["w"], 2.0 * S[0] * torch.outer(U[:, 0], Vh[0]), atol=1e-5, rtol=1e-5)


def test_tsv_merge_of_compressed_factors_matches_the_method():
    base = make_base()
    fts = make_finetuned(base, 3, scale=1.0)
    rank = {"layers.fc": 2, "*": 1}
    update = tsv_merge(tsv_compress(task_vectors(base, fts), rank), alpha=0.7)
    merged = merge("tsv", base, fts, {"rank": rank, "alpha": 0.7})
    assert set(update) == {"layers.conv.weight", "layers.fc.weight", "layers.head.weight"}
    for k, u in update.items():
        torch.testing.assert_close(base[k] + u, merged[k])
