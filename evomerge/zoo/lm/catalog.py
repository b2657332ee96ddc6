"""The built-in language-model family in the cache: trains it deterministically, scores every model on
every skill, lists it.

Layout, under ``$EVOMERGE_CACHE/zoo/lm-s<seed>-<key>/`` (``key`` hashes the :class:`LMFamilySpec`, the
seed and ``TRAINING_VERSION``, so a changed spec builds a new family beside the old one):
``lm-base/``, ``lm-<skill>/``, ``lm-gpt2/`` (Hugging Face folders), ``lm-*.json`` (each model's record, written
last: a model is built when its record exists) and ``items/<skill>.jsonl`` + ``items/<skill>.format.yaml``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from evomerge.cache import cache_dir
from evomerge.console import Steps
from evomerge.errors import unknown_name
from evomerge.zoo.lm.family import BASE, OTHER, LMFamilySpec, model_id, train_member
from evomerge.zoo.lm.itemfiles import SkillItems, skill_items, write_skill_items

#: Bump when building code changes in a way that changes trained weights or item files.
TRAINING_VERSION = 1
#: The family ``LMZoo`` builds unless given another (tests swap in ``tiny_family()``).
DEFAULT_SPEC = LMFamilySpec()
#: ``zoo list`` dataset of every LM-family model; its ``condition`` is the skill (``mixture`` for the base).
DATASET = "lm"


def score_skills(model: Any, tokenizer: Any, skills: list[SkillItems], seed: int) -> dict[str, dict[str, float]]:
    """``{skill: {"val": acc, "test": acc}}``: the model's mean 0/1 ``metric`` on each skill's splits,
    scored by evomerge's own scorers (greedy exact match, or lm-eval's multiple-choice ``acc``)."""
    from evomerge.items import load_items, make_scorer

    out: dict[str, dict[str, float]] = {}
    for files in skills:
        items = load_items(files.path, files.format, seed=seed, name=files.skill)
        scorer = make_scorer(items)
        out[files.skill] = {split: round(float(scorer.score(model, items.split(split), tokenizer=tokenizer, batch_size=128)
                                               .correct[files.metric].mean()), 4) for split in ("val", "test")}
    return out


def _build_member(spec_json: str, member: str, seed: int, root: str) -> dict[str, Any]:
    """Train ``member``, score it on every skill, write its folder and record (runs in a worker process)."""
    from evomerge.zoo.catalog import _worker_init
    from evomerge.zoo.lm.tokenizer import char_tokenizer

    _worker_init()
    import transformers

    transformers.utils.logging.disable_progress_bar()
    spec, folder = LMFamilySpec.model_validate_json(spec_json), Path(root)
    out = folder / model_id(member)
    train_s = train_member(spec, member, seed, out, None if member == BASE else folder / model_id(BASE))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True).eval()
    skills = score_skills(model, char_tokenizer(), [skill_items(folder / "items", s) for s in spec.all_skills()], seed)
    own = [skills[s] for s in spec.own_skills(member)]
    record = {
        "id": model_id(member), "architecture": type(model).__name__, "dataset": DATASET,
        "condition": spec.condition(member), "family": DATASET,
        "base": model_id(BASE) if member in spec.skills else None, "params": sum(p.numel() for p in model.parameters()),
        "val_accuracy": round(sum(s["val"] for s in own) / len(own), 4),
        "test_accuracy": round(sum(s["test"] for s in own) / len(own), 4),
        "skills": skills, "train_s": round(train_s, 2), "path": str(out),
    }
    (folder / f"{model_id(member)}.json").write_text(json.dumps(record, indent=1))
    return record


class LMZoo:
    """The LM family of one seed: ``build()`` what is missing, then ``model_dir(id)`` and ``items(skill)``.

    ``val_accuracy``/``test_accuracy`` of a record: a fine-tune's on its own skill, the base's mean over
    the fine-tunes' skills, the other architecture's mean over its skills; ``skills`` holds every skill's.
    """

    def __init__(self, seed: int = 0, cache_dir_: Path | None = None, spec: LMFamilySpec | None = None):
        self.seed, self.spec = seed, spec or DEFAULT_SPEC
        self.root = (cache_dir_ or cache_dir()) / "zoo" / f"lm-s{seed}-{self.key()}"

    def key(self) -> str:
        fields = self.spec.model_dump(mode="json") | {"seed": self.seed, "version": TRAINING_VERSION}
        return hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]

    def ids(self) -> list[str]:
        return self.spec.model_ids()

    def _member(self, mid: str) -> str:
        if mid not in self.ids():
            raise unknown_name("LM-family model", mid, self.ids())
        return mid.removeprefix("lm-")

    def model_dir(self, mid: str) -> Path:
        return self.root / model_id(self._member(mid))

    def items(self, skill: str) -> SkillItems:
        if skill not in self.spec.all_skills():
            raise unknown_name("LM-family skill", skill, self.spec.all_skills())
        return skill_items(self.root / "items", skill)

    def is_built(self, mid: str) -> bool:
        return (self.root / f"{model_id(self._member(mid))}.json").is_file()

    def record(self, mid: str) -> dict[str, Any]:
        """The model's record (``zoo list`` row plus ``skills``, ``train_s``, ``path``); built first if missing."""
        if not self.is_built(mid):
            self.build(workers=1)
        return json.loads((self.root / f"{mid}.json").read_text())

    def build(self, workers: int = 2, progress: bool = False) -> dict[str, float]:
        """Write the item files, train the base and the other architecture, then the fine-tunes, ``workers``
        processes at a time, whatever is missing; returns the training seconds of each model trained now."""
        from evomerge.zoo.catalog import run_jobs  # torch and the digits zoo: only when training

        items = self.root / "items"
        for skill in self.spec.all_skills():
            files = skill_items(items, skill)
            if not (files.path.is_file() and files.format_file.is_file()):
                write_skill_items(items, skill, self.spec.held_out, self.seed, self.spec.fit_items)
        todo = [m for m in [BASE, OTHER, *self.spec.skills] if not self.is_built(model_id(m))]
        stages = [[m for m in todo if m in (BASE, OTHER)], [m for m in todo if m not in (BASE, OTHER)]]
        trained: dict[str, float] = {}
        with Steps("zoo lm", len(todo), quiet=not progress) as steps:
            for stage in filter(None, stages):
                jobs = [(self.spec.model_dump_json(), m, self.seed, str(self.root)) for m in stage]
                processes = min(workers, len(jobs))
                steps.begin(f"training {', '.join(model_id(m) for m in stage)} (seed {self.seed}, {processes} "
                            f"process{'es' if processes > 1 else ''})")
                self._collect(run_jobs(_build_member, jobs, processes), trained, steps)
        return trained

    @staticmethod
    def _collect(results: Any, trained: dict[str, float], steps: Steps) -> None:
        for rec in results:
            trained[rec["id"]] = rec["train_s"]
            per_skill = "  ".join(f"{s} {v['test']:.3f}" for s, v in rec["skills"].items())
            steps.advance(f"trained {rec['id']:<12} {rec['train_s']:6.1f}s  test: {per_skill}")
