"""Layer-wise recipes and candidates built in place into one resident tiny Llama."""

from __future__ import annotations

import copy

import pytest
import torch

from evomerge.errors import ConfigError, UserError
from evomerge.io.tensors import TensorSource
from evomerge.recipe.inplace import InPlaceBuilder
from evomerge.recipe.layerwise import Cell, parse_layerwise, tensor_cell
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stream import execute, plan_recipe
from tests.llama_fixtures import save_llama_family

LAYERS = 4


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    base, fts = save_llama_family(root, n=2, layers=LAYERS)
    return root, base, fts


@pytest.fixture(scope="module")
def builder(family):
    from transformers import AutoModelForCausalLM

    _, base, fts = family
    module = AutoModelForCausalLM.from_pretrained(base).eval()
    return InPlaceBuilder(module, TensorSource(base), {"a": TensorSource(fts[0]), "b": TensorSource(fts[1])})


def state(path) -> dict[str, torch.Tensor]:
    src = TensorSource(path)
    return {n: src.get(n) for n in src.names()}


def recipe(method: str, groups: list, **kw) -> dict:
    return {"kind": "layerwise", "base": "base", "models": ["a", "b"], "method": method, "groups": groups, **kw}


def current(builder: InPlaceBuilder) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in builder.targets.items()}


def test_tensor_cells_route_by_filter_and_position():
    assert tensor_cell("model.layers.3.self_attn.q_proj.weight", 4, 2) == Cell(1, "attention")
    assert tensor_cell("model.layers.1.mlp.up_proj.weight", 4, 2) == Cell(0, "mlp")
    assert tensor_cell("model.layers.2.post_attention_layernorm.weight", 4, 2) == Cell(1, "rest")
    assert tensor_cell("model.embed_tokens.weight", 4, 2) == Cell(0, "rest")
    assert tensor_cell("model.norm.weight", 4, 2) == Cell(1, "rest")
    assert tensor_cell("lm_head.weight", 4, 2) == Cell(1, "rest")
    assert [tensor_cell(f"model.layers.{i}.mlp.down_proj.weight", 6, 4).group for i in range(6)] == [0, 0, 1, 2, 2, 3]


def test_bad_recipes_name_the_field(builder):
    with pytest.raises(ConfigError, match=r"groups\[1\]\.mlp\.density"):
        parse_layerwise(recipe("ties", [{}, {"mlp": {"density": 1.5}}]))
    with pytest.raises(ConfigError, match="'method'"):
        parse_layerwise(recipe("slerp", [{}]))
    with pytest.raises(ConfigError, match="at most 4 groups"):
        builder.build(recipe("average", [{}] * 5))
    with pytest.raises(UserError, match="no source named 'c'"):
        builder.build({**recipe("average", [{"rest": {}}]), "models": ["a", "c"]})


def test_weights_one_half_each_give_the_mean_of_the_fine_tunes(family, builder):
    _, _, fts = family
    a, b = state(fts[0]), state(fts[1])
    builder.build(recipe("average", [{f: {"weights": [0.5, 0.5]} for f in ("attention", "mlp", "rest")}]))
    for name, t in builder.targets.items():
        torch.testing.assert_close(t, (a[name] + b[name]) / 2, rtol=0, atol=1e-6)


def test_a_cell_changes_only_its_own_tensors(family, builder):
    _, base_dir, fts = family
    base, a, b = state(base_dir), state(fts[0]), state(fts[1])
    builder.build(recipe("task_arithmetic", [{"attention": {"lam": 0.5}}, {}]))  # group 0 = layers 0-1
    merged = 0
    for name, t in builder.targets.items():
        if tensor_cell(name, LAYERS, 2) == Cell(0, "attention"):
            torch.testing.assert_close(t, base[name] + 0.5 * ((a[name] - base[name]) + (b[name] - base[name])), rtol=0, atol=1e-6)
            merged += 1
        else:
            assert torch.equal(t, base[name]), name
    assert merged == 2 * 4  # q, k, v, o in layers 0 and 1


STREAM_CASES = {
    "average": recipe("average", [{"attention": {"weights": [0.2, 0.8]}, "mlp": {"weights": [1, 3]}}, {"rest": {"weights": [0.5, 0.5]}}]),
    "task_arithmetic": recipe("task_arithmetic", [{"attention": {"lam": 0.3}, "rest": {"lam": 1.2}}, {"mlp": {"lam": 0.7}}],
                              params={"weights": [0.4, 0.6]}),
    "ties": recipe("ties", [{"attention": {"density": 0.3}, "mlp": {"density": 0.7, "lam": 0.9}}, {"rest": {}, "mlp": {"density": 0.5}}]),
    "tsv": recipe("tsv", [{"attention": {"rank": [2, 3]}, "mlp": {"alpha": 0.8}}, {"attention": {"rank": 1}, "rest": {"alpha": 1.1}}]),
}


@pytest.mark.parametrize("method", list(STREAM_CASES))
def test_in_place_equals_the_streamed_merge_reloaded(family, builder, method):
    from transformers import AutoModelForCausalLM

    root, base, fts = family
    r = parse_layerwise(STREAM_CASES[method])
    out = execute(plan_recipe(r.method, base, fts, params=r.resolver(LAYERS)), root / f"stream-{method}", 1 << 20, progress=False)
    reloaded = AutoModelForCausalLM.from_pretrained(out).state_dict()
    builder.build(r)
    for name, t in builder.targets.items():
        torch.testing.assert_close(t, reloaded[name], rtol=0, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_building_a_then_b_then_a_gives_a_again(builder):
    a = recipe("tsv", [{"attention": {"rank": 2}, "mlp": {"alpha": 0.5}}, {}])
    b = recipe("ties", [{"rest": {"density": 0.4}}, {"mlp": {"lam": 2.0}, "attention": {"density": 0.9}}])
    builder.build(a)
    first = current(builder)
    builder.build(b)
    assert any(not torch.equal(first[n], t) for n, t in builder.targets.items())
    builder.build(a)
    for name, t in builder.targets.items():
        assert torch.equal(t, first[name]), name


GRID_CASES = {  # (grid form, the same cells as a list of groups)
    "average": (
        {"groups": 2, "filters": ["attention", "mlp"],
         "grid": {"weights": [[[0.2, 0.8], [1, 3]], [[0.5, 0.5], [2, 1]]]}},
        {"groups": [{"attention": {"weights": [0.2, 0.8]}, "mlp": {"weights": [1, 3]}},
                    {"attention": {"weights": [0.5, 0.5]}, "mlp": {"weights": [2, 1]}}]},
    ),
    "ties": (
        {"groups": 2, "grid": {"density": [[0.3, 0.7, None], [0.5, 0.4, 0.9]], "lam": [[1.1, 0.9, 1.0], [0.8, 1.2, 0.7]]},
         "params": {"lam": 0.5}},
        {"groups": [{"attention": {"density": 0.3, "lam": 1.1}, "mlp": {"density": 0.7, "lam": 0.9}, "rest": {"lam": 1.0}},
                    {"attention": {"density": 0.5, "lam": 0.8}, "mlp": {"density": 0.4, "lam": 1.2},
                     "rest": {"density": 0.9, "lam": 0.7}}],
         "params": {"lam": 0.5}},
    ),
    "tsv": (
        {"groups": 4, "filters": ["mlp"], "grid": {"rank": [[[2, 3]], [1], [None], [[1, 1]]]}, "params": {"alpha": 0.8}},
        {"groups": [{"mlp": {"rank": [2, 3]}}, {"mlp": {"rank": 1}}, {"mlp": {}}, {"mlp": {"rank": [1, 1]}}],
         "params": {"alpha": 0.8}},
    ),
    "dare": (
        {"groups": 1, "filters": ["rest", "attention"], "grid": {"p": [[0.1, 0.6]]}, "seed": 3},
        {"groups": [{"rest": {"p": 0.1}, "attention": {"p": 0.6}}], "seed": 3},
    ),
}


def form(method: str, which: int) -> dict:
    """The GRID_CASES recipe of ``method`` in grid form (0) or as a list of groups (1), a fresh copy."""
    return copy.deepcopy({**recipe(method, []), **GRID_CASES[method][which]})


@pytest.mark.parametrize("method", list(GRID_CASES))
def test_a_grid_resolves_every_tensor_like_the_equivalent_list_of_groups(family, method):
    _, base, _ = family
    grid, groups = parse_layerwise(form(method, 0)), parse_layerwise(form(method, 1))
    names = TensorSource(base).names()
    by_grid, by_groups = grid.resolver(LAYERS), groups.resolver(LAYERS)
    assert [by_grid(n) for n in names] == [by_groups(n) for n in names]
    for r in (grid, groups):  # a dumped recipe (what an export manifest holds) parses back to the same cells
        again = parse_layerwise(r.model_dump(mode="json")).resolver(LAYERS)
        assert [again(n) for n in names] == [by_grid(n) for n in names]
    assert any(by_grid(n) is not None for n in names)
    if method != "ties":  # a filter left out of the grid keeps the base
        assert any(by_grid(n) is None for n in names)


@pytest.mark.parametrize(("edit", "field", "expected"), [
    ({"grid": {"weights": [[[0.2, 0.8], [1, 3]]]}}, "grid.weights", "a list of 2 entries (one per layer group)"),
    ({"grid": {"weights": [[[0.2, 0.8], [1, 3]], [[0.5, 0.5]]]}}, "grid.weights[1]",
     "a list of 2 entries (one per filter: attention, mlp)"),
    ({"grid": {"weights": [[[0.2, 0.8], [1, 3]], [[0.5, 0.5], 2]]}}, "grid.weights[1][1]",
     "a list of 2 values (one per model)"),
    ({"grid": {"weights": [[[0.2, 0.8], [1, 3]], [[0.5, 0.5, 1], [2, 1]]]}}, "grid.weights[1][0]",
     "a list of 2 values (one per model)"),
    ({"grid": {"weights": [[[0.2, 0.8], [1, 3]], [[0.5, "x"], [2, 1]]]}}, "grid.weights[1][0]", "a valid number"),
    ({"grid": {"wieghts": [[1, 1], [1, 1]]}}, "grid.wieghts", "a parameter of method 'average' (weights)"),
    ({"filters": ["mlp", "mlp"]}, "filters[1]", "a filter listed once"),
    ({"filters": ["mlp", "ffn"]}, "filters[1]", "'attention', 'mlp' or 'rest'"),
    ({"groups": 0}, "groups", "a list of layer groups, or the number of layer groups of a grid"),
    ({"groups": [{"mlp": {}}]}, "grid", "no grid beside a list of groups"),
])
def test_grid_mistakes_name_the_path(edit, field, expected):
    data = {"kind": "layerwise", **form("average", 0)}
    data.update(edit)
    with pytest.raises(ConfigError) as info:
        parse_recipe(data, "space.yaml", "recipe")
    assert info.value.field == f"recipe.{field}" and expected in info.value.expected, str(info.value)


def test_rank_takes_one_value_or_one_per_model_in_a_grid():
    data = form("tsv", 0)
    data["grid"]["rank"][1] = [[1, 2, 3]]
    with pytest.raises(ConfigError) as info:
        parse_layerwise(data)
    assert info.value.field == "grid.rank[1][0]" and info.value.expected == "one value or a list of 2 values (one per model)"
