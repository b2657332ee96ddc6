"""Task-conditioned probing: cached activations per (model, layer, condition, items) and statistics."""

import pytest
import torch

from evomerge.core.probe import ActivationCache, ProbeSet, class_probes, condition_stats, probe, task_probe
from evomerge.data.tasks import load_task


def test_activations_are_computed_once_and_match_the_adapter(tiny_zoo):
    ad = tiny_zoo.adapter("cnn-digits")
    task = load_task("digits", "all", "val")
    probes = class_probes(task, per_class=20)
    cache = ActivationCache(batch_size=64)
    acts = probe("cnn-digits", ad, probes, cache=cache)
    assert cache.misses == len(probes) * len(ad.layer_names) and cache.hits == 0
    again = probe("cnn-digits", ad, probes, cache=cache)
    assert cache.hits == cache.misses and len(cache) == cache.misses
    p = probes[3]
    assert again[p.name]["conv2"] is acts[p.name]["conv2"]
    with torch.no_grad():
        expected = ad.forward_to(p.x, "conv2")
    assert torch.allclose(acts[p.name]["conv2"], expected, atol=1e-6)
    assert acts[p.name]["conv2"].shape == (20, *ad.activation_shape("conv2"))


def test_cache_key_includes_items_and_model_id(tiny_zoo):
    ad = tiny_zoo.adapter("mlp-digits")
    task = load_task("digits", "all", "val")
    cache = ActivationCache()
    first = cache.get("m", ad, "fc1", task_probe(task, "all", limit=30))
    other_items = cache.get("m", ad, "fc1", task_probe(task, "all", limit=40))
    other_model = cache.get("m2", ad, "fc1", task_probe(task, "all", limit=30))
    assert cache.misses == 3 and first.shape[0] == 30 and other_items.shape[0] == 40
    assert torch.equal(first, other_model)


def test_class_probes_hold_one_class_each():
    task = load_task("digits", "classes_5_9", "val")
    probes = class_probes(task, per_class=10)
    assert [p.name for p in probes] == [f"class_{c}" for c in range(5, 10)]
    for p in probes:
        assert len(p) == 10 and torch.unique(p.y).numel() == 1
    with pytest.raises(ValueError, match="no items of class 0"):
        class_probes(task, classes=[0])
    with pytest.raises(ValueError, match="item ids"):
        ProbeSet("x", torch.zeros(3, 2), ("a", "b"))


def test_condition_stats_known_answers():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 3, generator=g, dtype=torch.float64) * torch.tensor([3.0, 1.0, 0.2], dtype=torch.float64) + 7
    st = condition_stats(x.reshape(5000, 3, 1), k=2)
    assert st.n == 5000 and torch.allclose(st.mean, x.mean(0), atol=1e-12)
    assert torch.allclose(st.cov, torch.cov(x.T), atol=1e-9)
    assert torch.allclose(st.explained, torch.linalg.eigvalsh(torch.cov(x.T)).flip(0)[:2], atol=1e-9)
    assert st.components.shape == (2, 3)
    assert abs(float(st.components[0, 0])) > 0.99 and abs(float(st.components[1, 1])) > 0.99
    assert torch.allclose(st.explained, torch.tensor([9.0, 1.0], dtype=torch.float64), rtol=0.06)


def test_probe_pairs_writes_heatmaps_and_layer_map(tiny_zoo, tmp_path):
    import json

    from evomerge.commands.probe import probe_pairs

    written = probe_pairs(tiny_zoo, ["mlp-digits", "cnn-digits", "mlp-digits-s1"], [("digits", "all")], tmp_path,
                          per_class=10, theta=0.3)
    maps = sorted(p.name for p in written if p.suffix == ".json")
    assert maps == sorted(f"layer_map_{a}__{b}__digits-all.json" for a, b in
                          [("mlp-digits", "cnn-digits"), ("mlp-digits", "mlp-digits-s1"), ("cnn-digits", "mlp-digits-s1")])
    pngs = [p for p in written if p.suffix == ".png"]
    assert len(pngs) == 3 * 10 and all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)
    lm = json.loads((tmp_path / "layer_map_mlp-digits__mlp-digits-s1__digits-all.json").read_text())
    assert set(lm["cka"]) == {f"class_{c}" for c in range(10)} and lm["points"]


def test_probe_names_theta_and_the_best_score_when_nothing_exceeds_it(tiny_zoo, tmp_path, capsys):
    import json

    from evomerge.commands.probe import probe_pairs

    probe_pairs(tiny_zoo, ["mlp-digits", "mlp-digits-s1"], [("digits", "all")], tmp_path, per_class=10, theta=2.0)
    err = capsys.readouterr().err
    assert "no layer pair's matched score exceeds theta 2; best " in err and "CKA x effective-rank ratio" in err
    lm = json.loads((tmp_path / "layer_map_mlp-digits__mlp-digits-s1__digits-all.json").read_text())
    assert lm["theta"] == 2.0 and lm["points"] == []


def test_probe_command_user_errors(capsys):
    from evomerge.cli import main

    assert main(["probe", "--models", "mlp-digits"]) == 2
    assert "expected two" in capsys.readouterr().err
    assert main(["probe", "--models", "mlp-digits,cnn-digits"]) == 2
    assert "--task" in capsys.readouterr().err
    assert main(["probe", "--models", "mlp-digits,nope", "--task", "digits/all"]) == 2
    assert "unknown zoo model 'nope'" in capsys.readouterr().err
    assert main(["probe", "--models", "a,b", "--task", "digits/all", "--measure", "cosine"]) == 2
    assert "unknown similarity measure 'cosine'" in capsys.readouterr().err
    assert main(["probe", "--space", "/nonexistent.yaml"]) == 2
    assert "/nonexistent.yaml" in capsys.readouterr().err
