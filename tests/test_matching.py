"""Functional layer map: Hungarian matching of CKA, rank-ratio scores, consensus threshold."""

import json

import numpy as np
import pytest
import torch

from evomerge.core.matching import LayerMap, cka_matrix, hungarian, layer_map


def _chain_acts(x, depth=4, width=16, seed=0):
    """Activations of a random tanh chain: each layer a different, nonlinear function of x."""
    g = torch.Generator().manual_seed(seed)
    acts, h = {}, x
    for i in range(depth):
        w = torch.randn(h.shape[1], width, generator=g, dtype=torch.float64) * 1.5 / h.shape[1] ** 0.5
        h = torch.tanh(h @ w + torch.randn(width, generator=g, dtype=torch.float64))
        acts[f"l{i}"] = h
    return acts


def _conditions(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {c: torch.randn(150, 8, generator=g, dtype=torch.float64) + shift for c, shift in [("c0", 0.0), ("c1", 2.0)]}


def test_layer_map_of_a_model_with_itself_is_the_identity():
    acts = {c: _chain_acts(x) for c, x in _conditions().items()}
    lm = layer_map(acts, acts, theta=0.5)
    assert [(p.layer_a, p.layer_b) for p in sorted(lm.points, key=lambda p: p.layer_a)] == [(f"l{i}", f"l{i}") for i in range(4)]
    assert all(p.score == pytest.approx(1.0) for p in lm.points)
    for c in acts:
        assert np.allclose(np.diag(lm.cka[c]), 1.0)


def test_matches_rotated_and_reordered_layers():
    """B's layers are A's layers, rotated and in a different order: matching undoes the order."""
    x = _conditions()["c0"]
    a = _chain_acts(x, depth=4)
    q = torch.linalg.qr(torch.randn(16, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)).Q
    order = ["l2", "l0", "l3", "l1"]
    b = {f"m{i}": 2 * a[name] @ q for i, name in enumerate(order)}
    lm = layer_map({"all": a}, {"all": b})
    pairs = {p.layer_a: p.layer_b for p in lm.points}
    assert pairs == {name: f"m{i}" for i, name in enumerate(order)}


def test_rectangular_depths_and_rank_ratio():
    x = _conditions()["c0"]
    a = _chain_acts(x, depth=3)
    # B: A's layer l1, then a rank-2 layer that is a projection of l2.
    b = {"p": a["l1"], "q": a["l2"][:, :2]}
    lm = layer_map({"all": a}, {"all": b})
    assert len(lm.points) == 2
    by_a = {p.layer_a: p for p in lm.points}
    assert by_a["l1"].layer_b == "p" and by_a["l1"].score == pytest.approx(1.0)
    point = by_a["l2"]
    ratio = min(lm.rank_a["all"][2], lm.rank_b["all"][1]) / max(lm.rank_a["all"][2], lm.rank_b["all"][1])
    assert point.score == pytest.approx(lm.cka["all"][2][1] * ratio)
    assert ratio < 0.5


def test_consensus_averages_over_conditions_and_thresholds():
    x = _conditions()
    a = {c: _chain_acts(v, depth=2) for c, v in x.items()}
    # Under c1, B's layers come in swapped order, so each pair is matched under one condition only.
    b = {"c0": {"u": a["c0"]["l0"], "v": a["c0"]["l1"]}, "c1": {"u": a["c1"]["l1"], "v": a["c1"]["l0"]}}
    lm = layer_map(a, b, theta=0.0)
    assert len(lm.points) == 4
    for p in lm.points:
        assert p.score == pytest.approx(sum(p.per_condition.values()) / 2)
        assert min(p.per_condition.values()) == 0.0
    assert layer_map(a, b, theta=0.6).points == []


def test_cka_matrix_and_hungarian():
    sim = np.array([[0.1, 0.9, 0.3], [0.8, 0.7, 0.2]])
    assert hungarian(sim) == [(0, 1), (1, 0)]
    x = torch.randn(50, 4, dtype=torch.float64)
    c = cka_matrix([x, x[:, :2]], [x], "linear")
    assert c.shape == (2, 1) and c[0, 0] == pytest.approx(1.0)


def test_json_round_trip(tmp_path):
    acts = {c: _chain_acts(v, depth=2) for c, v in _conditions().items()}
    lm = layer_map(acts, acts, model_a="m", model_b="m")
    lm.save(tmp_path / "map.json")
    back = LayerMap.from_json(json.loads((tmp_path / "map.json").read_text()))
    assert back == lm


def test_mismatched_conditions_or_layers_raise():
    acts = {c: _chain_acts(v, depth=2) for c, v in _conditions().items()}
    with pytest.raises(ValueError, match="conditions differ"):
        layer_map(acts, {"c0": acts["c0"]})
    broken = {"c0": acts["c0"], "c1": {"l0": acts["c1"]["l0"]}}
    with pytest.raises(ValueError, match="has layers"):
        layer_map(broken, broken)


def test_layer_map_of_a_zoo_model_with_itself_is_the_identity(tiny_zoo):
    from evomerge.core.probe import ActivationCache, class_probes, probe
    from evomerge.data.tasks import load_task

    probes = class_probes(load_task("digits", "all", "val"), per_class=20)[:3]
    acts = probe("cnn-digits", tiny_zoo.adapter("cnn-digits"), probes, cache=ActivationCache())
    lm = layer_map(acts, acts, theta=0.99)
    assert {(p.layer_a, p.layer_b) for p in lm.points} == {(n, n) for n in lm.layers_a}
