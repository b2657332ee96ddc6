"""Adapters: run-up-to then run-from equals a full forward at every layer, for every kind of model."""

import pytest
import torch
from torch import nn

from evomerge.errors import UserError
from evomerge.sources.adapters import HFAdapter, TorchAdapter, load_checkpoint
from evomerge.zoo.adapter import LayeredAdapter, as_adapter
from evomerge.zoo.models import build_model


def assert_round_trip(adapter, x, atol=1e-6):
    full = adapter(x)
    for layer in adapter.layer_names:
        h = adapter.forward_to(x, layer)
        assert tuple(h.shape[1:]) == adapter.activation_shape(layer)
        torch.testing.assert_close(adapter.forward_from(h, layer), full, atol=atol, rtol=0)


@pytest.mark.parametrize("arch", ["mlp", "cnn", "transformer"])
@pytest.mark.parametrize("dataset, shape", [("mnist1d", (5, 1, 40)), ("digits", (5, 1, 8, 8))])
def test_builtin_round_trip(arch, dataset, shape):
    net = build_model(arch, dataset, 10, seed=0).eval()
    adapter = as_adapter(net)
    assert isinstance(adapter, LayeredAdapter) and adapter.layer_names[-1] == "head"
    assert_round_trip(adapter, torch.randn(*shape))


def test_forward_from_uses_the_activation():
    adapter = LayeredAdapter(build_model("mlp", "digits", 10, seed=0).eval())
    x = torch.rand(4, 1, 8, 8)
    h = adapter.forward_to(x, "fc2")
    assert not torch.allclose(adapter.forward_from(h + 1.0, "fc2"), adapter(x))


def test_build_model_is_seeded():
    a, b = build_model("cnn", "digits", 10, seed=1), build_model("cnn", "digits", 10, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    c = build_model("cnn", "digits", 10, seed=2)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_torch_module_round_trip_and_weights(tmp_path):
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Flatten(), nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 3)).eval()
    adapter = TorchAdapter(seq, ["1", "2", "4", "5"], example=torch.zeros(1, 1, 40))
    assert_round_trip(adapter, torch.randn(6, 1, 40))
    # checkpoints are read weights-only (torch) or through safetensors
    torch.save(seq.state_dict(), tmp_path / "w.pt")
    sd = load_checkpoint(tmp_path / "w.pt")
    assert torch.equal(sd["1.weight"], seq[1].weight)
    from safetensors.torch import save_file

    save_file(seq.state_dict(), str(tmp_path / "w.safetensors"))
    assert torch.equal(load_checkpoint(tmp_path / "w.safetensors")["5.bias"], seq[5].bias)


class Evil:
    """Any non-tensor object: a full unpickle would construct it; weights-only loading must refuse."""


def test_checkpoint_with_objects_is_refused(tmp_path):
    torch.save({"x": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="weights-only"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unknown_layer_lists_valid():
    adapter = LayeredAdapter(build_model("mlp", "digits", 10, seed=0))
    with pytest.raises(UserError, match="valid: fc1, fc2, fc3, head"):
        adapter.forward_to(torch.zeros(1, 1, 8, 8), "fc9")


def test_huggingface_directory_round_trip(tmp_path):
    from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    vit = ViTForImageClassification(
        ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, num_labels=10)
    )
    vit.save_pretrained(tmp_path / "vit")
    adapter = HFAdapter.from_pretrained(tmp_path / "vit", auto_class="AutoModelForImageClassification")
    assert len(adapter.layer_names) == 2
    x = {"pixel_values": torch.rand(3, 1, 8, 8)}
    assert adapter(x).shape == (3, 10)
    assert_round_trip(adapter, x, atol=1e-5)

    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=16))
    bert.save_pretrained(tmp_path / "bert")
    adapter = as_adapter(str(tmp_path / "bert"))
    ids = {"input_ids": torch.randint(0, 50, (4, 16))}
    assert_round_trip(adapter, ids, atol=1e-5)


def test_not_a_hf_directory(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        HFAdapter.from_pretrained(tmp_path)


def _padded_batch(vocab: int = 50, lengths=(9, 5, 7), seed: int = 0):
    """Right-padded token ids with their attention mask, and each row unpadded."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, vocab, (n,), generator=g) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    return {"input_ids": ids, "attention_mask": mask}, [{"input_ids": r[None], "attention_mask": torch.ones(1, len(r), dtype=torch.long)} for r in rows]


@pytest.mark.parametrize("kind", ["bert", "llama"])
def test_hf_padded_batch_equals_unpadded_runs(kind):
    """Probed (forward_to) and stitched (forward_from) activations on a padded batch equal each item's
    unpadded run at its real positions: running on from a layer uses the batch's attention mask."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaForCausalLM

    from evomerge.core.stitch import StitchedModel

    torch.manual_seed(0)
    if kind == "bert":
        model = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=16))
    else:
        model = LlamaForCausalLM(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=16))
    adapter = HFAdapter.from_model(model.eval())
    padded, singles = _padded_batch()
    lengths = [s["input_ids"].shape[1] for s in singles]
    with torch.no_grad():
        for layer in adapter.layer_names:
            h = adapter.forward_to(padded, layer)
            out = adapter.forward_from(h, layer, padded)
            stitched = StitchedModel(adapter, layer, nn.Identity(), adapter, layer)(padded)
            for i, (single, n) in enumerate(zip(singles, lengths)):
                torch.testing.assert_close(h[i, :n], adapter.forward_to(single, layer)[0], atol=1e-5, rtol=0)
                full = adapter(single)[0]
                torch.testing.assert_close(out[i, :n], full, atol=1e-5, rtol=0)
                torch.testing.assert_close(stitched[i, :n], full, atol=1e-5, rtol=0)


def test_hf_forward_from_without_inputs_fits_the_activation_length():
    """Without inputs, the dummy input takes the activation's batch and length (no mask: no padding)."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    adapter = HFAdapter.from_model(BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                                        intermediate_size=64, max_position_embeddings=32)).eval())
    x = {"input_ids": torch.randint(0, 50, (3, 11))}
    with torch.no_grad():
        h = adapter.forward_to(x, adapter.layer_names[0])
        torch.testing.assert_close(adapter.forward_from(h, adapter.layer_names[0]), adapter(x), atol=1e-5, rtol=0)
