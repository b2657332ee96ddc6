"""Recipe kinds: the registry's conformance contract, and the HF kinds (layerwise, stack) merged by `evomerge merge`."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from evomerge.cli import main
from evomerge.core.merge import MergeParams
from evomerge.errors import ConfigError, UserError
from evomerge.io.tensors import TensorSource
from evomerge.recipe.inplace import InPlaceBuilder
from evomerge.recipe.kind import RECIPE_KINDS
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stack import SCALED
from tests.llama_fixtures import save_llama_family


class KindContract:
    """What every recipe kind must do; each kind's test class inherits it and gives an example."""

    kind: ClassVar[str]
    example: ClassVar[dict[str, Any]]
    refs: ClassVar[list[tuple[str, str]]]
    #: A change that breaks one field, and that field's path.
    bad: ClassVar[tuple[Callable[[dict], None], str]]

    def test_registered_under_its_kind(self):
        record = RECIPE_KINDS.get(self.kind)
        assert type(parse_recipe(self.example)) is record and parse_recipe(self.example).kind == self.kind

    def test_json_round_trip(self):
        dumped = parse_recipe(self.example).model_dump(mode="json")
        again = parse_recipe(json.loads(json.dumps(dumped)))
        assert again.model_dump(mode="json") == dumped and again == parse_recipe(self.example)

    def test_model_refs(self):
        assert parse_recipe(self.example).model_refs() == self.refs

    def test_in_place_or_says_so(self):
        """An in-place kind gives every tensor of a 4-layer decoder its parameters (or None: the base);
        any other kind refuses a resolver."""
        recipe = parse_recipe(self.example)
        names = ["model.embed_tokens.weight", *(f"model.layers.{i}.{m}.weight" for i in (0, 3) for m in ("self_attn.q_proj", "mlp.up_proj"))]
        if recipe.in_place:
            resolve = recipe.resolver(4)
            assert all(resolve(n) is None or isinstance(resolve(n), MergeParams) for n in names)
            assert any(resolve(n) is not None for n in names)
        else:
            with pytest.raises(UserError, match="is not built in place"):
                recipe.resolver(4)

    def test_with_models_replaces_every_ref_and_nothing_else(self):
        recipe = parse_recipe(self.example)
        paths = {m: f"/models/{m}" for _, m in self.refs}
        moved = recipe.with_models(paths)
        assert type(moved) is type(recipe) and moved.model_refs() == [(p, paths[m]) for p, m in self.refs]
        assert moved.with_models({v: k for k, v in paths.items()}) == recipe
        with pytest.raises(ConfigError) as info:
            recipe.with_models({}, "space.yaml")
        assert info.value.field == self.refs[0][0] and info.value.got == self.refs[0][1]

    def test_a_bad_field_names_its_path(self):
        data = copy.deepcopy(self.example)
        change, path = self.bad
        change(data)
        with pytest.raises(ConfigError) as info:
            parse_recipe(data, "space.yaml", "recipe")
        assert info.value.field == f"recipe.{path}"


class TestStitch(KindContract):
    kind = "stitch"
    example = {"kind": "stitch", "trunk": "a", "branches": [
        {"model": "b", "source_layer": "fc2", "target_layer": "fc", "aligner": {"name": "ridge"}, "fit": {"items": 64}}]}
    refs = [("trunk", "a"), ("branches[0].model", "b")]
    bad = (lambda d: d["branches"][0]["fit"].update(items="twelve"), "branches[0].fit.items")


class TestWeights(KindContract):
    kind = "weights"
    example = {"kind": "weights", "base": "base", "models": ["a", "b"], "method": "ties", "params": {"density": 0.4}}
    refs = [("base", "base"), ("models[0]", "a"), ("models[1]", "b")]
    bad = (lambda d: d.update(mass={"layer": "x", "top_k": 0}), "mass.top_k")


class TestLayerwise(KindContract):
    kind = "layerwise"
    example = {"kind": "layerwise", "base": "base", "models": ["a", "b"], "method": "ties",
               "groups": [{"attention": {"density": 0.3}}, {"mlp": {"density": 0.7}, "rest": {}}]}
    refs = [("base", "base"), ("models[0]", "a"), ("models[1]", "b")]
    bad = (lambda d: d["groups"][1]["mlp"].update(density=1.5), "groups[1].mlp.density")


class TestStack(KindContract):
    kind = "stack"
    example = {"kind": "stack", "slots": [{"model": "a", "layer_range": [0, 3]},
                                          {"model": "b", "layer_range": [1, 4], "scale": 0.5}]}
    refs = [("slots[0].model", "a"), ("slots[1].model", "b")]
    bad = (lambda d: d["slots"][1].update(layer_range=[3, 1]), "slots[1].layer_range")


def test_every_registered_kind_has_a_conformance_test():
    assert sorted(c.kind for c in KindContract.__subclasses__()) == RECIPE_KINDS.names()


def test_an_unknown_kind_lists_the_registered_kinds():
    with pytest.raises(ConfigError, match=r"field 'recipe\.kind': expected a recipe kind \(layerwise, stack, stitch, weights\)"):
        parse_recipe({"kind": "soup"}, "space.yaml", "recipe")


def test_mixing_shares_of_the_models_merged():
    stitch = parse_recipe({**TestStitch.example, "trunk_weight": {"digits/all": 3.0}})
    assert stitch.mixing("digits/all") == {"a": 3.0, "b": 1.0}
    assert parse_recipe(TestWeights.example).mixing("t") == {"a": 1.0, "b": 1.0}  # the base is no share
    assert parse_recipe(TestStack.example).mixing("t") == {"a": 1.0, "b": 1.0}


def test_a_kind_says_how_it_cannot_be_built():
    examples = [TestLayerwise, TestWeights, TestStack, TestStitch]
    assert [parse_recipe(t.example).in_place for t in examples] == [True, True, False, False]
    assert not parse_recipe({**TestWeights.example, "mass": {"enabled": True, "layer": "l"}}).in_place
    assert [type(parse_recipe(t.example)).as_view for t in examples] == [False, False, True, True]
    with pytest.raises(UserError, match="r.json: a stitch runs models of different architectures side by side"):
        parse_recipe(TestStitch.example).plan("r.json", None, torch.float32, None)
    with pytest.raises(UserError, match="'stack' is not built from zoo models"):
        parse_recipe(TestStack.example).build(None, None, False)


# -- Hugging Face kinds, merged by `evomerge merge` ---------------------------------------------------
@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base, fts = save_llama_family(root, n=2, layers=4)
    return root, base, fts


def merge_recipe(recipe: dict, path: Path, out: Path) -> Path:
    path.write_text(json.dumps(recipe))
    assert main(["merge", str(path), "--out", str(out), "--no-progress"]) == 0
    return out


def load(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="eager").eval()


def test_layerwise_merged_by_the_command_equals_the_candidate_built_in_place(family):
    root, base, fts = family
    recipe = {"kind": "layerwise", "base": str(base), "models": [str(f) for f in fts], "method": "ties",
              "groups": [{"attention": {"density": 0.3}}, {"mlp": {"density": 0.7, "lam": 0.9}, "rest": {}}]}
    merged = TensorSource(merge_recipe(recipe, root / "layerwise.json", root / "layerwise"))
    builder = InPlaceBuilder(load(base), TensorSource(base), {str(f): TensorSource(f) for f in fts})
    builder.build(parse_recipe(recipe))
    for name, t in builder.targets.items():
        torch.testing.assert_close(merged.get(name), t, rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


STACK = [(1, (0, 3), 1.0), (2, (1, 4), 0.5), (0, (2, 4), 1.5)]  # (model: base, ft0, ft1), [start, end), scale


@pytest.fixture(scope="module")
def stacked(family):
    root, base, fts = family
    models = [base, *fts]
    recipe = {"kind": "stack", "slots": [{"model": str(models[m]), "layer_range": list(r), "scale": s} for m, r, s in STACK]}
    return recipe, merge_recipe(recipe, root / "stack.json", root / "stack")


@torch.no_grad()
def test_stacked_hidden_states_equal_the_chosen_layers_run_by_hand(family, stacked):
    _, base, fts = family
    _, out = stacked
    sources = [load(p) for p in (base, *fts)]
    model = load(out)
    assert model.config.num_hidden_layers == sum(end - start for _, (start, end), _ in STACK) == 8
    ids = torch.tensor([[1, 5, 9, 3, 17, 2]])
    first, last = sources[STACK[0][0]].model, sources[STACK[-1][0]].model
    h = first.embed_tokens(ids)
    positions = torch.arange(ids.shape[1])[None]
    rope = first.rotary_emb(h, positions)
    causal = torch.full((ids.shape[1],) * 2, float("-inf")).triu(1)[None, None]
    for m, (start, end), scale in STACK:
        for layer in sources[m].model.layers[start:end]:
            layer = copy.deepcopy(layer)
            layer.self_attn.o_proj.weight.mul_(scale)
            layer.mlp.down_proj.weight.mul_(scale)
            h = layer(h, attention_mask=causal, position_ids=positions, position_embeddings=rope)
    h = last.norm(h)
    got = model(input_ids=ids, output_hidden_states=True)
    torch.testing.assert_close(got.hidden_states[-1], h, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, sources[STACK[-1][0]].lm_head(h), rtol=0, atol=1e-5)


def test_a_slot_scale_multiplies_only_its_residual_writes(family, stacked):
    _, base, fts = family
    _, out = stacked
    src, ours = TensorSource(fts[1]), TensorSource(out)  # slot 1: ft1's layers 1-3 become layers 3-5, scale 0.5
    for name in src.names():
        if name.startswith("model.layers.2."):
            ours_name = name.replace("model.layers.2.", "model.layers.4.")
            factor = 0.5 if any(s in name for s in SCALED) else 1.0
            torch.testing.assert_close(ours.get(ours_name), factor * src.get(name), rtol=0, atol=0)


def test_stack_equals_mergekit_on_the_equivalent_passthrough_config(family, stacked, tmp_path):
    pytest.importorskip("mergekit")
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    recipe, out = stacked
    config = parse_recipe(recipe).mergekit_config() | {"dtype": "float32"}
    run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "mk"), MergeOptions(quiet=True))
    theirs, ours = TensorSource(tmp_path / "mk"), TensorSource(out)
    assert set(theirs.names()) == set(ours.names())
    for name in theirs.names():
        assert (theirs.get(name, torch.float32) - ours.get(name, torch.float32)).abs().max().item() <= 1e-6, name
    assert json.loads((tmp_path / "mk" / "config.json").read_text())["num_hidden_layers"] == 8


def test_a_stack_of_models_of_different_families_names_the_slot(family, tmp_path):
    from transformers import LlamaForCausalLM

    from tests.llama_fixtures import tiny_llama_config

    root, base, _ = family
    LlamaForCausalLM(tiny_llama_config(hidden=16)).save_pretrained(tmp_path / "narrow")
    recipe = {"kind": "stack", "slots": [{"model": str(base), "layer_range": [0, 2]},
                                         {"model": str(tmp_path / "narrow"), "layer_range": [2, 4]}]}
    with pytest.raises(ConfigError, match=r"field 'slots\[1\]\.model': expected a decoder of slot 0's family \(hidden_size 32"):
        parse_recipe(recipe).plan("stack.json", None, torch.float32, None)
