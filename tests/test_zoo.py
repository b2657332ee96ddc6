"""The built-in zoo: every family present, deterministic training, cache keyed by config."""

import torch

from evomerge.data import load_task
from evomerge.evaluate import accuracy, responses
from evomerge.zoo.catalog import Zoo
from evomerge.zoo.specs import ModelSpec, default_specs, tiny_specs


def test_tiny_zoo_trains_every_family(tiny_zoo):
    families = {tiny_zoo.spec(i).family for i in tiny_zoo.ids()}
    assert families == {"cross_arch", "related", "twins", "shared_base"}
    rec = tiny_zoo.record("cnn-digits")
    assert set(rec) >= {"id", "architecture", "dataset", "condition", "params", "val_accuracy", "test_accuracy", "sha256"}
    assert rec["test_accuracy"] > 0.8  # a trained model, far above chance (0.1)
    assert tiny_zoo.record("ft-digits-parity")["params"] < tiny_zoo.record("ft-digits-rot90")["params"]  # own 2-way head


def test_adapter_is_loaded_once_and_frozen(tiny_zoo):
    a = tiny_zoo.adapter("mlp-digits")
    assert tiny_zoo.adapter("mlp-digits") is a
    assert not any(p.requires_grad for p in a.module.parameters())
    task = load_task("digits", "all", "test", 0)
    assert abs(accuracy(a, task) - tiny_zoo.record("mlp-digits")["test_accuracy"]) < 1e-9


def test_training_is_deterministic(tiny_zoo, tmp_path):
    spec = tiny_zoo.spec("mlp-digits")
    again = Zoo(seed=0, cache_dir_=tmp_path, specs=[spec])
    again.build(workers=1)
    a, b = tiny_zoo.adapter("mlp-digits").state_dict(), again.adapter("mlp-digits").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_changed_config_retrains_only_that_model_and_its_finetunes(tmp_path):
    specs = [s for s in tiny_specs() if s.id in {"mlp-digits", "mlp-digits-s1", "base-digits", "ft-digits-flip"}]
    first = Zoo(seed=0, cache_dir_=tmp_path, specs=specs).build(workers=1)
    assert set(first) == {s.id for s in specs}
    assert Zoo(seed=0, cache_dir_=tmp_path, specs=specs).build(workers=1) == {}
    changed = [s.model_copy(update={"epochs": s.epochs + 1}) if s.id == "mlp-digits-s1" else s for s in specs]
    assert set(Zoo(seed=0, cache_dir_=tmp_path, specs=changed).build(workers=1)) == {"mlp-digits-s1"}
    rebased = [s.model_copy(update={"lr": 2e-3}) if s.id == "base-digits" else s for s in specs]
    assert set(Zoo(seed=0, cache_dir_=tmp_path, specs=rebased).build(workers=1)) == {"base-digits", "ft-digits-flip"}
    assert Zoo(seed=1, cache_dir_=tmp_path, specs=specs).key("mlp-digits") != Zoo(seed=0, cache_dir_=tmp_path, specs=specs).key("mlp-digits")


def test_responses_match_accuracy(tiny_zoo):
    task = load_task("digits", "classes_0_4", "val", 0)
    r = responses(tiny_zoo.adapter("mlp-digits-lo"), task)
    assert r.dtype == torch.bool and r.shape == (len(task),)
    assert accuracy(tiny_zoo.adapter("mlp-digits-lo"), task) == int(r.sum()) / len(task)  # k / n exactly
    sub = responses(tiny_zoo.adapter("mlp-digits-lo"), task, items=torch.arange(10))
    assert torch.equal(sub, r[:10])


def test_default_zoo_covers_the_issue():
    specs = default_specs()
    assert len(specs) >= 8
    assert {s.arch for s in specs} == {"mlp", "cnn", "transformer"}
    assert {s.dataset for s in specs} == {"mnist1d", "digits"}
    fts = [s for s in specs if s.family == "shared_base" and s.base]
    assert len(fts) >= 4 and len({s.condition for s in fts}) == len(fts)
    assert sum(s.family == "twins" for s in specs) >= 2
    assert all(isinstance(s, ModelSpec) for s in specs)
