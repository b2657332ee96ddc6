"""Search space files: validation errors name file and field; decoding fills the template."""

from __future__ import annotations

import copy

import pytest
import yaml
from search_fakes import toy_space, two_objectives

from evomerge.errors import ConfigError
from evomerge.search.space import (
    decode,
    dump_space,
    load_space,
    mask_inactive,
    parse_space,
    sample_genomes,
    with_overrides,
)


def write(tmp_path, data, name="space.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def edited(array: bool = False, **paths):
    """The toy space (with array genes: x[3], cells[2, 2], pick[2]) with dotted-path edits; a value
    of ``...`` deletes the key."""
    data = toy_space(array=array)
    for dotted, value in paths.items():
        node = data
        *parents, leaf = dotted.split("__")
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if value is ...:
            del node[int(leaf) if leaf.isdigit() else leaf]
        else:
            node[int(leaf) if leaf.isdigit() else leaf] = value
    return data


def test_valid_space_loads_and_round_trips(tmp_path):
    space = load_space(write(tmp_path, toy_space("deap_ga")), known_models={"mlp-a", "cnn-b", "x"})
    assert space.source.endswith("space.yaml")
    assert [g.name for g in space.genes] == ["x0", "x1", "x2", "method", "rank", "lam"]
    assert space.objectives[0].key == "accuracy/mean" and space.directions == ["max"]
    again = load_space(write(tmp_path, dump_space(space), "copy.yaml"))
    assert again.model_dump() == space.model_dump()


def test_decode_substitutes_genes_and_nulls_inactive_ones():
    space = parse_space(toy_space())
    genome = {"x0": 0.5, "x1": 1.0, "x2": -1.0, "method": "ties", "rank": 8, "lam": 0.1}
    recipe = decode(space, genome)
    assert recipe == {"kind": "toy", "x": [0.5, 1.0, -1.0], "merge": {"method": "ties", "rank": None, "lam": 0.1}}
    assert decode(space, {**genome, "method": "tsv"})["merge"]["rank"] == 8
    with pytest.raises(ValueError, match="rank"):
        decode(space, {**genome, "method": "tsv", "rank": None})
    assert mask_inactive(space, genome)["rank"] is None


@pytest.mark.parametrize(("data", "field", "expected"), [
    (edited(recipe__merge__rank={"gene": "rnk"}), "recipe.merge.rank.gene", "a defined gene name"),
    (edited(genes__4__when={"methd": "tsv"}), "genes[4].when.methd", "a gene defined before"),
    (edited(genes__4__when={"method": "dare"}), "genes[4].when.method", "a value gene 'method' can take"),
    (edited(genes__4__when={"lam": 0.5}), "genes[4].when.lam", "a gene defined before"),
    (edited(genes__5__when={"x0": 0.5}), "genes[5].when.x0", "not a float gene"),
    (edited(genes__0__low="abc"), "genes[0].low", "a valid number"),
    (edited(genes__4__high=2.5), "genes[4].high", "a valid integer"),
    (edited(genes__3__choices=[]), "genes[3].choices", "at least 1 item"),
    (edited(genes__1__low=5), "genes[1].low", "a value below high (4.0)"),
    (edited(genes__5__low=0.0), "genes[5].low", "> 0 for a log-scale gene"),
    (edited(genes__4__step=2), "genes[4].step", "1 for a log-scale int gene"),
    (edited(genes__0__type="complex"), "genes[0].type", "a gene type (categorical, int, float)"),
    (edited(genes__0__type=...), "genes[0].type", "a gene type"),
    (edited(genes__0__scale=2), "genes[0].scale", "no such field"),
    (edited(genes__2__name="x1"), "genes[2].name", "a unique name"),
    (edited(recipe__x=[{"gene": "x0"}, {"gene": "x1"}]), "genes[2].name", "a gene used in the recipe"),
    (edited(True, genes__0__shape=[3, 0]), "genes[0].shape[1]", "greater than or equal to 1"),
    (edited(True, genes__0__shape=[]), "genes[0].shape", "at least 1 item"),
    (edited(True, genes__0__shape=3), "genes[0].shape", "a valid list"),
    (edited(True, genes__5__when={"cells": 1}), "genes[5].when.cells", "a scalar gene, not an array gene"),
    (edited(True, genes__3__name="x[1]", recipe__merge__lam={"gene": "x[1]"}), "genes[3].name",
     "a gene whose scalar name 'x[1]' no other gene takes"),
    (edited(name=...), "name", "the field is required"),
    (edited(seed="one"), "seed", "a valid integer"),
    (edited(objectives__0__direction="up"), "objectives[0].direction", "'max' or 'min'"),
    (edited(objectives__0__task="middle"), "objectives[0].task", "'mean' or a task name"),
    (edited(objectives__0__metric="added_params", objectives__0__task="left"), "objectives[0].task", "no task"),
    (edited(engine__name="hillclimb"), "engine.name", "one of deap_ga, deap_nsga2"),
    (edited(engine__popsize=3), "engine.popsize", "no such field"),
    (edited(engine__name="deap_ga", engine__settings={"cxpb": 2}), "engine.settings.cxpb", "less than or equal to 1"),
    (edited(engine__name="deap_ga", engine__settings={"elite": 8}), "engine.settings.elite", "fewer than"),
    (edited(engine__name="deap_nsga2", engine__population=6), "engine.population", "a multiple of 4"),
    (edited(engine__name="optuna_cmaes", engine__settings={"with_margin": True}), "engine.settings.with_margin",
     "conditional genes"),
    (edited(objectives=two_objectives(), engine__name="deap_ga"), "engine.name", "an engine for 2 objectives"),
    (edited(engine__initial=[{"method": "tsv"}, {"methd": "tsv"}]), "engine.initial[1].methd", "a gene name (one of: x0"),
    (edited(engine__initial=[{"rank": 65}]), "engine.initial[0].rank", "a value gene 'rank' can take"),
    (edited(engine__initial=[{"method": "dare"}]), "engine.initial[0].method", "a value gene 'method' can take"),
    (edited(engine__initial=[{"x0": "far"}]), "engine.initial[0].x0", "a value gene 'x0' can take"),
    (edited(True, engine__initial=[{"cells": [[1, 2]]}]), "engine.initial[0].cells", "a nested list of shape [2, 2]"),
    (edited(True, engine__initial=[{"cells": 9}]), "engine.initial[0].cells", "a value gene 'cells[0,0]' can take"),
    (edited(engine__name="deap_ga", engine__population=2, engine__initial=[{}, {}, {}]), "engine.initial",
     "at most engine.population (2) genomes"),
    (edited(budget__evaluations=0), "budget.evaluations", "greater than or equal to 1"),
    (edited(fitness={"estimator": "pirt"}), "tasks[0].bank", "an item bank file for task"),
    (edited(fitness={"estimator": "magic", "bank": "b"}), "fitness.estimator", "one of full, gmp-irt, gpirt"),
    (edited(resources={"workers": 0}), "resources.workers", "greater than or equal to 1"),
    (edited(constraints={"max_params": 3}), "constraints.max_params", "no such field"),
])
def test_bad_space_names_file_and_field(tmp_path, data, field, expected):
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_space(path)
    err = info.value
    assert (err.file, err.field) == (str(path), field), str(err)
    assert expected in err.expected, str(err)
    assert str(path) in str(err) and f"'{field}'" in str(err)


def test_unknown_model_is_named(tmp_path):
    path = write(tmp_path, toy_space())
    with pytest.raises(ConfigError) as info:
        load_space(path, known_models={"mlp-a", "mlp-b"})
    assert info.value.field == "models[1]" and "mlp-a, mlp-b" in info.value.expected
    assert "'cnn-b'" in str(info.value)


def test_yaml_syntax_and_shape_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"<yaml>.*line 2"):
        load_space(write(tmp_path, "name: toy\n  seed: 1\n"))
    with pytest.raises(ConfigError, match="<root>"):
        load_space(write(tmp_path, "- just\n- a list\n"))
    with pytest.raises(ConfigError, match="readable file"):
        load_space(tmp_path / "missing.yaml")


def test_several_errors_are_counted(tmp_path):
    data = edited(seed="x", genes__0__low="y")
    with pytest.raises(ConfigError, match=r"and 1 more error\)"):
        load_space(write(tmp_path, data))


def test_overrides_are_revalidated():
    space = parse_space(toy_space(), source="toy.yaml")
    assert with_overrides(space, **{"budget.evaluations": 5, "seed": 9}).budget.evaluations == 5
    with pytest.raises(ConfigError, match="toy.yaml: field 'engine.name'"):
        with_overrides(space, **{"engine.name": "nope"})
    assert space.budget.evaluations == 30  # the original is untouched


def test_space_copy_is_independent_of_input():
    data = toy_space()
    before = copy.deepcopy(data)
    parse_space(data)
    assert data == before


def test_array_genes_are_scalar_element_genes_to_engines_and_nested_lists_to_recipes(tmp_path):
    space = parse_space(toy_space(array=True))
    assert [g.name for g in space.scalar_genes] == [
        "x[0]", "x[1]", "x[2]", "method", "rank", "lam", "cells[0,0]", "cells[0,1]", "cells[1,0]", "cells[1,1]",
        "pick[0]", "pick[1]"]
    cells = space.scalar_genes[6]
    assert (cells.low, cells.high, cells.shape, cells.when) == (1, 5, None, {"method": ["ties", "tsv"]})
    genome = {"x[0]": 0.5, "x[1]": 1.0, "x[2]": -1.0, "method": "ties", "rank": 8, "lam": 0.1,
              "cells[0,0]": 1, "cells[0,1]": 2, "cells[1,0]": 3, "cells[1,1]": 4, "pick[0]": "b", "pick[1]": "a"}
    recipe = decode(space, genome)
    assert recipe["x"] == [0.5, 1.0, -1.0] and recipe["cells"] == [[1, 2], [3, 4]] and recipe["pick"] == ["b", "a"]
    assert recipe["merge"] == {"method": "ties", "rank": None, "lam": 0.1}
    average = decode(space, {**genome, "method": "average"})
    assert average["cells"] is None and average["x"] == [0.5, 1.0, -1.0]
    assert mask_inactive(space, {**genome, "method": "average"})["cells[1,0]"] is None
    with pytest.raises(ValueError, match=r"active gene 'x\[2\]'"):
        decode(space, {k: v for k, v in genome.items() if k != "x[2]"})
    path = write(tmp_path, toy_space(array=True))
    dumped = dump_space(load_space(path))
    assert yaml.safe_load(dumped)["genes"][0] == {"name": "x", "when": None, "shape": [3], "log": False,
                                                   "type": "float", "low": -4.0, "high": 4.0}
    assert dump_space(load_space(write(tmp_path, dumped, "copy.yaml"))) == dumped


def test_sample_genomes_move_an_array_gene_as_one_unit():
    space = parse_space(toy_space(array=True))
    genomes = sample_genomes(space)
    assert all(set(g) == {s.name for s in space.scalar_genes} for g in genomes)
    xs = {tuple(g[f"x[{i}]"] for i in range(3)) for g in genomes}
    assert xs == {(-4, -4, -4), (4, 4, 4)}
    cells = {tuple(g[f"cells[{i},{j}]"] for i in range(2) for j in range(2)) for g in genomes}
    assert cells == {(None,) * 4, (1,) * 4, (5,) * 4}
