"""``materialize(recipe, sources)``: build the merged ``nn.Module`` a recipe describes, through the core.

The same recipe always gives the same function: aligners, stitch tuning and DARE take the
recipe's seed, and fit data are fixed subsets of the training split chosen by that seed.

``Sources`` is where source models come from: the trained zoo for search and evaluation, or
bare architectures (:class:`SkeletonSources`) when an exported model is rebuilt — then maps are
fitted on random activations of the right shapes only to build their structure, and every
weight is loaded from the export afterwards (strictly, so a structural mismatch fails loudly).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from evomerge.core.align import ConditionPair, make_aligner
from evomerge.core.gate import fit_gate
from evomerge.core.merge import is_trunk_key, merge, task_vectors
from evomerge.core.probe import ActivationCache, ProbeSet
from evomerge.core.route import MASS
from evomerge.core.stitch import condition_pairs, fit_stitch, tune_stitch
from evomerge.data.conditions import list_conditions
from evomerge.data.tasks import TaskData, load_task, parse_task_key
from evomerge.errors import UserError
from evomerge.recipe.kind import RecipeKind
from evomerge.recipe.merged import HeadsMerge, MassMerge, StitchMerge, Tail
from evomerge.recipe.schema import Branch, StitchRecipe, WeightsRecipe, parse_recipe
from evomerge.zoo.adapter import LayeredAdapter
from evomerge.zoo.specs import ModelSpec


class Sources(Protocol):
    """Source models by zoo id: their spec and a (frozen, shared) adapter."""

    seed: int

    def spec(self, model_id: str) -> ModelSpec: ...

    def adapter(self, model_id: str) -> LayeredAdapter: ...


@dataclass
class Materialized:
    """The merged module and its size: total parameters, parameters added over the reference source."""

    module: nn.Module
    params: int
    added_params: int
    tasks: list[str]


def own_task(spec: ModelSpec) -> str:
    """The task key a zoo model was trained on."""
    return f"{spec.dataset}/{spec.condition}"


def fit_probes(branch: Branch, dataset: str, data_seed: int, recipe_seed: int) -> list[ProbeSet]:
    """The conditions the branch's aligner is fitted on: fixed subsets of training items."""
    fit = branch.fit
    if fit.conditioning == "task":
        raise UserError("fit.conditioning 'task' conditions on item-file tasks (a stitch over Hugging Face sources); "
                        "zoo models take none, class or transformation")
    key = fit.task or f"{dataset}/all"
    ds, cond = parse_task_key(key)
    gen = torch.Generator().manual_seed(recipe_seed)

    def subset(task: TaskData, n: int) -> torch.Tensor:
        return torch.randperm(len(task), generator=gen)[: min(n, len(task))].sort().values

    def probe(task: TaskData, idx: torch.Tensor, name: str) -> ProbeSet:
        return ProbeSet(name, task.x[idx], tuple(task.item_ids[i] for i in idx.tolist()), task.y[idx])

    if fit.conditioning == "transformation":
        names = fit.conditions or ["all"] + [c.name for c in list_conditions(ds) if c.kind == "transform"]
        tasks = [load_task(ds, c, "train", data_seed) for c in names]
        return [probe(t, subset(t, fit.items // len(tasks)), t.condition) for t in tasks]
    task = load_task(ds, cond, "train", data_seed)
    idx = subset(task, fit.items)
    if fit.conditioning == "class":
        y = task.y[idx]
        return [probe(task, idx[y == c], f"class_{c}") for c in torch.unique(y).tolist()]
    return [probe(task, idx, cond)]


def build_stitch(recipe: StitchRecipe, sources: Sources, cache: ActivationCache | None, skeleton: bool) -> Materialized:
    """The ``stitch`` kind's module: the trunk, its stitched branch tails and their routing."""
    trunk = sources.adapter(recipe.trunk)
    tails = []
    for i, br in enumerate(recipe.branches):
        target = sources.adapter(br.model)
        aligner = make_aligner(br.aligner.name, center=br.aligner.center, seed=recipe.seed, **br.aligner.params)
        if skeleton:
            gen = torch.Generator().manual_seed(i)
            pairs = [ConditionPair(torch.randn(64, *trunk.activation_shape(br.source_layer), generator=gen),
                                   torch.randn(64, *target.activation_shape(br.target_layer), generator=gen))]
        else:
            probes = fit_probes(br, sources.spec(br.model).dataset, sources.seed, recipe.seed)
            pairs = condition_pairs(recipe.trunk, trunk, br.source_layer, br.model, target, br.target_layer, probes, cache)
        stitched = fit_stitch(aligner, trunk, br.source_layer, target, br.target_layer, pairs)
        if br.tune.epochs > 0 and not skeleton:
            ds, cond = parse_task_key(br.tune.task or own_task(sources.spec(br.model)))
            tune_stitch(stitched, load_task(ds, cond, "train", sources.seed), epochs=br.tune.epochs, lr=br.tune.lr, seed=recipe.seed)
        tails.append(Tail(target.module, br.source_layer, stitched.stitch, br.target_layer, br.weight))
    module = StitchMerge(trunk.module, recipe.trunk_weight, tails, recipe.routing, recipe.gate.layer).eval()
    if recipe.routing == "learned":
        module.gate = _fit_gate(module, recipe, sources, skeleton)
    total = module.num_params()
    return Materialized(module, total, total - trunk.num_params(), [])


@torch.no_grad()
def _fit_gate(module: StitchMerge, recipe: StitchRecipe, sources: Sources, skeleton: bool) -> nn.Module:
    """Fit the learned router on a fixed subset of training items (random inputs for a skeleton)."""
    if skeleton:  # no data: the weights are loaded afterwards
        x = torch.randn(32, *sources.adapter(recipe.trunk).example_input(1).shape[1:])
        y = torch.zeros(32, dtype=torch.long)
    else:
        ds, cond = parse_task_key(recipe.gate.task or f"{sources.spec(recipe.trunk).dataset}/all")
        task = load_task(ds, cond, "train", sources.seed)
        idx = torch.randperm(len(task), generator=torch.Generator().manual_seed(recipe.seed))[: recipe.gate.items]
        x, y = task.x[idx], task.y[idx]
    probs, weights, acts = module.path_outputs(x)
    return fit_gate(module.gate_features(probs, acts), probs, y, weights,
                    epochs=1 if skeleton else recipe.gate.epochs, seed=recipe.seed)


def build_mass(net: nn.Module, base: dict, taus: list[dict], heads: list[dict], recipe: WeightsRecipe) -> MASS:
    """MASS over the tasks' vectors ``taus`` with their ``heads``, as the recipe configures it."""
    m = recipe.mass
    assert m is not None
    params = {k: v for k, v in recipe.params.items() if k in ("rank", "alpha")}
    return MASS(net, base, taus, heads, m.layer, route_rank=m.route_rank, top_k=m.top_k,
                temperature=m.temperature, threshold=m.threshold, **params)


def build_weights(recipe: WeightsRecipe, sources: Sources) -> Materialized:
    """The ``weights`` kind's module: the merged trunk with each fine-tune's head (or MASS routing)."""
    base_adapter = sources.adapter(recipe.base)
    base = base_adapter.state_dict()
    specs = [sources.spec(m) for m in recipe.models]
    if any(s.base != recipe.base for s in specs):
        bad = next(s.id for s in specs if s.base != recipe.base)
        raise UserError(f"recipe.models: '{bad}' is not fine-tuned from base '{recipe.base}'")
    finetuned = [sources.adapter(m).state_dict() for m in recipe.models]
    tasks = [own_task(s) for s in specs]
    net = copy.deepcopy(base_adapter.module)
    if recipe.mass is not None and recipe.mass.enabled:
        taus = task_vectors(base, finetuned, is_trunk_key)
        heads = [{k: v for k, v in sd.items() if k not in taus[0]} for sd in finetuned]
        module: nn.Module = MassMerge(build_mass(net, base, taus, heads, recipe), tasks)
    else:
        params = dict(recipe.params)
        if recipe.method == "dare":
            params.setdefault("seed", recipe.seed)
        net.load_state_dict(merge(recipe.method, base, finetuned, params, keys=is_trunk_key))
        heads = {}
        for t, sd in zip(tasks, finetuned):
            w = sd["layers.head.weight"]
            head = nn.Linear(w.shape[1], w.shape[0])
            head.load_state_dict({"weight": w, "bias": sd["layers.head.bias"]})
            heads[t] = head
        module = HeadsMerge(net, heads)
    module.eval().requires_grad_(False)
    total = module.num_params()
    return Materialized(module, total, total - base_adapter.num_params(), tasks)


def materialize(
    recipe: dict | RecipeKind,
    sources: Sources,
    cache: ActivationCache | None = None,
    skeleton: bool = False,
) -> Materialized:
    """Build the merged module of ``recipe`` from ``sources`` (``cache``: activations reused across calls)
    by its kind's :meth:`~evomerge.recipe.kind.RecipeKind.build`, under the recipe's seed."""
    r = parse_recipe(recipe)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.seed)
        return r.build(sources, cache, skeleton)
