"""Embedded data: deterministic stratified splits, stable item ids, conditions."""

import numpy as np
import pytest
import torch

from evomerge.data import get_condition, list_conditions, load_task
from evomerge.data.splits import stratified_split
from evomerge.data.tasks import item_id
from evomerge.errors import UserError


def test_split_is_deterministic_stratified_and_disjoint():
    y = np.repeat(np.arange(10), 50)
    a, b = stratified_split(y, {"val": 0.2, "test": 0.2}, seed=3), stratified_split(y, {"val": 0.2, "test": 0.2}, seed=3)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert {k: len(v) for k, v in a.items()} == {"train": 300, "val": 100, "test": 100}
    assert np.bincount(y[a["val"]]).tolist() == [10] * 10  # stratified
    assert not set(a["train"]) & set(a["val"]) and not set(a["val"]) & set(a["test"])
    c = stratified_split(y, {"val": 0.2, "test": 0.2}, seed=4)
    assert not np.array_equal(a["test"], c["test"])  # the seed matters


def test_task_items_and_ids_are_stable():
    t1 = load_task("digits", "all", "val", 0)
    load_task.cache_clear()
    t2 = load_task("digits", "all", "val", 0)
    assert t1.item_ids == t2.item_ids and torch.equal(t1.x, t2.x)
    assert len(set(t1.item_ids)) == len(t1)
    i = 7
    assert t1.item_ids[i] == item_id("digits", "all", "val", i, t1.x[i].numpy(), int(t1.y[i]))
    assert t1.item_ids[i].startswith("digits/all/val/7/")
    assert t1.x.shape[1:] == (1, 8, 8) and t1.x.dtype == torch.float32


def test_splits_cover_dataset_and_sizes():
    sizes = [len(load_task("digits", "all", s, 0)) for s in ("train", "val", "test")]
    assert sum(sizes) == 1797


def test_mnist1d_sizes_and_determinism():
    val = load_task("mnist1d", "all", "val", 0)
    test = load_task("mnist1d", "all", "test", 0)
    assert len(val) >= 5000 and len(test) >= 5000 and len(load_task("mnist1d", "all", "train", 0)) >= 4000
    assert val.x.shape[1:] == (1, 40)
    assert torch.bincount(val.y).tolist() == [500] * 10
    assert not set(val.item_ids) & set(test.item_ids)


def test_conditions_select_transform_relabel():
    full = load_task("digits", "all", "val", 0)
    lo = load_task("digits", "classes_0_4", "val", 0)
    assert set(lo.y.tolist()) == {0, 1, 2, 3, 4} and len(lo) == int((full.y < 5).sum())
    par = load_task("digits", "parity", "val", 0)
    assert par.num_classes == 2 and torch.equal(par.y, full.y % 2)
    flip = load_task("digits", "flip", "val", 0)
    assert torch.equal(flip.x, full.x.flip(-1)) and torch.equal(flip.y, full.y)
    assert flip.item_ids[0] != full.item_ids[0]  # the content hash sees the transformation
    noise_a, noise_b = load_task("digits", "noise", "val", 0), load_task("digits", "noise", "test", 0)
    assert not torch.equal(noise_a.x, full.x) and noise_a.x.shape == full.x.shape and len(noise_b) > 0
    assert {c.name for c in list_conditions("mnist1d")} >= {"all", "classes_0_4", "reverse", "noise", "parity"}


@pytest.mark.parametrize(
    "call, needle",
    [
        (lambda: load_task("cifar", "all", "val"), "unknown dataset 'cifar'; valid: digits, mnist1d"),
        (lambda: load_task("digits", "upside", "val"), "unknown condition for dataset 'digits' 'upside'"),
        (lambda: load_task("digits", "all", "dev"), "unknown split 'dev'"),
        (lambda: get_condition("mnist1d", "rot90"), "valid: all, classes_0_4"),
    ],
)
def test_unknown_names_list_valid_ones(call, needle):
    with pytest.raises(UserError, match=None) as err:
        call()
    assert needle in str(err.value)


def test_docs_list_the_conditions_the_code_defines():
    """README and docs/CONTRACTS.md name every condition of every dataset, and no other."""
    import re
    from pathlib import Path

    from evomerge.data.conditions import list_conditions

    names = {c.name for d in ("digits", "mnist1d") for c in list_conditions(d)}
    root = Path(__file__).parent.parent
    for doc, start in (("README.md", "Task conditions are named views"), ("docs/CONTRACTS.md", "Conditions are named views")):
        text = (root / doc).read_text()
        paragraph = text[text.index(start):].split("\n\n")[0].split("list_conditions")[0]
        assert set(re.findall(r"`([a-z0-9_]+)`", paragraph)) == names, doc
        for dataset, marker in (("mnist1d", "for 1-D"), ("digits", "for 2-D")):
            listed = re.findall(r"`([a-z0-9_]+)`", paragraph[:paragraph.index(marker)].rsplit(";", 1)[-1].rsplit("(", 1)[-1])
            assert set(listed) == {c.name for c in list_conditions(dataset) if c.kind == "transform"}, (doc, dataset)
