"""Merges that stream name by name: plan every output tensor from file headers, then read, merge,
write and free one tensor at a time.

A :class:`MergePlan` is a list of :class:`TensorJob` (one output tensor: which tensors of which
sources it reads and the per-tensor function that combines them) over lazily read
:class:`~evomerge.io.tensors.TensorSource` s. Planning reads headers only, so every missing tensor,
shape mismatch or vocabulary mismatch is reported before anything is written. :func:`execute` holds,
per job, the job's inputs cast to the compute dtype and the method's working copies, and hands the
result to a byte-bounded :class:`~evomerge.io.writer.ShardedWriter` inside a folder that is renamed
into place only when complete. Peak memory is therefore about

    max_shard_bytes + (inputs per tensor + 1) x largest tensor (at the compute dtype)

plus the interpreter, whatever the model's size (mergekit's lazy loader + task graph + ``TensorWriter``
reach the same bound). :meth:`MergePlan.peak_bytes` states it.

Two planners: :func:`plan_mergekit` (a mergekit YAML, run with mergekit's semantics; see
docs/merge.md for where they differ from evomerge's recipes) and :func:`plan_recipe` (evomerge's
registered methods, :data:`~evomerge.core.merge.MERGE_METHODS`, over a base and its fine-tunes).
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import TypeAdapter, ValidationError

from evomerge.core.merge import MERGE_METHODS, KeyFilter, MergeParams
from evomerge.core.merge.dare import key_generator
from evomerge.core.merge.generalized import generalized_task_arithmetic, linear
from evomerge.errors import ConfigError, UserError
from evomerge.io.mergekit_config import ConditionalParameter, InputSlice, MergekitConfig, OutputSlice
from evomerge.io.tensors import LAYER, TensorInfo, TensorSource, is_vocab_tensor
from evomerge.io.sizes import DEFAULT_SHARD_SIZE, parse_size
from evomerge.io.writer import ShardedWriter, atomic_folder

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "float64": torch.float64}
#: Files copied from the tokenizer donor into the output folder, when present.
TOKENIZER_FILES = (
    "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "vocab.json",
    "merges.txt", "added_tokens.json", "vocab.txt", "chat_template.jinja", "chat_template.json", "generation_config.json",
)  # fmt: skip

Combine = Callable[[list[torch.Tensor]], torch.Tensor]


@dataclass
class TensorJob:
    """One output tensor: ``combine`` of the inputs ``(source index, tensor name)`` (a copy of the
    first input when ``combine`` is None), written in ``out_dtype`` (None: the first input's dtype)."""

    name: str
    inputs: list[tuple[int, str]]
    combine: Combine | None
    out_dtype: torch.dtype | None = None
    note: str = ""


@dataclass
class MergePlan:
    method: str
    sources: list[TensorSource]
    labels: list[str]
    jobs: list[TensorJob]
    config: dict[str, Any]
    donor: Path | None
    compute_dtype: torch.dtype = torch.float32
    extra_files: dict[str, str] = field(default_factory=dict)

    def info(self, job: TensorJob, k: int = 0) -> TensorInfo:
        i, name = job.inputs[k]
        return self.sources[i].info(name)

    def largest(self) -> tuple[str, int]:
        """The output tensor with the largest input at the compute dtype, and that size in bytes."""
        best = max(self.jobs, key=lambda j: self.info(j).nbytes_as(self.compute_dtype))
        return best.name, self.info(best).nbytes_as(self.compute_dtype)

    def output_bytes(self) -> int:
        return sum(self.info(j).nbytes_as(j.out_dtype) for j in self.jobs)

    def peak_bytes(self, max_shard_bytes: int) -> int:
        """The bound on what a merge holds: one shard plus (inputs + 1) copies of the largest tensor."""
        width = max(len(j.inputs) for j in self.jobs)
        return max_shard_bytes + (width + 1) * self.largest()[1]


# -- running a plan ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class WriteOptions:
    """How a plan is written: shard budget, output dtype (None: the sources'), dtype and device of the math."""

    max_shard_bytes: int = parse_size(DEFAULT_SHARD_SIZE)
    dtype: torch.dtype | None = None
    compute_dtype: torch.dtype = torch.float32
    device: str = "cpu"
    progress: bool = True


def execute(plan: MergePlan, out: str | Path, max_shard_bytes: int, device: str = "cpu", progress: bool = True,
            finish: Callable[[Path], None] | None = None) -> Path:
    """Run ``plan`` into the folder ``out`` (safetensors shards, config, tokenizer); returns ``out``.
    ``finish`` is called on the complete folder before it is renamed into place (e.g. to write a
    manifest of its files), so a failure there leaves no output either."""
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: no CUDA device is available here")
    from rich.progress import track

    from evomerge.console import console

    out = Path(out)
    with atomic_folder(out) as tmp:
        writer = ShardedWriter(tmp, max_shard_bytes)
        for job in track(plan.jobs, description=f"merging ({plan.method})", console=console, disable=not progress, transient=True):
            writer.add(job.name, run_job(plan, job, dev))
        writer.finish()
        write_folder_files(plan, tmp)
        if finish is not None:
            finish(tmp)
    return out


class LazyInputs:
    """A job's inputs, each read (and cast) only when taken: ``pop`` hands one over and forgets it,
    so a per-tensor function that pops its inputs one by one holds one source copy at a time."""

    def __init__(self, loaders: list[Callable[[], torch.Tensor]]):
        self._loaders = loaders

    def __len__(self) -> int:
        return len(self._loaders)

    def pop(self, index: int = -1) -> torch.Tensor:
        return self._loaders.pop(index)()

    def __getitem__(self, index: int | slice) -> Any:
        if isinstance(index, slice):
            return [f() for f in self._loaders[index]]
        return self._loaders[index]()

    def __iter__(self) -> Any:
        return (f() for f in self._loaders)


def run_job(plan: MergePlan, job: TensorJob, device: torch.device) -> torch.Tensor:
    """One output tensor on the CPU, in its output dtype."""
    first = plan.info(job)
    out_dtype = job.out_dtype if (job.out_dtype is not None and first.dtype.is_floating_point) else first.dtype
    if job.combine is None or not first.dtype.is_floating_point:
        i, name = job.inputs[0]
        return plan.sources[i].get(name, out_dtype)

    def loader(i: int, name: str) -> Callable[[], torch.Tensor]:
        return lambda: plan.sources[i].get(name, plan.compute_dtype).to(device)

    y = job.combine(LazyInputs([loader(i, n) for i, n in job.inputs]))  # type: ignore[arg-type]
    return y.to("cpu", out_dtype)


def write_folder_files(plan: MergePlan, folder: Path) -> None:
    """config.json, the donor's tokenizer and generation config, and any extra files of the plan."""
    (folder / "config.json").write_text(json.dumps(plan.config, indent=2, sort_keys=True) + "\n")
    if plan.donor is not None:
        for name in TOKENIZER_FILES:
            if (plan.donor / name).is_file():
                shutil.copyfile(plan.donor / name, folder / name)
    for name, text in plan.extra_files.items():
        (folder / name).write_text(text)


# -- shared planning helpers -------------------------------------------------------------------------
def open_source(path: str | Path, where: str) -> TensorSource:
    try:
        return TensorSource(path)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def output_config(donor: TensorSource, out_dtype: torch.dtype | None, **updates: Any) -> dict[str, Any]:
    cfg = dict(donor.config())
    cfg.update({k: v for k, v in updates.items() if v is not None})
    if out_dtype is not None:
        name = str(out_dtype).removeprefix("torch.")
        cfg["torch_dtype" if "torch_dtype" in cfg and "dtype" not in cfg else "dtype"] = name
    return cfg


def check_job(plan_sources: Sequence[TensorSource], labels: Sequence[str], job: TensorJob) -> None:
    """Every input exists and all have one shape, else a :class:`UserError` naming model and tensor."""
    infos = []
    for i, name in job.inputs:
        if name not in plan_sources[i]:
            raise UserError(f"{labels[i]}: no tensor '{name}' (needed for output '{job.name}')")
        infos.append(plan_sources[i].info(name))
    shapes = {info.shape for info in infos}
    if len(shapes) > 1:
        desc = ", ".join(f"{labels[i]} {list(info.shape)}" for (i, _), info in zip(job.inputs, infos))
        if any(is_vocab_tensor(plan_sources[i], n) for i, n in job.inputs):
            raise UserError(
                f"'{job.name}': vocabularies differ ({desc}); merge the backbone only with "
                "--keep-embeddings-from MODEL (or --backbone-only to keep the base's embeddings and head)"
            )
        raise UserError(f"'{job.name}': shapes differ ({desc})")


def keep_vocab(jobs: list[TensorJob], sources: Sequence[TensorSource], keep: int) -> None:
    """Turn every vocabulary job into a copy of source ``keep``'s tensor (backbone-only merges)."""
    for job in jobs:
        if any(is_vocab_tensor(sources[i], n) for i, n in job.inputs) or (job.name in sources[keep] and is_vocab_tensor(sources[keep], job.name)):
            if job.name not in sources[keep]:
                raise UserError(f"{sources[keep].path}: no tensor '{job.name}' to keep")
            job.inputs, job.combine, job.note = [(keep, job.name)], None, "kept"


# -- evomerge recipes --------------------------------------------------------------------------------
def plan_recipe(
    method: str,
    base: str | Path,
    finetuned: Sequence[str | Path],
    params: Mapping[str, Any] | Callable[[str], MergeParams | None] | None = None,
    keys: KeyFilter | None = None,
    out_dtype: torch.dtype | None = None,
    compute_dtype: torch.dtype = torch.float32,
    keep_embeddings_from: str | Path | None = None,
) -> MergePlan:
    """``base + merge(tau_1..tau_T)`` by an evomerge method (task arithmetic, TIES, DARE, TSV-M...),
    one tensor at a time. Tensors that are not floating point or fail ``keys`` are copied from the base.
    ``params`` is one set for every tensor, or a function giving each tensor's (a layer-wise recipe,
    :meth:`~evomerge.recipe.layerwise.LayerwiseRecipe.resolver`; None copies that tensor from the base).
    """
    m = MERGE_METHODS.get(method)
    if not m.streams:
        raise UserError(f"merge method '{method}' needs a whole-model view and cannot stream")
    if not finetuned:
        raise UserError("merge needs at least one fine-tuned model, got none")
    params_of = params if callable(params) else (lambda _, p=m.parse(params): p)
    paths = [Path(base), *map(Path, finetuned)]
    sources = [open_source(p, "base" if i == 0 else f"fine-tuned model {i - 1}") for i, p in enumerate(paths)]
    labels = [str(p) for p in paths]
    jobs = []
    for name, info in sources[0].infos.items():
        parsed = params_of(name) if info.dtype.is_floating_point and (keys is None or keys(name)) else None
        if parsed is None:
            jobs.append(TensorJob(name, [(0, name)], None, out_dtype, "copied from base"))
            continue
        for i, src in enumerate(sources[1:]):
            if name not in src:
                raise UserError(f"{paths[i + 1]}: fine-tuned model {i} has no parameter '{name}' (the base has it)")
        jobs.append(TensorJob(name, [(i, name) for i in range(len(sources))], _recipe_combine(m, name, parsed), out_dtype))
    if keep_embeddings_from is not None:
        keep_vocab(jobs, sources, _index_of(paths, Path(keep_embeddings_from), "--keep-embeddings-from"))
    for job in jobs:
        try:
            check_job(sources, labels, job)
        except UserError as e:
            if "shapes differ" not in str(e):
                raise
            base_info = sources[0].info(job.name)
            other = next(k for k, n in job.inputs if sources[k].info(n).shape != base_info.shape)
            raise UserError(
                f"{paths[other]}: parameter '{job.name}' has shape {sources[other].info(job.name).shape}, "
                f"the base {paths[0]} has {base_info.shape}"
            ) from None
    donor = sources[0] if keep_embeddings_from is None else sources[_index_of(paths, Path(keep_embeddings_from), "")]
    vocab = donor.config().get("vocab_size") if keep_embeddings_from is not None else None
    return MergePlan(method, sources, labels, jobs, output_config(sources[0], out_dtype, vocab_size=vocab), donor.path, compute_dtype)


def _recipe_combine(m: Any, name: str, parsed: Any) -> Combine:
    def combine(xs: Any) -> torch.Tensor:
        base = xs.pop(0)
        return m.merge_tensor(name, base, iter(xs), parsed)  # each fine-tune read as its update is taken

    return combine


def _index_of(paths: Sequence[Path], target: Path, option: str) -> int:
    for i, p in enumerate(paths):
        if p.resolve() == target.resolve():
            return i
    raise UserError(f"{option} {target}: not one of the merged models ({', '.join(map(str, paths))})")


# -- mergekit configs --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One parameter of a mergekit method: ``scope`` is shared, input (every model) or non_base."""

    name: str
    type: Any
    scope: str
    default: Any = ...

    def validate(self, value: Any, where: str, source: str) -> Any:
        try:
            return _adapter(self.type).validate_python(value)
        except ValidationError:
            raise ConfigError(source, where, f"a {getattr(self.type, '__name__', self.type)} value", value) from None


@functools.lru_cache(maxsize=None)
def _adapter(tp: Any) -> TypeAdapter:
    return TypeAdapter(tp)


_GTA_SHARED = (Param("int8_mask", bool, "shared", False), Param("lambda", float, "shared", 1.0))
_GTA_INPUT = (Param("weight", float, "non_base"), Param("density", float, "non_base", 1.0))


@dataclass(frozen=True)
class MethodSpec:
    """mergekit's parameter schema and switches for one method (``merge_methods/registry.py``)."""

    params: tuple[Param, ...]
    needs_base: bool = False
    sparsify: str | None = None
    consensus: str | None = None
    max_inputs: int | None = None


def _gta(normalize: bool, rescale: bool, sparsify: str | None, consensus: str | None) -> MethodSpec:
    return MethodSpec(
        (*_GTA_SHARED, Param("normalize", bool, "shared", normalize), Param("rescale", bool, "shared", rescale), *_GTA_INPUT),
        needs_base=True, sparsify=sparsify, consensus=consensus,
    )  # fmt: skip


MERGEKIT_SPECS: dict[str, MethodSpec] = {
    "linear": MethodSpec((Param("normalize", bool, "shared", True), Param("weight", float, "input"))),
    "passthrough": MethodSpec((Param("scale", float | None, "input", None),), max_inputs=1),
    "task_arithmetic": _gta(False, False, None, None),
    "ties": _gta(True, False, "magnitude", "sum"),
    "dare_ties": _gta(False, True, "random", "sum"),
    "dare_linear": _gta(False, True, "random", None),
}


def evaluate_setting(setting: Any, tensor_name: str, t: float, validate: Callable[[Any], Any]) -> Any:
    """A parameter's value for one tensor, as ``mergekit.config.evaluate_setting`` defines it.

    A scalar is itself. A list of numbers is a gradient: with ``s = t (n - 1)``, the value is
    ``(1 - frac(s)) v[floor(s)] + frac(s) v[floor(s) + 1]``, where ``t`` is the layer's position in its
    slice (``i / (n_layers - 1)``; 0 outside the layers); a list of non-numbers picks ``v[floor(s)]``.
    A list of ``{filter, value}`` takes the first whose filter is absent, ``*`` or a substring of the
    tensor's name. None when nothing applies.
    """
    if isinstance(setting, ConditionalParameter):
        setting = [setting]
    if isinstance(setting, (bool, int, float, str)):
        return validate(setting)
    if isinstance(setting, list):
        if not setting:
            return None
        if all(isinstance(e, (bool, int, float, str)) for e in setting):
            values = [validate(e) for e in setting]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                return values[int(t * (len(values) - 1))]
            scaled = t * (len(values) - 1)
            i0 = int(scaled)
            i1 = min(len(values) - 1, i0 + 1)
            frac = scaled - i0
            return validate((1 - frac) * values[i0] + frac * values[i1])
        for cond in setting:
            if cond.filter is None or cond.filter == "*" or (tensor_name and cond.filter in tensor_name):
                return evaluate_setting(cond.value, tensor_name, t, validate)
    return None


@dataclass
class _SourceLayout:
    prefix: str | None
    layers: dict[int, list[str]]  # layer index -> suffixes, in file order
    other: list[str]  # tensors outside the repeated blocks

    @classmethod
    def of(cls, src: TensorSource) -> _SourceLayout:
        prefix, layers, other = None, {}, []
        for name in src.names():
            m = LAYER.match(name)
            if m and (prefix is None or m["prefix"] == prefix):
                prefix = m["prefix"]
                layers.setdefault(int(m["index"]), []).append(m["rest"])
            else:
                other.append(name)
        return cls(prefix, dict(sorted(layers.items())), other)

    @property
    def num_layers(self) -> int:
        return max(self.layers) + 1 if self.layers else 0


def plan_mergekit(
    cfg: MergekitConfig,
    source: str = "config",
    compute_dtype: torch.dtype = torch.float32,
    out_dtype: torch.dtype | None = None,
    keep_embeddings_from: str | None = None,
    seed: int = 0,
    config_text: str | None = None,
) -> MergePlan:
    """Plan a mergekit config the way ``mergekit.plan.MergePlanner`` does.

    ``models:`` becomes one slice over every model's full layer range (the base is added when it is
    not listed). Per output slice, layer ``k`` of ``n`` merges layer ``start + k`` of each source at
    ``t = k / (n - 1)`` (1 for a one-layer slice) and is renumbered after the layers of the slices
    before it. Tensors outside the repeated blocks are taken from the first slice's sources when
    their name holds ``embed`` (mergekit's "pre" weights), else from the last slice's (norm, LM head),
    at ``t = 0``. Parameters resolve from the source's entry, then the slice's, then the top level.
    With slices the output config's ``num_hidden_layers`` is their layers' count, and its ``layer_types``
    (where the models' configs have them: Qwen2's sliding-window layers...) each output layer's
    source's entry, so that transformers loads the folder.
    """
    spec = MERGEKIT_SPECS[cfg.merge_method]
    refs = cfg.referenced_models()
    sources = [open_source(r, f"{source}: model '{r}'") for r in refs]
    index = {r: i for i, r in enumerate(refs)}
    layouts = [_SourceLayout.of(s) for s in sources]
    slices = cfg.slices or [_models_slice(cfg, layouts, index)]

    jobs: list[TensorJob] = []
    out_layer = 0
    prefix = None
    layer_types = []  # each output layer's entry of its slice's first model's ``layer_types`` (Qwen2, Mistral...)
    for si, sl in enumerate(slices):
        base = sl.base_model or cfg.base_model
        _check_slice(cfg, spec, sl, si, base, layouts, index, source)
        n = sl.sources[0].layer_range[1] - sl.sources[0].layer_range[0]
        first = layouts[index[sl.sources[0].model]]
        prefix = prefix or first.prefix
        types = sources[index[sl.sources[0].model]].config().get("layer_types")
        layer_types += types[sl.sources[0].layer_range[0]:sl.sources[0].layer_range[1]] if types else [None] * n
        for k in range(n):
            t = k / (n - 1) if n > 1 else 1.0
            for suffix in first.layers.get(sl.sources[0].layer_range[0] + k, []):
                names = [f"{layouts[index[s.model]].prefix}.{s.layer_range[0] + k}.{suffix}" for s in sl.sources]
                out_name = f"{prefix}.{out_layer}.{suffix}"
                jobs.append(_mergekit_job(cfg, spec, sl, base, out_name, names, t, index, source, out_dtype, seed))
            out_layer += 1
    head = layouts[index[slices[0].sources[0].model]].other
    tail = layouts[index[slices[-1].sources[0].model]].other
    pre = [n for n in head if "embed" in n]
    post = [n for n in tail if "embed" not in n]
    pre_jobs = [_mergekit_job(cfg, spec, slices[0], slices[0].base_model or cfg.base_model, n, [n] * len(slices[0].sources), 0.0, index, source, out_dtype, seed) for n in pre]
    post_jobs = [_mergekit_job(cfg, spec, slices[-1], slices[-1].base_model or cfg.base_model, n, [n] * len(slices[-1].sources), 0.0, index, source, out_dtype, seed) for n in post]
    jobs = pre_jobs + jobs + post_jobs

    labels = [f"model '{r}'" for r in refs]
    keep = None
    if keep_embeddings_from is not None:
        if keep_embeddings_from not in index:
            raise UserError(f"--keep-embeddings-from {keep_embeddings_from}: not a model of {source} ({', '.join(refs)})")
        keep = index[keep_embeddings_from]
        keep_vocab(jobs, sources, keep)
    for job in jobs:
        check_job(sources, labels, job)

    donor_ref = cfg.base_model or refs[0]
    if cfg.tokenizer_source == "base" and cfg.base_model is None:
        raise ConfigError(source, "tokenizer_source", "a base_model to take the tokenizer from (tokenizer_source: base)")
    if keep is not None and cfg.tokenizer_source == "base" and keep != index[cfg.base_model]:
        raise UserError(f"{source}: tokenizer_source: base conflicts with --keep-embeddings-from {keep_embeddings_from} (the embeddings must match the tokenizer)")
    tok = sources[keep] if keep is not None else sources[index[donor_ref]]
    dtype = out_dtype or (DTYPES[cfg.out_dtype or cfg.dtype] if (cfg.out_dtype or cfg.dtype) else None)
    updates: dict[str, Any] = {}
    if cfg.slices:
        updates["num_hidden_layers"] = out_layer
        if None not in layer_types:
            updates["layer_types"] = layer_types
    if keep is not None:
        updates["vocab_size"] = sources[keep].config().get("vocab_size")
    extra = {"mergekit_config.yml": config_text} if config_text else {}
    return MergePlan(cfg.merge_method, sources, labels, jobs, output_config(sources[index[donor_ref]], dtype, **updates), tok.path, compute_dtype, extra)


def _models_slice(cfg: MergekitConfig, layouts: list[_SourceLayout], index: dict[str, int]) -> OutputSlice:
    assert cfg.models is not None
    entries = [(m.model, m.parameters) for m in cfg.models]
    if cfg.base_model and cfg.base_model not in [m for m, _ in entries]:
        entries.append((cfg.base_model, None))
    return OutputSlice(sources=[InputSlice(model=m, layer_range=(0, max(1, layouts[index[m]].num_layers)), parameters=p) for m, p in entries])


def _check_slice(cfg: MergekitConfig, spec: MethodSpec, sl: OutputSlice, si: int, base: str | None,
                 layouts: list[_SourceLayout], index: dict[str, int], source: str) -> None:  # fmt: skip
    where = f"slices.{si}" if cfg.slices else "models"
    lengths = {s.layer_range[1] - s.layer_range[0] for s in sl.sources}
    if len(lengths) > 1:
        raise ConfigError(source, f"{where}.sources", "sources spanning the same number of layers", sorted(lengths))
    for j, s in enumerate(sl.sources):
        n = layouts[index[s.model]].num_layers
        if s.layer_range[1] > n:
            raise ConfigError(source, f"{where}.sources.{j}.layer_range", f"a range within the {n} layers of '{s.model}'", list(s.layer_range))
    models = [s.model for s in sl.sources]
    if len(set(models)) != len(models):
        raise ConfigError(source, f"{where}.sources", "each model once per slice", models)
    if spec.max_inputs is not None and len(models) > spec.max_inputs:
        raise ConfigError(source, f"{where}.sources", f"at most {spec.max_inputs} model(s) for {cfg.merge_method}", models)
    if spec.needs_base and (base is None or base not in models):
        raise ConfigError(source, "base_model", f"a base model among the models merged ({cfg.merge_method} needs one)", base)


def _mergekit_job(cfg: MergekitConfig, spec: MethodSpec, sl: OutputSlice, base: str | None, out_name: str,
                  names: list[str], t: float, index: dict[str, int], source: str, out_dtype: torch.dtype | None,
                  seed: int) -> TensorJob:  # fmt: skip
    models = [s.model for s in sl.sources]
    inputs = [(index[m], n) for m, n in zip(models, names)]
    shared_scopes = [sl.parameters, cfg.parameters]

    def resolve(p: Param, tensor_name: str, scopes: list[Any], who: str) -> Any:
        for scope in scopes:
            if scope is not None and p.name in scope:
                v = evaluate_setting(scope[p.name], tensor_name, t, lambda x: p.validate(x, f"parameters.{p.name}", source))
                if v is not None:
                    return v
        if p.default is ...:
            raise ConfigError(source, f"parameters.{p.name}", f"a value for {who} tensor '{tensor_name}' ({cfg.merge_method} requires it)")
        return p.default

    shared = {p.name: resolve(p, out_name, shared_scopes, "output") for p in spec.params if p.scope == "shared"}
    per_input: dict[str, list[Any]] = {}
    for p in spec.params:
        if p.scope == "shared":
            continue
        vals = []
        for s, n in zip(sl.sources, names):
            if p.scope == "non_base" and s.model == base:
                continue
            vals.append(resolve(p, n, [s.parameters, *shared_scopes], f"model '{s.model}'"))
        per_input[p.name] = vals
    dtype = out_dtype or (DTYPES[cfg.out_dtype or cfg.dtype] if (cfg.out_dtype or cfg.dtype) else None)
    note = ", ".join(f"{k}={v}" for k, v in {**shared, **per_input}.items())

    if cfg.merge_method == "passthrough":
        scale = per_input["scale"][0]
        return TensorJob(out_name, inputs, None if scale is None else (lambda xs: xs[0] * scale), dtype, note)
    if cfg.merge_method == "linear":
        w, normalize = per_input["weight"], shared["normalize"]
        return TensorJob(out_name, inputs, lambda xs: linear(xs, w, normalize), dtype, note)
    bi = models.index(base)
    order = [bi] + [i for i in range(len(models)) if i != bi]
    inputs = [inputs[i] for i in order]
    weights, densities = per_input["weight"], per_input["density"]
    gens = None
    if spec.sparsify == "random":
        gens = [(seed, out_name, k) for k in range(len(weights))]

    def combine(xs: list[torch.Tensor]) -> torch.Tensor:
        base_x = xs.pop(0)
        g = [key_generator(*a) for a in gens] if gens else None
        return generalized_task_arithmetic(
            base_x, xs, weights, densities, sparsify=spec.sparsify, consensus=spec.consensus,
            normalize=shared["normalize"], lam=shared["lambda"], rescale=shared["rescale"], generators=g,
        )  # fmt: skip

    return TensorJob(out_name, inputs, combine, dtype, note)
