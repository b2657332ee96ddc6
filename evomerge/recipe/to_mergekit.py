"""A task-vector recipe over model folders (``weights``, ``layerwise``) as the mergekit config that
builds it, for ``mergekit.yaml`` in an export (``stack`` has its own,
:meth:`~evomerge.recipe.stack.StackRecipe.mergekit_config`).

The config has mergekit-evolve's shape (``mergekit/evo/genome.py``; read, not copied): one ``slices``
entry per layer group with each model's ``layer_range``, and each parameter a list of
``{filter, value}`` conditions, one per tensor filter (``.self_attn.`` / ``.mlp.``, the module names
the base's layers use) and a default for the rest. mergekit's planner merges the embeddings with the
first slice's parameters and the final norm and LM head with the last slice's at their default,
which is where a layer-wise recipe puts them (``rest`` of the first and the last group). A cell that
keeps the base gives every model weight 0 (``linear``: the base weight 1).

Methods: ``average`` -> ``linear``, ``task_arithmetic`` -> ``task_arithmetic``, ``ties`` -> ``ties``,
``dare`` -> ``dare_ties`` (with ``elect_sign``) or ``dare_linear``. Where mergekit defines a detail
otherwise, :data:`DIFFERENCES` says how (also docs/merge.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from evomerge.core.merge import MergeParams
from evomerge.io.tensors import LAYER, TensorSource
from evomerge.recipe.kind import NoMergekitConfig
from evomerge.recipe.layerwise import FILTERS, Cell, Filter, module_filter, num_layers

#: How mergekit's method differs from the evomerge method it stands for, by mergekit method.
DIFFERENCES = {
    "linear": "mergekit computes sum_t w_t theta_t / sum_t w_t, evomerge base + sum_t w_t (theta_t - base) / sum_t w_t: "
              "the same mean up to float32 rounding",
    "ties": "mergekit trims each update to max(1, floor(density * numel)) entries, evomerge to ceil(density * numel) "
            "(one entry more per tensor and model where density * numel is not whole), and elects +1 where the "
            "updates' sum is exactly 0 (evomerge: no sign, the base is kept)",
    "dare_ties": "mergekit draws other random masks than evomerge's per-(seed, tensor, model) generators and rescales "
                 "the kept entries to the update's L1 norm (evomerge: by 1 / (1 - p)): the same merge in expectation, "
                 "not tensor for tensor (identical at p = 0)",
}
DIFFERENCES["dare_linear"] = DIFFERENCES["dare_ties"]


def task_vector_config(method: str, base: str, models: list[str], cells: Mapping[Cell, MergeParams],
                       groups: int) -> dict[str, Any]:  # fmt: skip
    """The mergekit config of ``method`` over ``models`` (fine-tunes of ``base``, model folders) with
    ``cells[(group, filter)]``'s parameters (a cell left out keeps the base), the base's layers cut
    into ``groups`` groups as :func:`~evomerge.recipe.layerwise.tensor_cell` cuts them."""
    names = TensorSource(base).names()
    layers = num_layers(names)
    heads = _filter_heads(names)
    merge_method = _mergekit_method(method, cells)
    slices = []
    for g in range(groups):
        members = [i for i in range(layers) if i * groups // layers == g]
        span = [members[0], members[-1] + 1]
        shared, inputs = {}, [{} for _ in range(len(models) + 1)]  # the models', then the base's parameters
        for f in FILTERS:
            cell_shared, cell_inputs = _parameters(merge_method, cells.get(Cell(g, f)), len(models))
            for key, value in cell_shared.items():
                shared.setdefault(key, {})[f] = value
            for mine, theirs in zip(inputs, cell_inputs):
                for key, value in theirs.items():
                    mine.setdefault(key, {})[f] = value
        sources = [{"model": m, "layer_range": list(span),
                    **({"parameters": {k: _by_filter(v, heads) for k, v in p.items()}} if p else {})}
                   for m, p in zip([*models, base], inputs)]  # fmt: skip
        slices.append({"sources": sources, "parameters": {k: _by_filter(v, heads) for k, v in shared.items()}})
    config: dict[str, Any] = {"merge_method": merge_method, "slices": slices, "dtype": "float32"}
    if merge_method != "linear":
        config |= {"base_model": base, "tokenizer_source": "base"}
    return config


def _filter_heads(names: list[str]) -> dict[Filter, list[str]]:
    """The module names the layers' attention and MLP tensors start with (``self_attn``, ``mlp``)."""
    heads: dict[Filter, list[str]] = {"attention": [], "mlp": []}
    for name in names:
        if (m := LAYER.match(name)) is not None:
            head = m["rest"].split(".", 1)[0]
            kind = module_filter(head)
            if kind != "rest" and head not in heads[kind]:
                heads[kind].append(head)
    return heads


def _by_filter(values: dict[Filter, Any], heads: dict[Filter, list[str]]) -> Any:
    """One value when the filters agree, else mergekit's conditions: ``[{filter: .self_attn., value}, ..., {value}]``."""
    if len(set(values.values())) == 1:
        return values["rest"]
    conditions = [{"filter": f".{h}.", "value": values[f]} for f in ("attention", "mlp") for h in heads[f]]
    return [*conditions, {"value": values["rest"]}]


def _scalar(params: MergeParams, field: str) -> float:
    value = getattr(params, field)
    if isinstance(value, dict):
        raise NoMergekitConfig(f"'{field}' is given per layer prefix ({value}); mergekit's parameters are per "
                               "layer group and filter")
    return float(value)


def _mergekit_method(method: str, cells: Mapping[Cell, MergeParams]) -> str:
    if method in ("average", "task_arithmetic", "ties"):
        return {"average": "linear"}.get(method, method)
    if method == "dare":
        signs = {c.elect_sign for c in cells.values()}
        if len(signs) > 1:
            raise NoMergekitConfig("DARE with sign election in some cells and without in others: two mergekit methods")
        return "dare_ties" if signs == {True} else "dare_linear"
    raise NoMergekitConfig(f"merge method '{method}' has no mergekit counterpart"
                           + (" (TSV-M is evomerge's own)" if method == "tsv" else ""))


def _parameters(merge_method: str, c: Any, n: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One cell's mergekit parameters (``c`` None: keep the base): the shared ones, and each of the
    ``n`` models' then the base's."""
    if merge_method == "linear":  # the weighted mean of the models, or the base alone
        weights = [0.0] * n if c is None else list(c.weights or [1.0] * n)
        return {}, [*({"weight": w} for w in weights), {"weight": 1.0 if c is None else 0.0}]
    shared = {"lambda": 1.0 if c is None else _scalar(c, "lam")}
    if merge_method == "task_arithmetic":
        weights = [0.0] * n if c is None else list(c.weights or [1.0] * n)
        return shared, [*({"weight": w} for w in weights), {}]
    if merge_method == "ties":
        density = 1.0 if c is None else _scalar(c, "density")
    else:  # dare_ties takes the mean of the agreeing updates, as evomerge's DARE with elect_sign does
        shared["normalize"] = merge_method == "dare_ties"
        density = 1.0 if c is None else 1.0 - _scalar(c, "p")
    return shared, [*({"weight": 0.0 if c is None else 1.0, "density": density} for _ in range(n)), {}]
