"""MASS routing over a resident Hugging Face causal LM (``weights`` and ``layerwise`` recipes with ``mass``).

MASS (Crisostomi et al., "MASS: MoErging through Adaptive Subspace Selection", 2025) routes each
input to the tasks whose updates explain it and runs a merge of only those tasks. Over a causal LM
the input is a sequence (a prompt, a multiple-choice context): a first pass through the recipe's merge
of every task records the input ``z_i`` of the routing ``layer`` (a Linear module) at every token, and
its mean over the sequence's unpadded tokens ``z`` is scored per task by the relative residual
``r_t = ||z - V_t V_t^T z|| / ||z||`` on the top ``route_rank`` right singular vectors of the task's update
of that layer (:func:`~evomerge.core.route.subspace_residuals`); ``softmax(-r / temperature)`` selects the
``top_k`` tasks (:func:`~evomerge.core.route.select_tasks`). The second pass runs the same recipe over the
selected tasks only (MASS: TSV-M of them; the recipe's ``method`` must be ``tsv``), written into the
resident model in place (:class:`~evomerge.recipe.inplace.InPlaceBuilder`) and kept as a snapshot per task
combination, so a batch routed to several combinations runs group by group. The zoo's
:class:`~evomerge.core.route.MASS` mixes per-task heads by the task probabilities; a causal LM has one head,
so the probabilities only select.

Two departures from the paper, both because the models are resident here: a selected task's vector is
used at the recipe's TSV rank (default: ``1/|selected|`` of each matrix's rank, so a single selected task
is its fine-tune exactly) rather than the ``1/T`` share MASS stores to save memory (TSV-C); and the route
is taken once per sequence, on the tokens the model is first given: a multiple-choice context is routed
alone and its continuations run on its route's key/value cache (:class:`RoutedCache`), so every choice of
an item is scored by the same merge; a generation is routed on its prompt.

Memory: the builder's base and task vectors, plus one float32 copy of the model per task combination used.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from evomerge.core.route import input_subspaces, select_tasks, subspace_residuals
from evomerge.errors import ConfigError, FieldIssue, UserError
from evomerge.items.scorers.lm import CausalLM
from evomerge.recipe.kind import RecipeKind, Strict

if TYPE_CHECKING:
    from evomerge.recipe.inplace import InPlaceBuilder


class MassSpec(Strict):
    """MASS routing (Crisostomi et al. 2025) over the tasks' subspaces at the Linear ``layer``.

    Uses the recipe's TSV ``rank``/``alpha`` for its second pass; ``enabled: false`` is a static merge
    (``layer`` may then be left out, as an inactive gene leaves it)."""

    enabled: bool = False
    layer: str | None = None
    route_rank: Annotated[int, Field(ge=1)] = 4
    top_k: Annotated[int, Field(ge=1)] = 1
    temperature: Annotated[float, Field(gt=0)] = 0.05
    threshold: float | None = None

    @model_validator(mode="after")
    def _layer_when_enabled(self) -> MassSpec:
        if self.enabled and self.layer is None:
            raise FieldIssue("layer", "the Linear module whose input is routed (MASS is enabled)", None)
        return self


Combo = tuple[int, ...]
MASS_NO_MERGEKIT = "MASS routing chooses a merge per input; mergekit writes one static model"


def subset_recipe(recipe: RecipeKind, tasks: Combo, source: str = "recipe") -> RecipeKind:
    """``recipe`` over its models ``tasks`` only, without routing: MASS's second pass."""
    from evomerge.recipe.schema import parse_recipe

    data = recipe.model_dump(mode="json") | {"models": [recipe.models[t] for t in tasks], "mass": None}
    return parse_recipe(data, source)


def check_mass(recipe: RecipeKind, config: Mapping[str, Any], source: str, prefix: str = "recipe") -> None:
    """A routed recipe over a causal LM of Hugging Face ``config``: ``method`` tsv, ``mass.layer`` a Linear
    module of the model, ``top_k`` at most the tasks, and every subset of the models a valid recipe
    (a per-model parameter is not); a ConfigError names ``source`` and the field."""
    from evomerge.recipe.stitch_view import meta_causal_lm

    spec = recipe.mass
    at = lambda field: f"{prefix}.{field}"  # noqa: E731
    if recipe.method != "tsv":
        raise ConfigError(source, at("method"), "tsv: MASS re-merges the selected tasks with TSV-M", recipe.method)
    linears = [n for n, m in meta_causal_lm(config).named_modules() if isinstance(m, nn.Linear)]
    if spec.layer not in linears:
        raise ConfigError(source, at("mass.layer"), f"a Linear module of '{recipe.base}' ({', '.join(linears)})", spec.layer)
    if spec.top_k > len(recipe.models):
        raise ConfigError(source, at("mass.top_k"), f"at most {len(recipe.models)} (the recipe's models)", spec.top_k)
    for name, value in recipe.params.items():
        if isinstance(value, list):
            raise ConfigError(source, at(f"params.{name}"), "one value for every model (MASS re-merges subsets of the "
                              "models: no per-model parameters)", value)
    try:
        subset_recipe(recipe, (0,), source)
    except ConfigError as err:
        raise ConfigError(source, at(err.field), f"{err.expected} (MASS re-merges subsets of the models: no "
                          "per-model parameters)", err.got) from None


def groups(routes: Sequence[Combo]) -> dict[Combo, list[int]]:
    """The rows of each task combination, in row order."""
    out: dict[Combo, list[int]] = {}
    for row, combo in enumerate(routes):
        out.setdefault(combo, []).append(row)
    return out


class RoutedCache:
    """The key/value caches of a routed batch: each row's task combination and one Hugging Face cache per
    combination over its rows (in row order). :meth:`reorder_cache` selects rows as ``DynamicCache``'s does."""

    def __init__(self, routes: Sequence[Combo]):
        self.routes = list(routes)
        self.caches: dict[Combo, Any] = {}

    def reorder_cache(self, index: Tensor) -> None:
        rows, members = index.tolist(), groups(self.routes)
        for combo, cache in self.caches.items():
            position = {r: k for k, r in enumerate(members[combo])}
            cache.reorder_cache(torch.tensor([position[r] for r in rows if self.routes[r] == combo],
                                             dtype=torch.long, device=index.device))
        self.routes = [self.routes[r] for r in rows]


class RoutedLM(nn.Module):
    """MASS over the resident causal LM of ``builder`` (see the module docstring): a causal LM for the
    scorers, ``forward`` routing each new sequence and :meth:`generate` routing each prompt."""

    def __init__(self, builder: InPlaceBuilder, recipe: RecipeKind):
        super().__init__()
        spec = recipe.mass
        self._builder, self._recipe, self.spec = builder, recipe, spec
        self._model = builder.module
        target = dict(self._model.named_modules()).get(spec.layer)
        if not isinstance(target, nn.Linear):
            raise UserError(f"MASS routing layer '{spec.layer}' is not a Linear module of the resident model")
        self._target = target
        self.config = self._model.config
        self.generation_config = getattr(self._model, "generation_config", None)
        deltas = [builder.task_vector(m, f"{spec.layer}.weight") for m in recipe.models]
        self.subspaces = input_subspaces(deltas, spec.route_rank)
        self._states: dict[Combo, dict[str, Tensor]] = {}
        self._current: Combo | None = None
        self._cache_arg = "cache" if "cache" in inspect.signature(self._model.forward).parameters else "past_key_values"

    @property
    def tasks(self) -> int:
        return len(self._recipe.models)

    def use(self, combo: Combo) -> None:
        """Write the merge of the tasks ``combo`` into the resident model (built once, then restored)."""
        if combo == self._current:
            return
        if combo in self._states:
            self._builder.restore(self._states[combo])
        else:
            self._builder.build(subset_recipe(self._recipe, combo))
            self._states[combo] = self._builder.snapshot()
        self._current = combo

    @torch.no_grad()
    def route(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor | None = None) -> list[Combo]:
        """Each row's selected tasks, from the routing layer's input averaged over its unpadded tokens
        under the merge of every task."""
        self.use(tuple(range(self.tasks)))
        seen: list[Tensor] = []
        hook = self._target.register_forward_pre_hook(lambda _m, args: seen.append(args[0].detach()))
        try:
            self._model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                        use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        mask = attention_mask.to(seen[0].dtype)[..., None]
        z = (seen[0] * mask).sum(1) / mask.sum(1).clamp(min=1)
        _, selected = select_tasks(subspace_residuals(z, self.subspaces), self.spec.temperature, self.spec.top_k,
                                   self.spec.threshold)
        return [tuple(row.nonzero().flatten().tolist()) for row in selected]

    def route_texts(self, texts: Sequence[str], tokenizer: Any, batch_size: int = 128) -> list[Combo]:
        """Each text's route, the text encoded and left-padded as the scorers encode a prompt."""
        lm = CausalLM(self, tokenizer, next(self._model.parameters()).device)
        out: list[Combo] = []
        for start in range(0, len(texts), batch_size):
            ids, mask = lm.left_padded([lm.encode(t) for t in texts[start : start + batch_size]])
            out += self.route(ids.to(lm.device), mask.to(lm.device), (mask.cumsum(-1) - 1).clamp(min=0).to(lm.device))
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                cache: RoutedCache | None = None, use_cache: bool = False,
                logits_to_keep: int = 0) -> CausalLMOutputWithPast:  # fmt: skip
        """Logits ``(B, T, V)``, each row's from the merge of its route. A new sequence (no cache) is
        routed; with ``use_cache`` the returned :class:`RoutedCache` carries the routes to the next call."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        if cache is None:
            cache = RoutedCache(self.route(input_ids, mask, position_ids))
        logits: Tensor | None = None
        for combo, rows in groups(cache.routes).items():
            self.use(combo)
            index = torch.tensor(rows, device=input_ids.device)
            kwargs: dict[str, Any] = {"use_cache": use_cache, "logits_to_keep": logits_to_keep}
            if use_cache and combo in cache.caches:
                kwargs[self._cache_arg] = cache.caches[combo]
            out = self._model(input_ids=input_ids[index], attention_mask=mask[index],
                              position_ids=None if position_ids is None else position_ids[index], **kwargs)
            if use_cache:
                cache.caches[combo] = getattr(out, "cache", None) or getattr(out, "past_key_values", None)
            if logits is None:
                logits = out.logits.new_empty(len(input_ids), *out.logits.shape[1:])
            logits[index] = out.logits
        return CausalLMOutputWithPast(logits=logits, cache=cache if use_cache else None)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None, pad_token_id: int | None = None,
                 **kwargs: Any) -> Tensor:  # fmt: skip
        """Each prompt routed, then ``transformers``' ``generate`` per task combination on its rows; rows
        right-padded with ``pad_token_id`` to the longest."""
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pad = self.config.eos_token_id if pad_token_id is None else pad_token_id
        outs: dict[int, Tensor] = {}
        for combo, rows in groups(self.route(input_ids, mask)).items():
            self.use(combo)
            index = torch.tensor(rows, device=input_ids.device)
            gen = self._model.generate(input_ids=input_ids[index], attention_mask=mask[index], pad_token_id=pad, **kwargs)
            outs |= dict(zip(rows, gen))
        width = max(len(g) for g in outs.values())
        out = input_ids.new_full((len(input_ids), width), pad)
        for row, g in outs.items():
            out[row, : len(g)] = g
        return out

    def num_params(self) -> int:
        """What MASS holds to route and re-merge: the base and every task vector."""
        model = sum(p.numel() for p in self._model.parameters())
        return model + self.tasks * sum(t.numel() for t in self._builder.targets.values())


class Routable:
    """What an in-place kind with a ``mass`` field (``weights``, ``layerwise``) answers about MASS routing
    over Hugging Face sources: :attr:`routed`, :meth:`routed_view`, and its sources' check."""

    @property
    def routed(self) -> bool:
        return self.mass is not None and self.mass.enabled

    @property
    def in_place(self) -> bool:
        return not self.routed

    @property
    def single_model(self) -> bool:
        return not self.routed

    def check_static(self, source: str) -> None:
        """A recipe merged into one model folder (:meth:`~evomerge.recipe.kind.RecipeKind.plan`) routes nothing."""
        if self.routed:
            raise ConfigError(source, "mass", "no MASS routing: it merges per input, which no single model folder "
                              "holds (a zoo run's export does)")

    def routed_view(self, builder: InPlaceBuilder) -> RoutedLM:
        return RoutedLM(builder, self)

    def check_sources(self, configs: Mapping[str, Mapping[str, Any]], source: str, prefix: str = "",
                      tasks: Sequence[str] = ()) -> None:  # fmt: skip
        check_mass(self, configs[self.base], source, prefix or "recipe")
