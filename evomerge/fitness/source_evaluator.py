"""The worker-side evaluator of recipes over model sources (Hugging Face folders...) on item files.

Built once per worker. An in-place recipe's ``base`` is loaded once into a resident model (one per
base the search names) and every candidate is written into it in place
(:class:`~evomerge.recipe.inplace.InPlaceBuilder`: task vectors and a method's per-task factors
cached); a recipe built as a view (:attr:`~evomerge.recipe.kind.RecipeKind.as_view`: ``stack``, ``stitch``) reads
every source it names from a resident model of its own, loaded once and never written, and each
candidate is a new module over their modules (:meth:`~evomerge.recipe.kind.RecipeKind.view`); a recipe
with MASS routing (:attr:`~evomerge.recipe.kind.RecipeKind.routed`) is a view over its base's resident
model that writes each route's merge into it (:mod:`evomerge.recipe.mass_view`). Each
candidate is then scored by the tasks' scorers (:mod:`evomerge.items.scorers`) on the chosen items
of the split. Nothing is saved or reloaded per candidate. The fitness side (full or IRT) is
:class:`~evomerge.fitness.evaluator.CandidateEvaluator`'s.

``params`` is the resident model's parameter count and ``added_params`` 0 (an in-place merge has
its base's shape); a view's ``params`` are what its materialized model holds
(:func:`~evomerge.recipe.stack_view.held_params`: a layer stacked twice counts twice) and its
``added_params`` those over its first model's, whose tokenizer scores it; a routed recipe's ``params`` are the
base and every task vector (what MASS holds). ``latency_ms`` is measured
only when an objective or a constraint reads it: the wall time of scoring the first task's first
batch (``resources.batch_size`` items), once more.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from evomerge.errors import UserError
from evomerge.fitness.evaluator import CandidateEvaluator
from evomerge.fitness.search_fitness import Answer
from evomerge.io.tensors import is_vocab_tensor
from evomerge.items import ItemSet, Scorer, make_scorer
from evomerge.recipe.inplace import InPlaceBuilder
from evomerge.recipe.materialize import Materialized
from evomerge.recipe.schema import parse_recipe
from evomerge.recipe.stitch_view import FitTexts

if TYPE_CHECKING:
    from evomerge.search.space import SearchSpace  # read only (duck-typed): the search layer sits above


@dataclass(frozen=True)
class ItemTask:
    """One item-file task on one split: its items, scorer and the metric whose 0/1 answers count."""

    key: str
    items: ItemSet
    scorer: Scorer
    metric: str

    @property
    def item_ids(self) -> tuple[str, ...]:
        return self.items.ids


class SourceEvaluator(CandidateEvaluator):
    """Scores in-place and view recipes over the space's model sources on its item-file tasks (a space that
    :func:`~evomerge.search.space.check_recipes` accepted: every model a source, every task an item file)."""

    def __init__(self, space: SearchSpace, split: str = "val", estimator: str | None = None, device: str = "cpu"):
        super().__init__(space, split, estimator, device)
        self.tasks: dict[str, ItemTask] = {}
        for t in space.tasks:
            items = t.item_set.split(split)
            if not len(items):
                raise UserError(f"{t.items}: task '{t.name}' has no items in the {split} split")
            self.tasks[t.name] = ItemTask(t.name, items, make_scorer(t.item_set), t.metric)
        self.weights = {t.name: t.weight for t in space.tasks}
        self._fit: FitTexts | None = None
        self.sources = dict(space.sources)
        self.batch_size = space.resources.batch_size
        self._init_fitness()  # the banks are checked before any model is loaded
        self._builders: dict[str, InPlaceBuilder] = {}
        self._params: dict[str, int] = {}  # each resident model's parameter count
        self._residents: dict[str, nn.Module] = {}  # the sources views read, each loaded once, never written
        self._tokenizers: dict[str, Any] = {}
        self._tokenizer: Any = None  # the tokenizer of the candidate being scored (its first model's)
        self._timed = any(o.metric == "latency_ms" for o in space.objectives) or space.constraints.max_latency_ms is not None
        if self.needs_source_answers:
            self._set_source_answers(self._source_answers())

    def _source_answers(self) -> dict[str, dict[str, np.ndarray]]:
        """Every source model's answers on every item of each task (loaded one at a time, then freed)."""
        out: dict[str, dict[str, np.ndarray]] = {name: {} for name in self.tasks}
        for m, source in self.sources.items():
            model, self._tokenizer = source.load_model(self.device), self.tokenizer(m)
            for name, task in self.tasks.items():
                out[name][m] = self.answerer(model, name)(np.arange(len(task.items)))
            del model
        return out

    def tokenizer(self, model: str) -> Any:
        """The tokenizer (or processor) of source ``model``, loaded once; None when it has none."""
        if model not in self._tokenizers:
            source = self.sources[model]
            self._tokenizers[model] = source.tokenizer() if getattr(source, "has_tokenizer", False) else None
        return self._tokenizers[model]

    def builder(self, base: str) -> InPlaceBuilder:
        """The resident model of ``base`` and its builder, made once."""
        if base not in self._builders:
            source = self.sources[base]
            reader = source.tensors()
            frozen = [n for n in reader.names() if is_vocab_tensor(reader, n)] if self.space.backbone_only else []
            self._builders[base] = InPlaceBuilder(source.load_model(self.device), reader,
                                                  {m: s.tensors() for m, s in self.sources.items()}, self.device, frozen)
            self._params[base] = sum(p.numel() for p in self._builders[base].module.parameters())  # fixed: in place
        return self._builders[base]

    def resident(self, model: str) -> nn.Module:
        """Source ``model`` loaded once, for views (:meth:`build`), with its parameter count."""
        if model not in self._residents:
            self._residents[model] = self.sources[model].load_model(self.device)
            self._params[model] = sum(p.numel() for p in self._residents[model].parameters())
        return self._residents[model]

    def fit_texts(self, model: str) -> FitTexts:
        """Every task's training items as texts (:meth:`~evomerge.items.ItemSet.answered`) with ``model``'s
        tokenizer, made once: what a stitch's aligners and router fit on (a task without training items
        is left out)."""
        if self._fit is None:
            pairs = {t.name: t.item_set.split("train").answered() for t in self.space.tasks}
            self._fit = FitTexts(pairs, self.tokenizer(model), self.batch_size)
        return self._fit

    def build(self, recipe: dict[str, Any]) -> Materialized:
        kind = parse_recipe(recipe, self.space.source, "recipe")
        first = kind.model_refs()[0][1]
        self._tokenizer = self.tokenizer(first)
        if kind.as_view:
            module = kind.view({m: self.resident(m) for _, m in kind.model_refs()}, self.fit_texts(first))
            params = kind.view_params(module)
            return Materialized(module, params, params - self._params[first], list(self.tasks))
        if kind.routed:
            module = kind.routed_view(self.builder(first))
            params = module.num_params()
            return Materialized(module, params, params - self._params[first], list(self.tasks))
        module = self.builder(first).build(kind)
        return Materialized(module, self._params[first], 0, list(self.tasks))

    def answerer(self, model: nn.Module, name: str) -> Answer:
        task, tokenizer = self.tasks[name], self._tokenizer

        def answer(items: np.ndarray) -> np.ndarray:
            chosen = task.items.subset([task.item_ids[i] for i in np.asarray(items, dtype=np.int64)])
            result = task.scorer.score(model, chosen, tokenizer=tokenizer, device=self.device, batch_size=self.batch_size)
            return result.answers(task.metric).astype(float)

        return answer

    def latency_ms(self, model: nn.Module) -> float | None:
        if not self._timed:
            return None
        name, task = next(iter(self.tasks.items()))
        start = time.perf_counter()
        self.answerer(model, name)(np.arange(min(self.batch_size, len(task.items))))
        return (time.perf_counter() - start) * 1000

