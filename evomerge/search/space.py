"""The search space file: a pydantic schema, its loader and the genome decoder.

A space names the models and tasks, a ``recipe`` template whose ``{gene: NAME}``
mappings are filled from a genome, the genes (categorical, int, float; optionally
conditional through ``when``; an array gene with a ``shape`` fills a nested list, its elements
``NAME[i,j]`` being the scalar genes engines search, :attr:`SearchSpace.scalar_genes`),
objectives, constraints, the engine, the budget, the fitness estimator and the resources. Every
mistake becomes a :class:`ConfigError` naming the file, the field path (``genes[2].low``) and what
was expected. The recipe template is
checked at load too: decoded with sample genomes, each recipe must pass the recipe schema and name
only the space's models (:func:`check_recipes`), so a typo fails before any candidate runs.

Models are zoo ids or source entries (``{name, source: zoo|hf|torch, ...}``, opened through
:func:`evomerge.sources.open_source`: headers and configs only); tasks are built-in datasets or item
files (``{name, items, format, metric}``, read through :func:`evomerge.items.load_items`). Paths are
relative to the space file and kept absolute, so the run folder's copy loads from anywhere. A weight
merge over Hugging Face sources is checked for one architecture and one vocabulary (or
``backbone_only``) at load.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, Union

import yaml
from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from evomerge.errors import ConfigError, FieldIssue, UserError, config_error, read_text
from evomerge.recipe.kind import path_steps
from evomerge.recipe.schema import RECIPE_KINDS, parse_recipe
from evomerge.settings import FitnessSettings, Resources, Seed, Strict, ZooSettings

if TYPE_CHECKING:
    from evomerge.items import ItemSet
    from evomerge.sources import Source

Scalar = Union[StrictBool, StrictInt, StrictFloat, StrictStr, None]


#: A probability setting of an engine, in [0, 1].
Probability = Annotated[float, Field(ge=0, le=1)]


class _GeneBase(Strict):
    name: Annotated[str, Field(min_length=1)]
    when: dict[str, Union[Scalar, list[Scalar]]] | None = None
    #: an array gene's shape: ``{gene: NAME}`` decodes to a nested list of it
    shape: Annotated[list[Annotated[StrictInt, Field(ge=1)]], Field(min_length=1)] | None = None

    def elements(self) -> list[Self]:
        """The scalar genes engines see: this gene, or one per element of its shape, named
        ``NAME[i,j,...]`` (``w[0,2,1]``) and carrying its bounds and ``when``."""
        if self.shape is None:
            return [self]
        return [self.model_copy(update={"name": f"{self.name}[{','.join(map(str, index))}]", "shape": None})
                for index in itertools.product(*map(range, self.shape))]


class CategoricalGene(_GeneBase):
    type: Literal["categorical"]
    choices: Annotated[list[Scalar], Field(min_length=1)]

    def index(self, value: Any) -> int | None:
        """The position of ``value`` among the choices (equal and of the same type: ``1`` is not ``True``), or None."""
        return next((i for i, c in enumerate(self.choices) if value == c and type(value) is type(c)), None)

    def allows(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices (for ``when`` conditions)."""
        return self.index(value) is not None


class _NumericGene(_GeneBase):
    log: bool = False

    @model_validator(mode="after")
    def _bounds(self) -> _NumericGene:
        if self.low >= self.high:
            raise FieldIssue("low", f"a value below high ({self.high})", self.low)
        if self.log and self.low <= 0:
            raise FieldIssue("low", "a value > 0 for a log-scale gene", self.low)
        return self


class IntGene(_NumericGene):
    type: Literal["int"]
    low: StrictInt
    high: StrictInt
    step: Annotated[StrictInt, Field(ge=1)] = 1

    @model_validator(mode="after")
    def _step(self) -> IntGene:
        if self.log and self.step != 1:
            raise FieldIssue("step", "1 for a log-scale int gene", self.step)
        if (self.high - self.low) % self.step:
            raise FieldIssue("high", f"low plus a multiple of step ({self.step})", self.high)
        return self

    def allows(self, value: Any) -> bool:
        return (
            isinstance(value, int)
            and self.low <= value <= self.high
            and (value - self.low) % self.step == 0
        )


class FloatGene(_NumericGene):
    type: Literal["float"]
    low: float
    high: float

    def allows(self, value: Any) -> bool:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and self.low <= value <= self.high


Gene = Annotated[Union[CategoricalGene, IntGene, FloatGene], Field(discriminator="type")]
GENE_TYPES = ("categorical", "int", "float")
TASK_FORMS = ("builtin", "item_file")
#: The discriminated unions of a space file, for error messages.
TAGS = {"type": ("a gene type", GENE_TYPES), "task": ("a task form", TASK_FORMS)}


class TaskSpec(Strict):
    """A built-in dataset under a condition; ``weight`` its share of ``accuracy/mean``; ``bank`` its item
    bank file for IRT fitness (required on every task when a space with several tasks uses an IRT estimator)."""

    name: Annotated[str, Field(min_length=1)]
    dataset: str
    condition: str = "all"
    weight: Annotated[float, Field(gt=0)] = 1.0
    bank: str | None = None


class ItemTaskSpec(Strict):
    """Items read from a file at load: ``items`` (relative to the space file), its ``format`` block
    (inline, or a YAML file holding it), the scorer's ``metric`` that gives the 0/1 answers, and the
    seeded split (``seed``, ``val_fraction`` of the items without a ``split`` field go to ``val``); ``weight``
    and ``bank`` as for built-in tasks; ``val_items``: the search scores only the first ``val_items``
    validation items (in file order; the test and training items are all kept), a cheaper fitness."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$")]
    items: Path
    format: Union[dict[str, Any], Path]
    metric: str
    seed: Seed = 0
    val_fraction: Annotated[float, Field(ge=0, le=1)] = 0.5
    val_items: Annotated[int, Field(ge=1)] | None = None
    weight: Annotated[float, Field(gt=0)] = 1.0
    bank: str | None = None
    _item_set: ItemSet = PrivateAttr()

    @model_validator(mode="after")
    def _load(self, info: ValidationInfo) -> ItemTaskSpec:
        from evomerge.items import SCORERS, load_items, parse_format
        from evomerge.items.readers import format_block

        base, source = _location(info)
        self.items = (base / self.items).absolute()
        if not self.items.is_file():
            raise FieldIssue("items", "an existing item file", str(self.items))
        if isinstance(self.format, Path):
            file = base / self.format
            if not file.is_file():
                raise FieldIssue("format", "a format block, or an existing YAML file holding one", str(file))
            fmt = parse_format(*format_block(str(file)))
        else:
            try:
                fmt = parse_format(self.format, source)
            except ConfigError as err:
                raise FieldIssue(err.field, err.expected, err.got) from None
        self.format = fmt.model_dump(mode="json")
        metrics = SCORERS.get(fmt.type).metrics
        if self.metric not in metrics:
            raise FieldIssue("metric", f"a metric of the {fmt.type} scorer ({', '.join(metrics)})", self.metric)
        items = load_items(self.items, fmt, seed=self.seed, val_fraction=self.val_fraction, name=self.name)
        if self.val_items is not None:
            kept = set(items.split("val").ids[: self.val_items])
            items = items.subset([i.id for i in items if i.split != "val" or i.id in kept])
        self._item_set = items
        return self

    @property
    def item_set(self) -> ItemSet:
        """Every item of the file (validation items up to ``val_items``), with ids and splits."""
        return self._item_set


def _task_form(value: Any) -> str:
    if isinstance(value, (TaskSpec, ItemTaskSpec)):
        return "item_file" if isinstance(value, ItemTaskSpec) else "builtin"
    return "item_file" if isinstance(value, Mapping) and "items" in value else "builtin"


Task = Annotated[Union[Annotated[TaskSpec, Tag("builtin")], Annotated[ItemTaskSpec, Tag("item_file")]],
                 Discriminator(_task_form)]
#: A ``models`` entry: a zoo model id, or a source such as ``{name: a, source: hf, path: models/a}``.
ModelEntry = Union[StrictStr, dict[str, Any]]


def _location(info: ValidationInfo) -> tuple[Path, str]:
    """The space file's folder (what relative paths start from) and its name, from the context."""
    context = info.context or {}
    return context.get("base") or Path(), context.get("source", "<space>")


class Constraints(Strict):
    max_added_params: Annotated[int, Field(ge=0)] | None = None
    max_latency_ms: Annotated[float, Field(gt=0)] | None = None

    def violations(self, metrics: Mapping[str, float]) -> list[str]:
        """Human-readable constraint violations of one candidate's metrics."""
        out = []
        for limit, metric in ((self.max_added_params, "added_params"), (self.max_latency_ms, "latency_ms")):
            if limit is not None and metric in metrics and metrics[metric] > limit:
                out.append(f"{metric} {metrics[metric]:g} > max_{metric} {limit:g}")
        return out


class Objective(Strict):
    name: Annotated[str, Field(min_length=1)]
    metric: Literal["accuracy", "added_params", "latency_ms"]
    direction: Literal["max", "min"]
    task: str | None = None

    @model_validator(mode="after")
    def _task(self) -> Objective:
        if self.metric == "accuracy" and self.task is None:
            self.task = "mean"
        elif self.metric != "accuracy" and self.task is not None:
            raise FieldIssue("task", f"no task for metric '{self.metric}'", self.task)
        return self

    @property
    def key(self) -> str:
        """The evaluator's metric key: ``accuracy/<task name>``, ``accuracy/mean``, ``added_params``..."""
        return f"accuracy/{self.task}" if self.metric == "accuracy" else self.metric


class EngineSpec(Strict):
    """``initial``: genomes the search starts from (a warm start, as Optuna's ``enqueue_trial``): the
    first candidates asked (DEAP: the first individuals of the first generation), each a mapping of gene
    names to values; an array gene takes one value for every element or a nested list of its shape;
    the genes an entry leaves out are drawn as usual, values of genes it makes inactive are ignored."""

    name: str = "optuna_tpe"
    population: Annotated[int, Field(ge=2)] = 16
    settings: dict[str, Any] = {}
    initial: list[dict[str, Any]] = []


class Budget(Strict):
    evaluations: Annotated[int, Field(ge=1)] = 100
    time_s: Annotated[float, Field(gt=0)] | None = None


class SearchSpace(Strict):
    name: Annotated[str, Field(min_length=1)]
    seed: Seed = 0
    zoo: ZooSettings = ZooSettings()
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    tasks: Annotated[list[Task], Field(min_length=1)]
    backbone_only: StrictBool = False
    recipe: dict[str, Any]
    genes: Annotated[list[Gene], Field(min_length=1)]
    constraints: Constraints = Constraints()
    objectives: Annotated[list[Objective], Field(min_length=1)]
    engine: EngineSpec = EngineSpec()
    budget: Budget = Budget()
    fitness: FitnessSettings = FitnessSettings()
    resources: Resources = Resources()
    _source: str = PrivateAttr(default="<space>")
    _sources: dict[str, Source] = PrivateAttr(default_factory=dict)
    _scalar_genes: list[CategoricalGene | IntGene | FloatGene] = PrivateAttr(default_factory=list)
    _initial: list[dict[str, Any]] = PrivateAttr(default_factory=list)

    @property
    def source(self) -> str:
        """The file this space was loaded from (for error messages)."""
        return self._source

    @property
    def scalar_genes(self) -> list[CategoricalGene | IntGene | FloatGene]:
        """The genes engines search, in order: each scalar gene, and each element of an array gene."""
        return self._scalar_genes

    @property
    def initial_genomes(self) -> list[dict[str, Any]]:
        """``engine.initial`` by scalar gene name (array genes element by element), partial genomes."""
        return self._initial

    @property
    def model_names(self) -> list[str]:
        """What recipes call the models: zoo ids and the entries' names."""
        return [m if isinstance(m, str) else m["name"] for m in self.models]

    @property
    def sources(self) -> dict[str, Source]:
        """The models given as source entries, opened (headers and configs read), by name."""
        return self._sources

    @property
    def builtin_only(self) -> bool:
        """Whether every model is a zoo id and every task a built-in dataset (the zoo evaluator's spaces;
        the others are searched over model sources)."""
        return all(isinstance(m, str) for m in self.models) and all(isinstance(t, TaskSpec) for t in self.tasks)

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def record_values(self, record: Mapping[str, Any]) -> list[float]:
        """A run record's objective values, in the space's order."""
        return [record["objectives"][o.name] for o in self.objectives]

    def task_banks(self) -> dict[str, str | None]:
        """Each task's item bank: its own ``bank``, else ``fitness.bank`` in a single-task space."""
        single = self.fitness.bank if len(self.tasks) == 1 else None
        return {t.name: t.bank or single for t in self.tasks}

    def objective_values(self, metrics: Mapping[str, float]) -> list[float]:
        """The objectives' values from an evaluator's metrics; KeyError names a missing metric."""
        missing = [o.key for o in self.objectives if o.key not in metrics]
        if missing:
            raise KeyError(f"evaluator reported no metric {', '.join(missing)}")
        return [float(metrics[o.key]) for o in self.objectives]

    @field_validator("fitness")
    @classmethod
    def _fitness_names(cls, fitness: FitnessSettings) -> FitnessSettings:
        """The estimator and anchors must be registered (the banks an estimator needs: ``_check_banks``)."""
        from evomerge.fitness.anchors import ANCHORS
        from evomerge.fitness.estimators import ESTIMATORS

        if fitness.estimator != "full" and fitness.estimator not in ESTIMATORS:
            raise FieldIssue("estimator", f"one of full, {', '.join(ESTIMATORS.names())}", fitness.estimator)
        if fitness.anchors not in ANCHORS:
            raise FieldIssue("anchors", f"one of {', '.join(ANCHORS.names())}", fitness.anchors)
        return fitness

    @model_validator(mode="before")
    @classmethod
    def _expand_variables(cls, data: Any) -> Any:
        """``${lm}`` at the start of a string field of a ``models`` or ``tasks`` entry: the folder of the
        built-in LM family of ``zoo.seed`` (:class:`~evomerge.zoo.lm.catalog.LMZoo`), which must be built."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        zoo = data.get("zoo")
        seed = zoo.get("seed", 0) if isinstance(zoo, Mapping) else 0
        for key in ("models", "tasks"):
            entries = data.get(key)
            if isinstance(entries, list):
                data[key] = [_expand_lm(e, f"{key}[{i}]", seed) if isinstance(e, Mapping) else e
                             for i, e in enumerate(entries)]
        return data

    @model_validator(mode="after")
    def _cross_references(self, info: ValidationInfo) -> SearchSpace:
        self._open_models(info)
        _unique("models", self.model_names, [".name" * isinstance(m, dict) for m in self.models])
        _unique("tasks", [t.name for t in self.tasks], "name")
        _unique("genes", [g.name for g in self.genes], "name")
        _unique("objectives", [o.name for o in self.objectives], "name")
        self._check_tokenizers()
        tasks = {t.name for t in self.tasks}
        for i, o in enumerate(self.objectives):
            if o.task is not None and o.task != "mean" and o.task not in tasks:
                raise FieldIssue(f"objectives[{i}].task", f"'mean' or a task name ({', '.join(sorted(tasks))})", o.task)
        self._check_genes()
        self._check_banks()
        return self

    def _check_banks(self) -> None:
        """An IRT estimator needs a bank per task: ``fitness.bank`` for one task (or ``tasks[0].bank``,
        not both), ``tasks[i].bank`` on each of several."""
        if self.fitness.estimator == "full":
            return
        name = self.fitness.estimator
        if len(self.tasks) == 1:
            if self.fitness.bank and self.tasks[0].bank and self.fitness.bank != self.tasks[0].bank:
                raise FieldIssue("tasks[0].bank", "no second bank beside fitness.bank (one of the two)",
                                 self.tasks[0].bank)
            if self.task_banks()[self.tasks[0].name] is None:
                raise FieldIssue("fitness.bank", f"an item bank name for estimator '{name}'")
            return
        if self.fitness.bank is not None:
            raise FieldIssue("fitness.bank", "no space-wide bank in a space with several tasks "
                             "(a bank covers one task: set tasks[i].bank on each)", self.fitness.bank)
        for i, t in enumerate(self.tasks):
            if t.bank is None:
                raise FieldIssue(f"tasks[{i}].bank", f"an item bank file for task '{t.name}' "
                                 f"(estimator '{name}', one bank per task)")

    def _open_models(self, info: ValidationInfo) -> None:
        """Check zoo ids against ``known_models`` (in the context) and open each source entry, its
        path fields made absolute; its name (given, or the source's default) is written back."""
        from evomerge.sources import open_source

        base, source = _location(info)
        known = (info.context or {}).get("known_models")
        zoo: dict[str, Any] = {}
        for i, m in enumerate(self.models):
            if isinstance(m, str):
                if known is not None and m not in known:
                    raise FieldIssue(f"models[{i}]", f"a zoo model id (one of {', '.join(sorted(known))})", m)
                continue
            if m.get("source") == "zoo" and not zoo:
                from evomerge.zoo.catalog import Zoo

                zoo["zoo"] = Zoo(seed=self.zoo.seed)
            entry = _absolute_paths(m, base)
            try:
                opened = open_source(entry, source, f"models[{i}]", zoo)
            except ConfigError:
                raise
            except UserError as exc:  # a checkpoint the headers cannot be read from
                raise ConfigError(source, f"models[{i}]", f"a model whose checkpoint can be read ({exc})") from None
            self.models[i] = {**entry, "name": opened.name}
            self._sources.setdefault(opened.name, opened)

    def _check_tokenizers(self) -> None:
        """A task scored on text needs every model to bring its tokenizer."""
        from evomerge.items import make_scorer
        from evomerge.sources import HFSource
        from evomerge.sources.hf import TOKENIZER_FILES

        text = next((t for t in self.tasks if isinstance(t, ItemTaskSpec)
                     and make_scorer(t.item_set).needs_tokenizer(t.item_set.items)), None)
        if text is None:
            return
        why = f"task '{text.name}' ({text.item_set.kind}) is scored on text through the model's tokenizer"
        for i, name in enumerate(self.model_names):
            source = self._sources.get(name)
            if not isinstance(source, HFSource):
                kind = source.kind if source is not None else "zoo"
                raise FieldIssue(f"models[{i}]", f"a model with a tokenizer (an hf source; {why})", f"{name} ({kind})")
            if not source.has_tokenizer:
                raise FieldIssue(f"models[{i}].path", f"a directory with a tokenizer ({', '.join(TOKENIZER_FILES)}): "
                                 f"{why}", str(source.path))

    def _check_genes(self) -> None:
        earlier: dict[str, CategoricalGene | IntGene | FloatGene] = {}
        used: set[str] = set()
        for i, g in enumerate(self.genes):
            for ref, val in (g.when or {}).items():
                path = f"genes[{i}].when.{ref}"
                other = earlier.get(ref)
                if other is None:
                    raise FieldIssue(path, f"a gene defined before '{g.name}' (one of: {', '.join(earlier) or 'none'})", ref)
                if isinstance(other, FloatGene):
                    raise FieldIssue(path, "a condition on a categorical or int gene, not a float gene", ref)
                if other.shape is not None:
                    raise FieldIssue(path, "a condition on a scalar gene, not an array gene", ref)
                for v in val if isinstance(val, list) else [val]:
                    if not other.allows(v):
                        raise FieldIssue(path, f"a value gene '{ref}' can take", v)
                used.add(ref)
            earlier[g.name] = g
        for path, ref in template_refs(self.recipe, "recipe"):
            if ref not in earlier:
                raise FieldIssue(path, f"a defined gene name (one of: {', '.join(earlier)})", ref)
            used.add(ref)
        for i, g in enumerate(self.genes):
            if g.name not in used:
                raise FieldIssue(f"genes[{i}].name", "a gene used in the recipe template or in a 'when' condition", g.name)
        scalar: dict[str, CategoricalGene | IntGene | FloatGene] = {}
        for i, g in enumerate(self.genes):
            for e in g.elements():
                if e.name in scalar:
                    raise FieldIssue(f"genes[{i}].name", f"a gene whose scalar name '{e.name}' no other gene "
                                     "takes (an array gene's elements are named NAME[i,j,...])", g.name)
                scalar[e.name] = e
        self._scalar_genes = list(scalar.values())
        self._initial = [self._initial_genome(f"engine.initial[{i}]", entry, scalar)
                         for i, entry in enumerate(self.engine.initial)]

    def _initial_genome(self, path: str, entry: dict[str, Any], scalar: dict[str, Any]) -> dict[str, Any]:
        """One ``engine.initial`` entry as scalar gene values, each checked against its gene."""
        genes = {g.name: g for g in self.genes}
        out: dict[str, Any] = {}
        for name, value in entry.items():
            gene = genes.get(name)
            if gene is not None and gene.shape is not None:
                elements = gene.elements()
                if isinstance(value, list):
                    flat = _flatten(value, gene.shape)
                    if flat is None:
                        raise FieldIssue(f"{path}.{name}", f"one value, or a nested list of shape {gene.shape}", value)
                else:
                    flat = [value] * len(elements)
                pairs = list(zip(elements, flat))
            elif name in scalar:
                pairs = [(scalar[name], value)]
            else:
                raise FieldIssue(f"{path}.{name}", f"a gene name (one of: {', '.join(genes)})", name)
            for element, v in pairs:
                if not element.allows(v):
                    raise FieldIssue(f"{path}.{name}", f"a value gene '{element.name}' can take", v)
                out[element.name] = v
        return out


def _flatten(value: Any, shape: list[int]) -> list[Any] | None:
    """A nested list of ``shape`` flattened in row-major order, or None when its shape differs."""
    if not shape:
        return None if isinstance(value, list) else [value]
    if not isinstance(value, list) or len(value) != shape[0]:
        return None
    parts = [_flatten(v, shape[1:]) for v in value]
    return None if any(p is None for p in parts) else [x for p in parts for x in p]


def _unique(field: str, names: list[str], sub: str | list[str] = "") -> None:
    """Names must not repeat; ``sub``: the name's field under each entry (one for all, or per entry)."""
    subs = sub if isinstance(sub, list) else [f".{sub}" if sub else ""] * len(names)
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            raise FieldIssue(f"{field}[{i}]{subs[i]}", "a unique name", n)
        seen.add(n)


#: The path variable of the built-in LM family's folder (``docs/spaces.md``).
LM_VARIABLE = "${lm}"


def _expand_lm(entry: Mapping[str, Any], field: str, seed: Any) -> dict[str, Any]:
    """The entry with :data:`LM_VARIABLE` replaced by the LM family's folder; FieldIssue when the family
    is not built (or the seed is not an integer)."""
    if not any(isinstance(v, str) and v.startswith(LM_VARIABLE) for v in entry.values()):
        return dict(entry)
    from evomerge.zoo.lm.catalog import LMZoo

    if not isinstance(seed, int):
        raise FieldIssue("zoo.seed", "an integer seed (it names the LM family of ${lm})", seed)
    zoo = LMZoo(seed=seed)
    out = {}
    for k, v in entry.items():
        if isinstance(v, str) and v.startswith(LM_VARIABLE):
            if not all(zoo.is_built(i) for i in zoo.ids()):
                raise FieldIssue(f"{field}.{k}", f"the built-in LM family built for seed {seed} ({LM_VARIABLE} is "
                                 f"{zoo.root}; build it with 'evomerge zoo build --family lm --seed {seed}')", v)
            v = str(zoo.root) + v[len(LM_VARIABLE):]
        out[k] = v
    return out


def _absolute_paths(entry: dict[str, Any], base: Path) -> dict[str, Any]:
    """A source entry with the path fields of its kind made absolute, relative ones against ``base``."""
    from evomerge.sources import SOURCES

    kind = entry.get("source")
    if kind not in SOURCES:
        return dict(entry)  # open_source names the unknown kind
    fields = SOURCES.get(kind).model_fields
    return {k: str((base / v).absolute()) if isinstance(v, str) and k in fields and fields[k].annotation is Path else v
            for k, v in entry.items()}


def _is_ref(node: Any) -> bool:
    return isinstance(node, dict) and list(node) == ["gene"]


def template_refs(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    """Every ``{gene: NAME}`` in a template, with its field path."""
    if _is_ref(node):
        yield f"{path}.gene", node["gene"]
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from template_refs(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from template_refs(v, f"{path}[{i}]")


def is_active(gene: CategoricalGene | IntGene | FloatGene, genome: Mapping[str, Any]) -> bool:
    """Whether ``gene``'s ``when`` conditions hold; ``genome`` holds None for inactive genes."""
    return all(
        genome.get(ref) in (val if isinstance(val, list) else [val]) for ref, val in (gene.when or {}).items()
    )


def mask_inactive(space: SearchSpace, genome: Mapping[str, Any]) -> dict[str, Any]:
    """Every scalar gene's value (array genes element by element), None for the inactive ones
    (gene order resolves chains of conditions)."""
    out: dict[str, Any] = {}
    for g in space.scalar_genes:
        active = is_active(g, out)
        out[g.name] = genome.get(g.name) if active else None
        if active and out[g.name] is None:
            raise ValueError(f"genome lacks a value for active gene '{g.name}'")
    return out


def _nest(flat: list[Any], shape: list[int]) -> list[Any]:
    """A flat row-major list as nested lists of ``shape``."""
    if len(shape) == 1:
        return flat
    size = len(flat) // shape[0]
    return [_nest(flat[i * size:(i + 1) * size], shape[1:]) for i in range(shape[0])]


def gene_values(space: SearchSpace, genome: Mapping[str, Any]) -> dict[str, Any]:
    """Each declared gene's value in a genome of scalar genes: an array gene's is the nested list
    of its elements; an inactive gene's is None."""
    values = mask_inactive(space, genome)
    out: dict[str, Any] = {}
    for g in space.genes:
        if g.shape is None:
            out[g.name] = values[g.name]
        else:
            out[g.name] = _nest([values[e.name] for e in g.elements()], g.shape) if is_active(g, values) else None
    return out


def decode(space: SearchSpace, genome: Mapping[str, Any]) -> dict:
    """The recipe for ``genome`` (scalar genes, array elements included): template references
    replaced, an array gene by its nested list, inactive genes as null."""
    values = gene_values(space, genome)

    def fill(node: Any) -> Any:
        if _is_ref(node):
            return values[node["gene"]]
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        if isinstance(node, list):
            return [fill(v) for v in node]
        return node

    return fill(space.recipe)


# ---- checking the recipe template before any candidate runs ----------------------


def _samples(gene: CategoricalGene | IntGene | FloatGene) -> list[Any]:
    """The values of a gene that matter to a recipe's validity: every choice, or both bounds."""
    return list(gene.choices) if isinstance(gene, CategoricalGene) else [gene.low, gene.high]


def sample_genomes(space: SearchSpace) -> list[dict[str, Any]]:
    """Deterministic genomes of scalar genes (inactive genes None) in which every gene takes each of
    its sample values while active (its conditions made true where they can be); a conditional gene
    is also inactive wherever a sample value of a gene it depends on makes it so. Other genes take
    their first sample value. An array gene is one unit: all its elements take each value together."""
    genes = {g.name: g for g in space.genes}
    first = {g.name: _samples(g)[0] for g in space.genes}

    def force(genome: dict[str, Any], name: str, value: Any) -> None:
        genome[name] = value
        for ref, val in (genes[name].when or {}).items():
            allowed = val if isinstance(val, list) else [val]
            if genome[ref] not in allowed:
                force(genome, ref, allowed[0])

    def masked(genome: dict[str, Any]) -> dict[str, Any]:
        return mask_inactive(space, {e.name: genome[g.name] for g in space.genes for e in g.elements()})

    out = {repr(masked(first)): masked(first)}
    for g in space.genes:
        for value in _samples(g):
            genome = dict(first)
            force(genome, g.name, value)
            sample = masked(genome)
            out.setdefault(repr(sample), sample)
    return list(out.values())


def _template_node(template: Any, field: str) -> Any:
    """The template's node at a field path such as ``recipe.branches[0].fit.items`` (None if absent);
    a gene reference on the way (the path goes on inside an array gene's value) is the node."""
    node: Any = {"recipe": template}
    for step in path_steps(field):
        if _is_ref(node):
            break
        if isinstance(step, int) and isinstance(node, list) and step < len(node):
            node = node[step]
        elif isinstance(step, str) and isinstance(node, dict) and step in node:
            node = node[step]
        else:
            return None
    return node


def check_recipes(space: SearchSpace) -> None:
    """Decode :func:`sample_genomes`: each recipe must pass the recipe schema, name only models
    listed in ``models`` and, for a weight merge over hf sources, merge compatible models
    (:func:`check_weight_merge`); otherwise a ConfigError names the field under ``recipe`` (and the
    gene whose value it was), before any candidate spends budget."""
    checked: set[tuple[str, str]] = set()
    for genome in sample_genomes(space):
        try:
            parsed = parse_recipe(decode(space, genome), space.source, "recipe")
            refs = parsed.model_refs()
            for path, model in refs:
                if model not in space.model_names:
                    raise ConfigError(space.source, f"recipe.{path}",
                                      f"a model listed in models ({', '.join(space.model_names)})", model)
            if parsed.tensorwise:
                check_weight_merge(space, refs, checked)
        except ConfigError as err:
            node = _template_node(space.recipe, err.field)
            if _is_ref(node):
                gene = next(g for g in space.genes if g.name == node["gene"])
                which = f"every element of gene '{gene.name}'" if gene.shape else f"gene '{gene.name}'"
                err.args = (f"{err.args[0]} (when {which} is {genome[gene.elements()[0].name]!r})",)
            raise


def check_searchable(space: SearchSpace) -> None:
    """What the search's evaluators take, checked before any budget is spent: zoo ids on built-in
    tasks, or else a space over model sources (:class:`~evomerge.fitness.source_evaluator.SourceEvaluator`):
    every model a source entry, every task an item file, every recipe of a kind built in place, or as a
    view over sources whose configs it accepts (every sampled genome's: e.g. a stack's layer ranges,
    a MASS routing layer)."""
    check_recipes(space)
    if space.builtin_only:
        return
    for i, m in enumerate(space.models):
        if isinstance(m, str):
            raise ConfigError(space.source, f"models[{i}]", "a source entry ({name, source: hf, path: ...}) in a "
                              "space with item-file tasks or other source entries", m)
    for i, t in enumerate(space.tasks):
        if not isinstance(t, ItemTaskSpec):
            raise ConfigError(space.source, f"tasks[{i}]", "an item-file task ({name, items, format, metric}) "
                              "in a space over model sources", t.name)
    if space.fitness.estimator != "full":
        check_banks_match_items(space)
    trained = [t.name for t in space.tasks if len(t.item_set.split("train"))]
    for genome in sample_genomes(space):
        kind = parse_recipe(decode(space, genome), space.source, "recipe")
        if kind.as_view or kind.routed:
            kind.check_sources({m: space.sources[m].config for _, m in kind.model_refs()}, space.source, "recipe",
                               trained)
        elif not kind.in_place:
            raise ConfigError(space.source, "recipe.kind", "a recipe kind built in place or as a view for a search "
                              "over model sources (layerwise, weights, stack, stitch)", kind.kind)


def check_banks_match_items(space: SearchSpace) -> None:
    """Each item-file task's bank holds the task's validation items with the prompts it was calibrated
    on (:func:`~evomerge.fitness.bank.check_items`: exit 2 naming the items that differ)."""
    from evomerge.fitness.bank import check_items, load_bank
    from evomerge.items import prompt_hash

    banks = space.task_banks()
    for t in space.tasks:
        if isinstance(t, ItemTaskSpec) and banks[t.name] is not None:
            items = t.item_set.split("val")
            check_items(load_bank(banks[t.name]), banks[t.name], {i.id: prompt_hash(i) for i in items})


def check_weight_merge(space: SearchSpace, refs: list[tuple[str, str]], checked: set[tuple[str, str]]) -> None:
    """When a weight merge names an hf source, each model it merges must be an hf source that
    :func:`~evomerge.sources.check_compatible` accepts beside the first (the base): one architecture,
    one set of tensors and shapes, one vocabulary unless ``backbone_only``. Only headers and configs
    are read; ``checked`` holds the pairs already found compatible."""
    from evomerge.sources import HFSource, VocabularyMismatch, check_compatible

    if not any(isinstance(space.sources.get(m), HFSource) for _, m in refs):
        return
    (_, first), *others = refs
    for path, name in others:
        if name == first or (first, name) in checked:
            continue
        a, b, field = space.sources.get(first), space.sources.get(name), f"recipe.{path}"
        if not (isinstance(a, HFSource) and isinstance(b, HFSource)):
            raise ConfigError(space.source, field, f"hf models only: a weight merge over hf sources cannot merge "
                              f"'{first}' and '{name}'", name)
        try:
            check_compatible([a, b], backbone_only=space.backbone_only)
        except VocabularyMismatch as exc:
            raise ConfigError(space.source, field, f"models of one vocabulary ({exc}; to do that, set "
                              "'backbone_only: true' in the space)", name) from None
        except UserError as exc:
            raise ConfigError(space.source, field, f"a model that merges weight by weight with '{first}' ({exc})",
                              name) from None
        checked.add((first, name))


# ---- loading and error conversion -------------------------------------------------


def parse_space(data: Any, source: str = "<space>", known_models: set[str] | None = None,
                recipes: bool | None = None, base: Path | None = None) -> SearchSpace:
    """Validate a loaded mapping as a SearchSpace, including its engine's settings and, with
    ``recipes``, its recipe template (:func:`check_recipes`; None: when ``recipe.kind`` is a recipe
    kind, so test doubles with recipes of their own load). Relative paths start from ``base``
    (default: the working directory)."""
    from evomerge.search.engines import ENGINES

    context = {"known_models": known_models, "source": source, "base": base}
    try:
        space = SearchSpace.model_validate(data, context=context)
    except ValidationError as exc:
        raise config_error(source, exc, tags=TAGS) from None
    space._source = source
    if space.engine.name not in ENGINES:
        raise ConfigError(source, "engine.name", f"one of {', '.join(ENGINES.names())}", space.engine.name)
    ENGINES.get(space.engine.name).check(space)
    if recipes or (recipes is None and space.recipe.get("kind") in RECIPE_KINDS):
        check_recipes(space)
    return space


def load_space(path: str | Path, known_models: set[str] | None = None, recipes: bool | None = None) -> SearchSpace:
    """Read and validate a search space YAML file (see :func:`parse_space`); every problem is a ConfigError."""
    source = str(path)
    text = read_text(path, "a search space YAML file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(source, "<yaml>", f"valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise ConfigError(source, "<root>", "a mapping of fields (name, models, genes, ...)", type(data).__name__)
    return parse_space(data, source, known_models, recipes, Path(path).parent)


def with_overrides(space: SearchSpace, **changes: Any) -> SearchSpace:
    """A re-validated copy with dotted-path overrides, e.g. ``{"budget.evaluations": 50}``."""
    data = space.model_dump(mode="json")
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = data
        for p in parents:
            node = node[p]
        node[leaf] = value
    return parse_space(data, space.source)


def dump_space(space: SearchSpace) -> str:
    """The space as YAML (what the run folder keeps as ``space.yaml``)."""
    return yaml.safe_dump(space.model_dump(mode="json"), sort_keys=False)
