"""The built-in zoo: trains its models deterministically, caches them by config hash, loads them once.

A model's cache key hashes its spec (all training fields), the zoo seed, the key of its base
model and ``TRAINING_VERSION``; a changed spec retrains only that model (and its fine-tunes).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from evomerge.cache import cache_dir
from evomerge.console import Steps
from evomerge.data.conditions import get_condition
from evomerge.data.tasks import load_task
from evomerge.errors import unknown_name
from evomerge.evaluate import accuracy
from evomerge.io.files import file_sha256
from evomerge.zoo.adapter import LayeredAdapter
from evomerge.zoo.models import LayeredNet, build_model
from evomerge.zoo.specs import ModelSpec, default_specs
from evomerge.zoo.train import train_model

#: Bump when training code changes in a way that changes trained weights.
TRAINING_VERSION = 1


def _worker_init() -> None:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    torch.set_num_threads(1)


def run_jobs(fn: Callable[..., dict[str, Any]], jobs: list[tuple[Any, ...]], processes: int) -> Iterator[dict[str, Any]]:
    """``fn(*job)`` for each job, in order: in this process, or in ``processes`` spawned workers with
    one torch thread each (:func:`_worker_init`)."""
    if processes <= 1:
        yield from (fn(*job) for job in jobs)
        return
    with ProcessPoolExecutor(processes, mp_context=get_context("spawn"), initializer=_worker_init) as ex:
        yield from ex.map(fn, *zip(*jobs))


def new_net(spec: ModelSpec, model_seed: int) -> LayeredNet:
    num_classes = get_condition(spec.dataset, spec.condition).num_classes
    return build_model(spec.arch, spec.dataset, num_classes, model_seed, spec.width)


def _train_one(spec_json: str, zoo_seed: int, out: str, base_weights: str | None) -> dict[str, Any]:
    """Train one model and write ``out.safetensors`` and ``out.json`` (runs in a worker process)."""
    _worker_init()
    spec = ModelSpec.model_validate_json(spec_json)
    model_seed = zoo_seed * 1000 + spec.seed
    net = new_net(spec, model_seed)
    if base_weights is not None:  # fine-tune: start from the base; keep its head only if it fits
        base = load_file(base_weights)
        own = net.state_dict()
        net.load_state_dict({k: (v if v.shape == own[k].shape else own[k]) for k, v in base.items()})
    start = time.perf_counter()
    train_model(net, load_task(spec.dataset, spec.condition, "train", zoo_seed), spec.epochs, model_seed,
                lr=spec.lr, batch_size=spec.batch_size, weight_decay=spec.weight_decay)
    train_s = time.perf_counter() - start
    path = Path(out)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path.with_suffix(".safetensors")))
    record = {
        "id": spec.id,
        "architecture": spec.arch,
        "dataset": spec.dataset,
        "condition": spec.condition,
        "family": spec.family,
        "base": spec.base,
        "params": sum(p.numel() for p in net.parameters()),
        "val_accuracy": accuracy(net, load_task(spec.dataset, spec.condition, "val", zoo_seed)),
        "test_accuracy": accuracy(net, load_task(spec.dataset, spec.condition, "test", zoo_seed)),
        "train_s": round(train_s, 2),
        "sha256": file_sha256(path.with_suffix(".safetensors")),
    }
    path.with_suffix(".json").write_text(json.dumps(record, indent=1))
    return record


class Zoo:
    """The built-in model zoo for one seed: ``build()`` what is missing, then ``adapter(id)``."""

    def __init__(self, seed: int = 0, cache_dir_: Path | None = None, specs: list[ModelSpec] | None = None):
        self.seed = seed
        self.root = (cache_dir_ or cache_dir()) / "zoo"
        self.specs = {s.id: s for s in (specs if specs is not None else default_specs())}
        self._adapters: dict[str, LayeredAdapter] = {}
        missing = [s.base for s in self.specs.values() if s.base and s.base not in self.specs]
        if missing:
            raise unknown_name("base model", missing[0], self.specs)

    def ids(self) -> list[str]:
        return list(self.specs)

    def spec(self, model_id: str) -> ModelSpec:
        if model_id not in self.specs:
            raise unknown_name("zoo model", model_id, self.specs)
        return self.specs[model_id]

    def key(self, model_id: str) -> str:
        """Cache key: hash of the spec's training fields, its condition's definition, the zoo seed and the base's key."""
        spec = self.spec(model_id)
        fields = spec.model_dump(exclude={"id", "family"})
        fields |= {
            "zoo_seed": self.seed,
            "version": TRAINING_VERSION,
            "condition_def": get_condition(spec.dataset, spec.condition).description,
            "base": spec.base and self.key(spec.base),
        }
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]

    def _path(self, model_id: str) -> Path:
        return self.root / f"{model_id}-{self.key(model_id)}"

    def is_built(self, model_id: str) -> bool:
        p = self._path(model_id)
        return p.with_suffix(".json").exists() and p.with_suffix(".safetensors").exists()

    def build(self, workers: int = 2, ids: list[str] | None = None, progress: bool = False) -> dict[str, float]:
        """Train the models ``ids`` (default: all) and their bases where not cached, ``workers`` processes
        at a time, bases before fine-tunes; with ``progress``, a bar or a line per model trained.
        Returns the training seconds of each model trained now.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        trained: dict[str, float] = {}
        wanted = set(ids if ids is not None else self.specs)
        wanted |= {self.spec(i).base for i in wanted if self.spec(i).base}
        todo = [i for i in self.specs if i in wanted and not self.is_built(i)]
        stages = [[i for i in todo if not self.specs[i].base], [i for i in todo if self.specs[i].base]]
        with Steps("zoo", len(todo), quiet=not progress) as steps:
            for stage in filter(None, stages):
                jobs = [(self.specs[i].model_dump_json(), self.seed, str(self._path(i)),
                         str(self.weights_path(self.specs[i].base)) if self.specs[i].base else None)
                        for i in stage]
                processes = min(workers, len(jobs))
                steps.begin(f"training {', '.join(stage)} (seed {self.seed}, {processes} process"
                            f"{'es' if processes > 1 else ''})")
                self._collect(run_jobs(_train_one, jobs, processes), trained, steps)
        return trained

    @staticmethod
    def _collect(results: Any, trained: dict[str, float], steps: Steps) -> None:
        for rec in results:
            trained[rec["id"]] = rec["train_s"]
            steps.advance(f"trained {rec['id']:<20} {rec['train_s']:6.1f}s  val {rec['val_accuracy']:.3f}  "
                          f"test {rec['test_accuracy']:.3f}")

    def record(self, model_id: str) -> dict[str, Any]:
        """The model's row: id, architecture, dataset, condition, params, val/test accuracy, sha256."""
        self.ensure_built(model_id)
        return json.loads(self._path(model_id).with_suffix(".json").read_text())

    def weights_path(self, model_id: str) -> Path:
        return self._path(model_id).with_suffix(".safetensors")

    def ensure_built(self, model_id: str) -> None:
        """Train the model (and its base) now unless it is cached."""
        if not self.is_built(model_id):
            self.build(workers=1, ids=[model_id])

    def load(self, model_id: str) -> LayeredNet:
        """A fresh copy of the trained model (trained first if missing), in eval mode with gradients off."""
        spec = self.spec(model_id)
        self.ensure_built(model_id)
        net = new_net(spec, 0)
        net.load_state_dict(load_file(str(self.weights_path(model_id))))
        return net.eval().requires_grad_(False)

    def adapter(self, model_id: str) -> LayeredAdapter:
        """The trained model, loaded once per Zoo object, in eval mode with gradients off."""
        if model_id not in self._adapters:
            self._adapters[model_id] = LayeredAdapter(self.load(model_id))
        return self._adapters[model_id]
