"""Stitched models on the tiny zoo: exactness, zero-shot stitching, tuning that leaves sources alone."""

import copy

import pytest
import torch
from torch import nn

from evomerge.core.align import make_aligner
from evomerge.core.probe import ActivationCache, class_probes, task_probe
from evomerge.core.stitch import (
    StitchedModel,
    condition_pairs,
    fit_stitch,
    partial_finetune,
    tune_stitch,
)
from evomerge.data.tasks import load_task
from evomerge.evaluate import accuracy


@pytest.fixture(scope="module")
def data():
    return load_task("digits", "all", "train"), load_task("digits", "all", "val")


def _pairs(zoo, a, la, b, lb, task, probes=None):
    probes = probes or [task_probe(task)]
    return condition_pairs(a, zoo.adapter(a), la, b, zoo.adapter(b), lb, probes, ActivationCache())


def test_layer_kinds(tiny_zoo):
    assert tiny_zoo.adapter("cnn-digits").layer_kind("conv2") == "conv"
    assert tiny_zoo.adapter("cnn-digits").layer_kind("fc") == "vector"
    assert tiny_zoo.adapter("tf-digits").layer_kind("block1") == "tokens"
    assert tiny_zoo.adapter("tf-digits").layer_kind("pool") == "vector"
    assert tiny_zoo.adapter("mlp-digits").layer_kind("fc2") == "vector"


def test_identity_stitch_is_the_model(tiny_zoo, data):
    ad = tiny_zoo.adapter("cnn-digits")
    m = StitchedModel(ad, "conv2", nn.Identity(), ad, "conv2")
    x = data[1].x[:50]
    with torch.no_grad():
        assert torch.allclose(m(x), ad.forward(x), atol=1e-6)
    assert m.stitch_params == 0 and m.num_params == ad.num_params()


def test_self_stitch_with_procrustes_recovers_the_identity(tiny_zoo, data):
    ad = tiny_zoo.adapter("cnn-digits")
    pairs = _pairs(tiny_zoo, "cnn-digits", "conv2", "cnn-digits", "conv2", data[0])
    m = fit_stitch("procrustes", ad, "conv2", ad, "conv2", pairs)
    assert m.stitch.layout_a.positional  # per-position (1x1) map between conv maps
    assert m.stitch_params == 32 * 32 + 32
    # Identity on every channel that is ever active (dead ReLU channels carry nothing to align).
    live = pairs[0].a.transpose(0, 1).reshape(32, -1).amax(dim=1) > 0
    w = m.stitch.core.weight[live][:, live]
    assert torch.allclose(w, torch.eye(int(live.sum())), atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(m.stitch(pairs[0].a), pairs[0].a, atol=1e-4)
    assert accuracy(m, data[1]) == pytest.approx(accuracy(ad.module, data[1]), abs=1e-9)


def test_cross_architecture_zero_shot_stitch(tiny_zoo, data):
    train, val = data
    a, b = tiny_zoo.adapter("cnn-digits"), tiny_zoo.adapter("mlp-digits")
    pairs = _pairs(tiny_zoo, "cnn-digits", "conv3", "mlp-digits", "fc2", train)
    m = fit_stitch("ridge", a, "conv3", b, "fc2", pairs)
    base = min(accuracy(a.module, val), accuracy(b.module, val))
    assert accuracy(m, val) > 0.9 * base
    # A random map of the same shape is far worse: the fit carries the information.
    rand = StitchedModel(a, "conv3", copy.deepcopy(m.stitch), b, "fc2")
    with torch.no_grad():
        for p in rand.stitch.parameters():
            p.normal_(0, 0.1)
    assert accuracy(rand, val) < 0.5 * accuracy(m, val)
    # Parameter accounting: A's front, the map, B's back.
    front = sum(p.numel() for n in ("conv1", "conv2", "conv3") for p in a.layer_module(n).parameters())
    back = sum(p.numel() for n in ("fc3", "head") for p in b.layer_module(n).parameters())
    assert m.num_params == front + m.stitch_params + back
    assert m.stitch_share == pytest.approx(m.stitch_params / m.num_params)


def test_class_conditioned_stitch_uses_condition_means(tiny_zoo, data):
    train = data[0]
    a, b = tiny_zoo.adapter("mlp-digits"), tiny_zoo.adapter("mlp-digits-s1")
    probes = class_probes(train, per_class=40)
    pairs = _pairs(tiny_zoo, "mlp-digits", "fc2", "mlp-digits-s1", "fc2", train, probes)
    m3 = fit_stitch("ridge", a, "fc2", b, "fc2", pairs, condition="class_3")
    assert torch.allclose(m3.stitch.shift_b, pairs[3].b.mean(0), atol=1e-5)
    with pytest.raises(Exception, match="fitted condition"):
        fit_stitch("ridge", a, "fc2", b, "fc2", pairs, condition="class_11")


def test_tune_stitch_trains_only_the_map(tiny_zoo, data):
    train, val = data
    a, b = tiny_zoo.adapter("tf-digits"), tiny_zoo.adapter("mlp-digits")
    pairs = _pairs(tiny_zoo, "tf-digits", "pool", "mlp-digits", "fc2", train)
    m = fit_stitch(make_aligner("lowrank", rank=4), a, "pool", b, "fc2", pairs)
    before_a = {k: v.clone() for k, v in a.module.state_dict().items()}
    stitch_before = [p.detach().clone() for p in m.stitch.parameters()]
    res = tune_stitch(m, train, epochs=3, lr=3e-3)
    assert res.sources_unchanged and res.trained_params == m.stitch_params
    assert res.final_loss < res.first_loss
    assert all(torch.equal(v, a.module.state_dict()[k]) for k, v in before_a.items())
    assert any(not torch.equal(p0, p) for p0, p in zip(stitch_before, m.stitch.parameters()))
    assert not any(p.requires_grad for p in b.module.parameters())


def test_tuning_detects_a_changed_source(tiny_zoo, data):
    """A stitch that *is* a layer of B: tuning it changes B, which the check must catch."""
    b = copy.deepcopy(tiny_zoo.adapter("mlp-digits"))
    shared = b.layer_module("fc3")[0]  # B's own Linear(64, 64)
    m = StitchedModel(b, "fc2", shared, b, "fc2")
    with pytest.raises(RuntimeError, match="frozen source model changed"):
        tune_stitch(m, data[0], epochs=1)


def test_partial_finetune_copies_b(tiny_zoo, data):
    train, val = data
    a, b = tiny_zoo.adapter("cnn-digits"), tiny_zoo.adapter("mlp-digits")
    pairs = _pairs(tiny_zoo, "cnn-digits", "fc", "mlp-digits", "fc2", train)
    m = fit_stitch("ridge", a, "fc", b, "fc2", pairs)
    b_before = {k: v.clone() for k, v in b.module.state_dict().items()}
    new, res = partial_finetune(m, train, blocks=1, epochs=2)
    assert res.sources_unchanged
    assert res.trained_params == m.stitch_params + sum(p.numel() for p in b.layer_module("fc3").parameters())
    assert all(torch.equal(v, b.module.state_dict()[k]) for k, v in b_before.items())
    tuned = new.b.layer_module("fc3")[0].weight
    assert not torch.equal(tuned, b.layer_module("fc3")[0].weight)
    assert any(k.startswith("b_copy.") for k in new.state_dict())
    with pytest.raises(ValueError, match="no layer of B"):
        partial_finetune(StitchedModel(a, "fc", m.stitch, b, "head"), train)
