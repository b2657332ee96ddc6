"""Model sources: one conformance suite every kind passes, the Hugging Face specifics, the errors
(each a UserError with exit status 2 naming the path and field) and check_compatible."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from llama_fixtures import save_llama_family, tiny_llama_config
from lm_tiny import tiny_bert_classifier
from safetensors.torch import save_file
from torch import nn

from evomerge.errors import ConfigError, UserError
from evomerge.sources import (
    SOURCES,
    HFSource,
    Source,
    TorchSource,
    VocabularyMismatch,
    ZooSource,
    check_compatible,
    open_source,
)


class TinyNet(nn.Module):
    """The torch source's module (imported by its path ``test_sources:TinyNet``)."""

    def __init__(self, width: int = 8):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(6, width), nn.ReLU(), nn.Linear(width, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def padded_ids(vocab: int, lengths: tuple[int, ...] = (7, 4, 6), seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded token ids (pad id 0) with their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        ids[i, :n], mask[i, :n] = torch.randint(3, vocab, (n,), generator=g), 1
    return {"input_ids": ids, "attention_mask": mask}


@pytest.fixture(scope="module")
def llamas(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny LlamaForCausalLM (hidden 32, 2 layers, vocabulary 64) with a tokenizer, and a perturbed copy."""
    base, (ft,) = save_llama_family(tmp_path_factory.mktemp("llama"), n=1, layers=2)
    return base, ft


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory) -> Path:
    model, tok = tiny_bert_classifier()
    path = tmp_path_factory.mktemp("bert") / "bert"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_zoo_one(tmp_path_factory):
    from evomerge.zoo.catalog import Zoo
    from evomerge.zoo.specs import ModelSpec

    zoo = Zoo(seed=0, cache_dir_=tmp_path_factory.mktemp("zoo"),
              specs=[ModelSpec(id="mlp-tiny", arch="mlp", dataset="digits", epochs=1)])
    zoo.build(workers=1)
    return zoo


@pytest.fixture(scope="module")
def torch_checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("torch") / "tiny.safetensors"
    save_file(TinyNet().state_dict(), str(path))
    return path


class SourceConformance:
    """What every source kind does. A subclass gives the fixtures ``source`` and ``inputs`` (a padded
    batch where the model reads token ids) and ``text`` (whether it has a tokenizer)."""

    text = False

    @pytest.fixture
    def model(self, source: Source) -> nn.Module:
        return source.load_model("cpu")

    def test_registered_under_its_kind(self, source: Source):
        assert SOURCES.get(source.kind) is type(source)
        assert source.name and isinstance(source.architecture, str) and isinstance(source.config, dict)

    def test_open_source_from_its_entry(self, source: Source, request):
        entry = {"source": source.kind, **source.model_dump(mode="json")}
        context = {"zoo": source._zoo} if isinstance(source, ZooSource) else None
        again = open_source(entry, "space.yaml", "models[0]", context)
        assert type(again) is type(source) and again.name == source.name

    def test_lazy_shapes_equal_the_loaded_state_dict(self, source: Source, model: nn.Module):
        tensors, state = source.tensors(), model.state_dict()
        assert set(tensors.names()) == set(state)
        for name, value in state.items():
            assert tensors.info(name).shape == tuple(value.shape) and tensors.info(name).dtype == value.dtype, name

    def test_one_tensor_read_equals_the_parameter(self, source: Source, model: nn.Module):
        name = source.tensors().names()[-1]
        assert torch.equal(source.tensors().get(name), model.state_dict()[name])

    def test_load_model_gives_a_fresh_eval_module_without_gradients(self, source: Source, model: nn.Module):
        assert source.load_model() is not model
        assert not model.training and not any(p.requires_grad for p in model.parameters())

    def test_forward_from_a_layer_continues_the_forward(self, source: Source, model: nn.Module, inputs):
        adapter = source.adapter(model=model)
        assert adapter.module is model
        with torch.no_grad():
            full = adapter(inputs)
            for layer in adapter.layer_names:
                h = adapter.forward_to(inputs, layer)
                torch.testing.assert_close(adapter.forward_from(h, layer, inputs), full, atol=1e-5, rtol=0)

    def test_tokenizer_only_for_text_models(self, source: Source):
        if self.text:
            assert source.tokenizer()("w1 w2")["input_ids"]
        else:
            with pytest.raises(UserError, match="no tokenizer"):
                source.tokenizer()


class TestHFCausalLM(SourceConformance):
    text = True

    @pytest.fixture
    def source(self, llamas) -> HFSource:
        return HFSource.open(path=llamas[0], require_tokenizer=True)

    @pytest.fixture
    def inputs(self):
        return padded_ids(64)

    def test_class_from_config_keeps_the_head(self, source: HFSource, model: nn.Module):
        assert source.architecture == "LlamaForCausalLM" and source.auto_class == "AutoModelForCausalLM"
        assert type(model).__name__ == "LlamaForCausalLM" and "lm_head.weight" in source.tensors()

    def test_padded_batch_activations_equal_the_models_hidden_states(self, source: HFSource, model: nn.Module, inputs):
        adapter = source.adapter(model=model)
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            for i, layer in enumerate(adapter.layer_names[:-1]):  # the last hidden state is after the final norm
                torch.testing.assert_close(adapter.forward_to(inputs, layer), hidden[i + 1], atol=1e-5, rtol=0)


class TestHFClassifier(SourceConformance):
    text = True

    @pytest.fixture
    def source(self, bert_dir) -> HFSource:
        return HFSource.open(path=bert_dir)

    @pytest.fixture
    def inputs(self):
        return padded_ids(80)

    def test_class_from_config(self, source: HFSource, model: nn.Module):
        assert source.auto_class == "AutoModelForSequenceClassification"
        assert type(model).__name__ == "BertForSequenceClassification"

    def test_padded_batch_activations_equal_the_models_hidden_states(self, source: HFSource, model: nn.Module, inputs):
        adapter = source.adapter(model=model)
        with torch.no_grad():
            hidden = model(**inputs, output_hidden_states=True).hidden_states
            for i, layer in enumerate(adapter.layer_names):
                torch.testing.assert_close(adapter.forward_to(inputs, layer), hidden[i + 1], atol=1e-5, rtol=0)


class TestTorchModule(SourceConformance):
    @pytest.fixture
    def source(self, torch_checkpoint) -> TorchSource:
        return TorchSource.open(module="test_sources:TinyNet", kwargs={"width": 8}, checkpoint=torch_checkpoint,
                                input_shape=[6])

    @pytest.fixture
    def inputs(self):
        return torch.randn(4, 6, generator=torch.Generator().manual_seed(0))

    def test_layers_default_to_the_children(self, source: TorchSource):
        adapter = source.adapter()
        assert adapter.layer_names == ["fc1", "act", "fc2"] and adapter.activation_shape("fc1") == (8,)


class TestZoo(SourceConformance):
    @pytest.fixture
    def source(self, tiny_zoo_one) -> ZooSource:
        return ZooSource.of(tiny_zoo_one, "mlp-tiny")

    @pytest.fixture
    def inputs(self, tiny_zoo_one):
        return torch.randn(4, *tiny_zoo_one.load("mlp-tiny").input_shape, generator=torch.Generator().manual_seed(0))

    def test_reads_the_zoos_trained_weights(self, source: ZooSource, tiny_zoo_one):
        assert source.weights() == tiny_zoo_one.weights_path("mlp-tiny") and source.architecture == "mlp"


# ---- errors: each a UserError (exit status 2) naming the path and the field ----------------------


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def expect_error(match: str, **fields) -> UserError:
    with pytest.raises(UserError, match=match) as info:
        open_source(fields, "space.yaml", "models[1]")
    assert info.value.exit_code == 2
    return info.value


def test_missing_directory(tmp_path):
    err = expect_error(r"space.yaml: field 'models\[1\].path': expected an existing Hugging Face model directory",
                       source="hf", path=str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(err)


def test_directory_without_config(tmp_path):
    expect_error(r"models\[1\].path': expected a Hugging Face model directory \(it has no config.json\)",
                 source="hf", path=str(tmp_path))


def test_config_that_is_not_json(tmp_path, bert_dir):
    path = _copy(bert_dir, tmp_path / "m")
    (path / "config.json").write_text("{not json")
    err = expect_error("valid JSON", source="hf", path=str(path))
    assert isinstance(err, ConfigError) and err.file == str(path / "config.json")


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_damaged_safetensors(tmp_path, bert_dir, damage):
    path = _copy(bert_dir, tmp_path / "m")
    weights = path / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x07not a checkpoint" * 64)
    expect_error(f"{weights}: unreadable safetensors file", source="hf", path=str(path))


def test_index_naming_a_missing_shard(tmp_path):
    from transformers import LlamaForCausalLM

    path = tmp_path / "sharded"
    LlamaForCausalLM(tiny_llama_config(layers=2)).save_pretrained(path, max_shard_size="40KB")
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1
    shards[-1].unlink()
    expect_error(f"model.safetensors.index.json: shard {shards[-1].name} is listed but missing", source="hf",
                 path=str(path))


def test_missing_tokenizer(tmp_path, bert_dir):
    path = _copy(bert_dir, tmp_path / "m")
    for f in path.glob("*token*"):
        f.unlink()
    (path / "vocab.txt").unlink(missing_ok=True)
    expect_error(r"models\[1\].path': expected a directory with a tokenizer", source="hf", path=str(path),
                 require_tokenizer=True)
    with pytest.raises(UserError, match=f"{path}: no tokenizer"):
        HFSource.open(path=path).tokenizer()


def test_unknown_kind_and_fields():
    expect_error(r"models\[1\].source': expected a model source \(hf, torch, zoo\), got 'gguf'", source="gguf")
    expect_error(r"models\[1\].id': expected a zoo model id", source="zoo", id="no-such-model")


def test_torch_source_errors(tmp_path, torch_checkpoint):
    expect_error(r"models\[1\].module': expected an importable", source="torch", module="no_such_pkg:Net",
                 checkpoint=str(torch_checkpoint))
    pickle = tmp_path / "w.pt"
    torch.save(TinyNet().state_dict(), pickle)
    expect_error(r"models\[1\].checkpoint': expected an existing .safetensors file", source="torch",
                 module="test_sources:TinyNet", checkpoint=str(pickle))
    wrong = TorchSource.open(module="test_sources:TinyNet", kwargs={"width": 5}, checkpoint=torch_checkpoint)
    with pytest.raises(UserError, match="the weights do not fit test_sources:TinyNet"):
        wrong.load_model()


# ---- check_compatible ----------------------------------------------------------------------------


def _llama(path: Path, **config) -> HFSource:
    from transformers import LlamaForCausalLM

    cfg = tiny_llama_config(layers=2)
    for k, v in config.items():
        setattr(cfg, k, v)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return HFSource.open(path=path)


def test_fine_tunes_of_one_base_are_compatible(llamas):
    check_compatible([HFSource.open(path=p) for p in llamas])


def test_different_architectures(llamas, bert_dir):
    with pytest.raises(UserError, match="different architectures"):
        check_compatible([HFSource.open(path=llamas[0]), HFSource.open(path=bert_dir)])


def test_first_differing_tensor_is_named(tmp_path, llamas):
    with pytest.raises(UserError, match=r"tensor 'model.layers.0.mlp.down_proj.weight': model 'base' has shape "
                                        r"\[32, 64\], model 'wide' \[32, 48\]"):
        check_compatible([HFSource.open(path=llamas[0]), _llama(tmp_path / "wide", intermediate_size=48)])
    with pytest.raises(UserError, match="model 'deep' has a tensor 'model.layers.2"):
        check_compatible([HFSource.open(path=llamas[0]), _llama(tmp_path / "deep", num_hidden_layers=3)])


def test_vocabulary_mismatch_is_its_own_finding(tmp_path, llamas):
    sources = [HFSource.open(path=llamas[0]), _llama(tmp_path / "big-vocab", vocab_size=80)]
    with pytest.raises(VocabularyMismatch, match="vocabularies differ") as info:
        check_compatible(sources)
    assert set(info.value.tensors) == {"model.embed_tokens.weight", "lm_head.weight"}
    check_compatible(sources, backbone_only=True)


def test_hf_config_is_config_json(llamas):
    source = HFSource.open(path=llamas[0])
    assert source.config == json.loads((llamas[0] / "config.json").read_text())
