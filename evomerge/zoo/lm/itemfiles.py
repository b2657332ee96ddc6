"""The LM family's item files: per skill, one JSONL in the public item format (``docs/items.md``)
holding its validation and test items and a few training items (``split`` field), and the format block and
metric that score it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from evomerge.zoo.lm.skills import SKILLS, generate

#: Longest answer of any skill (8 sorted letters) plus the stop string, with room to spare.
MAX_GEN_TOKS = 12


@dataclass(frozen=True)
class SkillItems:
    """A skill's item file, its format block (``format_file`` holds it as YAML) and the 0/1 metric."""

    skill: str
    path: Path
    format_file: Path
    format: dict[str, Any]
    metric: str


def skill_format(skill: str) -> tuple[dict[str, Any], str]:
    """Generation skills: greedy answer up to the newline, ``exact_match``; multiple choice: ``acc``."""
    if SKILLS[skill].type == "generation":
        return {"type": "generation", "until": ["\n"], "max_gen_toks": MAX_GEN_TOKS}, "exact_match"
    return {"type": "multiple_choice"}, "acc"


def skill_items(folder: Path, skill: str) -> SkillItems:
    """Where ``skill``'s files are (or go) under ``folder``."""
    fmt, metric = skill_format(skill)
    return SkillItems(skill, folder / f"{skill}.jsonl", folder / f"{skill}.format.yaml", fmt, metric)


def write_skill_items(folder: Path, skill: str, n: int, seed: int, train: int = 0) -> SkillItems:
    """``n`` validation then ``n`` test items of ``skill`` (seeded, disjoint from training), then the
    first ``train`` training items (what a stitch fits on), and the format file."""
    files = skill_items(folder, skill)
    folder.mkdir(parents=True, exist_ok=True)
    counts = {"val": n, "test": n, "train": train}
    lines = [json.dumps({**item, "split": split}) for split, k in counts.items() if k for item in generate(skill, k, seed, split)]
    files.path.write_text("\n".join(lines) + "\n")
    files.format_file.write_text(yaml.safe_dump({"format": files.format}, default_flow_style=None))
    return files
