"""The shipped search spaces: genes that matter, names that match their metrics."""

from pathlib import Path

import yaml

from evomerge.recipe.schema import parse_recipe
from evomerge.search.space import decode, load_space

SPACES = Path(__file__).parent.parent / "search_spaces"


def genome(space, **values):
    """The first choice (or the low end) of every gene, with ``values`` in place."""
    out = {g.name: (g.choices[0] if hasattr(g, "choices") else g.low) for g in space.genes}
    return out | values


def test_cross_arch_trunk_weight_only_where_routing_reads_it():
    """The learned gate absorbs the trunk coefficient, so the gene is active for fixed and confidence routing only."""
    space = load_space(SPACES / "cross_arch.yaml")
    for routing in ("mixture", "confidence"):
        recipe = decode(space, genome(space, routing=routing, trunk_weight=0.25))
        assert recipe["trunk_weight"] == 0.25 and parse_recipe(recipe).trunk_weight == 0.25
    recipe = decode(space, genome(space, routing="learned", trunk_weight=0.25))
    assert recipe["trunk_weight"] is None and parse_recipe(recipe).trunk_weight == 1.0


def test_shipped_objectives_are_named_after_their_metrics():
    """Objective names are the summary's keys; the metric ``params`` (total) is not ``added_params``."""
    for path in sorted(SPACES.glob("*.yaml")):
        if "${lm}" in path.read_text():  # needs the built LM family: loaded in tests/test_zoo_lm.py
            objectives = yaml.safe_load(path.read_text())["objectives"]
            assert [o["name"] for o in objectives] == [o["metric"] for o in objectives], path.name
            continue
        space = load_space(path)
        assert [o.name for o in space.objectives] == [o.metric for o in space.objectives], path.name
    assert [o.key for o in load_space(SPACES / "cross_arch.yaml").objectives] == ["accuracy/mean", "added_params"]
