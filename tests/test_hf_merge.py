"""Merging tiny Hugging Face models saved in tmp_path; the result reloads with AutoModel*."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModel, AutoModelForSequenceClassification, BertConfig, ViTConfig
from transformers import BertForSequenceClassification, ViTModel

from evomerge.core.merge import merge
from evomerge.errors import UserError
from evomerge.hf_merge import exclude_prefixes, merge_pretrained


def tiny_bert(hidden: int = 32) -> BertConfig:
    return BertConfig(vocab_size=50, hidden_size=hidden, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=32, num_labels=3)


def tiny_vit() -> ViTConfig:
    return ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64)


def save_family(tmp_path, make, n: int = 2):
    """A base model and ``n`` perturbed copies ("fine-tunes"), saved as HF directories."""
    torch.manual_seed(0)
    base = make().eval()
    base.save_pretrained(tmp_path / "base")
    dirs = []
    for t in range(n):
        ft = make().eval()
        ft.load_state_dict({k: v + 0.01 * (t + 1) * torch.randn_like(v) if v.is_floating_point() else v for k, v in base.state_dict().items()})
        ft.save_pretrained(tmp_path / f"ft{t}")
        dirs.append(tmp_path / f"ft{t}")
    return base, dirs


def states(dirs, cls):
    return [cls.from_pretrained(d).state_dict() for d in dirs]


def test_bert_classifier_task_arithmetic_round_trip(tmp_path):
    base, dirs = save_family(tmp_path, lambda: BertForSequenceClassification(tiny_bert()))
    keys = exclude_prefixes(["classifier."])
    out = merge_pretrained("task_arithmetic", tmp_path / "base", dirs, tmp_path / "merged", {"lam": 0.5}, keys,
                           auto_class="AutoModelForSequenceClassification")
    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    expect = merge("task_arithmetic", base.state_dict(), states(dirs, BertForSequenceClassification), {"lam": 0.5}, keys)
    got = reloaded.state_dict()
    for k, v in expect.items():
        torch.testing.assert_close(got[k], v, msg=k)
    assert torch.equal(got["classifier.weight"], base.state_dict()["classifier.weight"])
    ids = torch.randint(0, 50, (2, 7))
    assert reloaded(input_ids=ids).logits.shape == (2, 3)


@pytest.mark.parametrize("method", ["ties", "tsv"])
def test_vit_merge_reloads_and_runs(tmp_path, method):
    base, dirs = save_family(tmp_path, lambda: ViTModel(tiny_vit(), add_pooling_layer=False), n=3)
    out = merge_pretrained(method, tmp_path / "base", dirs, tmp_path / "m")
    reloaded = AutoModel.from_pretrained(out).eval()
    expect = merge(method, base.state_dict(), states(dirs, ViTModel))
    for k, v in expect.items():
        torch.testing.assert_close(reloaded.state_dict()[k], v, msg=k)
    with torch.no_grad():
        hidden = reloaded(pixel_values=torch.randn(2, 1, 8, 8)).last_hidden_state
    assert hidden.shape == (2, 5, 32) and torch.isfinite(hidden).all()


def test_averaging_identical_models_reproduces_outputs(tmp_path):
    base, dirs = save_family(tmp_path, lambda: AutoModel.from_config(tiny_bert()), n=1)
    out = merge_pretrained("average", tmp_path / "base", [dirs[0], dirs[0]], tmp_path / "avg")
    ids = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        a = AutoModel.from_pretrained(out).eval()(input_ids=ids).last_hidden_state
        b = AutoModel.from_pretrained(dirs[0]).eval()(input_ids=ids).last_hidden_state
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_other_architecture_is_a_user_error(tmp_path):
    AutoModel.from_config(tiny_bert()).save_pretrained(tmp_path / "base")
    AutoModel.from_config(tiny_bert(hidden=16)).save_pretrained(tmp_path / "narrow")
    with pytest.raises(UserError, match="has shape"):
        merge_pretrained("average", tmp_path / "base", [tmp_path / "narrow"], tmp_path / "out")
    ViTModel(tiny_vit()).save_pretrained(tmp_path / "vit")
    with pytest.raises(UserError, match="ViTModel, but the base"):
        merge_pretrained("average", tmp_path / "base", [tmp_path / "vit"], tmp_path / "out")
    with pytest.raises(UserError, match=r"finetuned\[0\].path': expected an existing Hugging Face model directory"):
        merge_pretrained("average", tmp_path / "base", [tmp_path / "missing"], tmp_path / "out")
