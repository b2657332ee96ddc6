"""A stack built as a view over resident decoders (evomerge.recipe.stack_view): the materialized stack's
logits (`evomerge merge`, mergekit's passthrough), its KV cache, its parameter count, and sources left alone."""

from __future__ import annotations

import json

import pytest
import torch

from evomerge.cli import main
from evomerge.errors import ConfigError, UserError
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stack_view import held_params
from tests.llama_fixtures import save_llama_family

#: Two models, three slots, non-unit scales; ft0's layer 2 is stacked twice.
SLOTS = [("ft0", (0, 3), 0.5), ("ft1", (1, 4), 1.5), ("ft0", (2, 4), 0.75)]
IDS = torch.tensor([[1, 5, 9, 3, 17, 2, 40, 8], [1, 7, 7, 30, 11, 4, 9, 60]])


def load(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval().requires_grad_(False)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("view")
    _, fts = save_llama_family(root, n=2)
    return root, {f.name: f for f in fts}


def recipe(slots=SLOTS) -> dict:
    return {"kind": "stack", "slots": [{"model": m, "layer_range": list(r), "scale": s} for m, r, s in slots]}


@pytest.fixture(scope="module")
def residents(family):
    _, paths = family
    return {name: load(p) for name, p in paths.items()}


@pytest.fixture(scope="module")
def materialized(family):
    root, paths = family
    path = root / "stack.json"
    path.write_text(json.dumps(parse_recipe(recipe()).with_models({m: str(p) for m, p in paths.items()}).model_dump(mode="json")))
    assert main(["merge", str(path), "--out", str(root / "stack"), "--no-progress"]) == 0
    return load(root / "stack")


@torch.no_grad()
def test_the_view_gives_the_materialized_stacks_logits_and_parameter_count(residents, materialized):
    view = parse_recipe(recipe()).view(residents)
    assert view.config.num_hidden_layers == materialized.config.num_hidden_layers == 8
    torch.testing.assert_close(view(input_ids=IDS).logits, materialized(input_ids=IDS).logits, rtol=0, atol=1e-5)
    assert held_params(view) == sum(p.numel() for p in materialized.parameters())
    assert held_params(view) > sum(p.numel() for p in view.parameters())  # ft0's layer 2 shared, counted twice
    assert all(p.data_ptr() in {q.data_ptr() for m in residents.values() for q in m.parameters()} for p in view.parameters())


@torch.no_grad()
def test_greedy_generation_with_the_kv_cache_equals_it_without(residents):
    view = parse_recipe(recipe()).view(residents)
    prompt = IDS[:1, :4]
    cached = view.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=True, pad_token_id=0)
    uncached = view.generate(prompt, max_new_tokens=10, do_sample=False, use_cache=False, pad_token_id=0)
    assert cached.shape[1] == 14 and torch.equal(cached, uncached)
    assert [layer.self_attn.layer_idx for layer in view.model.layers] == list(range(8))


@torch.no_grad()
def test_building_stacks_leaves_the_resident_sources_unchanged(residents):
    before = {m: r(input_ids=IDS).logits for m, r in residents.items()}
    views = [parse_recipe(recipe()).view(residents), parse_recipe(recipe([("ft1", (0, 2), 2.0), ("ft0", (1, 3), 0.25)])).view(residents)]
    views[0](input_ids=IDS), views[1](input_ids=IDS)
    for m, r in residents.items():
        assert r.config.num_hidden_layers == 4 and [layer.self_attn.layer_idx for layer in r.model.layers] == [0, 1, 2, 3]
        assert type(r.model.layers[0].self_attn.o_proj) is torch.nn.Linear
        torch.testing.assert_close(r(input_ids=IDS).logits, before[m], rtol=0, atol=0)


def test_a_slot_given_by_start_and_length_and_ranges_checked_against_the_sources(residents):
    stack = parse_recipe({"kind": "stack", "slots": [{"model": "ft0", "start": 1, "length": 2, "scale": 0.5}]})
    assert stack.slots[0].layer_range == (1, 3)
    too_far = parse_recipe({"kind": "stack", "slots": [{"model": "ft0", "start": 3, "length": 2}]})
    with pytest.raises(ConfigError, match=r"slots\[0\]\.layer_range': expected a range within the 4 layers of 'ft0'"):
        too_far.view(residents)


def test_a_model_without_decoder_layers_is_refused_by_name():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64))
    with pytest.raises(UserError, match="model 'enc' \\(BertModel\\) is not a decoder-only causal LM"):
        parse_recipe({"kind": "stack", "slots": [{"model": "enc", "layer_range": [0, 1]}]}).view({"enc": bert})


@torch.no_grad()
def test_a_qwen2_stack_keeps_each_layers_attention_type_and_the_tied_head(tmp_path):
    """Qwen2 with sliding-window layers (``layer_types``) and tied embeddings: the view, the merged folder
    (its config's ``layer_types`` those of the stacked layers) and their parameter counts agree."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    paths = {}
    for i in range(2):
        torch.manual_seed(i)
        cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
                          use_sliding_window=True, sliding_window=3, max_window_layers=2)
        Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / f"q{i}")
        paths[f"q{i}"] = tmp_path / f"q{i}"
    stack = parse_recipe(recipe([("q0", (0, 3), 0.5), ("q1", (1, 4), 1.5)]))
    (tmp_path / "r.json").write_text(json.dumps(stack.with_models({m: str(p) for m, p in paths.items()}).model_dump(mode="json")))
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    merged, view = load(tmp_path / "out"), stack.view({m: load(p) for m, p in paths.items()})
    assert view.config.layer_types == merged.config.layer_types == ["full_attention", "full_attention", "sliding_attention",
                                                                   "full_attention", "sliding_attention", "sliding_attention"]
    torch.testing.assert_close(view(input_ids=IDS).logits, merged(input_ids=IDS).logits, rtol=0, atol=1e-5)
    assert held_params(view) == sum(p.numel() for p in merged.parameters())
