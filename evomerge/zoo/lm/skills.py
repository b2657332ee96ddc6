"""Procedurally generated text skills of the built-in language-model family.

Each skill draws items from a seeded ``random.Random``; an item is a plain dict in the public
item-file format (``docs/items.md``): generation items have ``prompt`` and ``target``,
multiple-choice items ``context``, ``choices`` and ``gold``. ``training_text`` turns an item into
the string a model is trained on (prompt and answer, ending in a newline, which is the stop string).

The skills share one character vocabulary and one prompt shape (``<skill> <operand>:``), so a
fine-tune on one skill and a fine-tune on another touch the same embeddings and attention, and
interfere when merged naively.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Item = dict[str, Any]
LETTERS = "abcdefgh"
#: Validation and test items per skill (the issue asks for at least 1,000 each).
HELD_OUT = 1000


@dataclass(frozen=True)
class Skill:
    """One skill: its item type and a generator ``make(rng) -> item``."""

    name: str
    type: str  # "generation" or "multiple_choice"
    make: Callable[[random.Random], Item]


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(LETTERS) for _ in range(rng.randint(lo, hi)))


def _add(rng: random.Random) -> Item:
    a, b = rng.randint(0, 99), rng.randint(0, 99)
    return {"prompt": f"add {a} {b}: ", "target": str(a + b)}


def _reverse(rng: random.Random) -> Item:
    w = _word(rng, 3, 6)
    return {"prompt": f"reverse {w}: ", "target": w[::-1]}


def _sort(rng: random.Random) -> Item:
    w = _word(rng, 5, 8)
    return {"prompt": f"sort {w}: ", "target": "".join(sorted(w))}


def _count(rng: random.Random) -> Item:
    c = rng.choice(LETTERS[:3])
    w = "".join(rng.choice(LETTERS[:4]) for _ in range(rng.randint(4, 9)))
    return {"prompt": f"count {c} {w}: ", "target": str(w.count(c))}


def _compare(rng: random.Random) -> Item:
    a, b = rng.sample(range(100), 2)
    return {"context": f"max {a} {b}:", "choices": [str(a), str(b)], "gold": int(b > a)}


def _upper(rng: random.Random) -> Item:
    w = _word(rng, 3, 6)
    return {"prompt": f"upper {w}: ", "target": w.upper()}


def _parity(rng: random.Random) -> Item:
    n = rng.randint(0, 9999)
    return {"context": f"parity {n}:", "choices": ["even", "odd"], "gold": n % 2}


def _shift(rng: random.Random) -> Item:
    w = _word(rng, 3, 6)
    return {"prompt": f"shift {w}: ", "target": "".join(chr(ord(c) + 1) for c in w)}


def _member(rng: random.Random) -> Item:
    c = rng.choice(LETTERS)
    w = _word(rng, 3, 6)
    return {"context": f"has {c} {w}:", "choices": ["no", "yes"], "gold": int(c in w)}


SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("add", "generation", _add),
        Skill("reverse", "generation", _reverse),
        Skill("sort", "generation", _sort),
        Skill("count", "generation", _count),
        Skill("compare", "multiple_choice", _compare),
        Skill("upper", "generation", _upper),
        Skill("parity", "multiple_choice", _parity),
        Skill("shift", "generation", _shift),
        Skill("member", "multiple_choice", _member),
    )
}
#: The Llama base's pretraining mixture; ``shift`` and ``member`` are only the second architecture's.
PRETRAINING = ("add", "reverse", "sort", "count", "compare", "upper", "parity")

#: Every character any skill writes, plus the separator and the stop string.
ALPHABET = sorted(set(string.digits + LETTERS + LETTERS.upper() + "abcdefghijklmnopqrstuvwxyz" + " :\n"))


def training_text(item: Item) -> tuple[str, str]:
    """(prompt, answer) as trained: the answer ends with the stop string ``\\n``.

    Generation prompts end in ``": "``; a multiple-choice answer follows its context after
    lm-eval's default ``target_delimiter`` (a space), so both read ``"<skill> <operand>: <answer>"``.
    """
    if "prompt" in item:
        return item["prompt"], item["target"] + "\n"
    return item["context"], " " + item["choices"][item["gold"]] + "\n"


#: Item streams in the order they exclude each other: test never repeats a validation prompt, train neither.
SPLITS = ("val", "test", "train")


def generate(skill: str, n: int, seed: int, split: str) -> list[Item]:
    """``n`` distinct items of ``skill`` for ``split``; seeds and splits give disjoint streams.

    Items are unique within a split, and no prompt is in two splits: each stream of :data:`SPLITS`
    skips the first :data:`HELD_OUT` prompts of every stream before it (a prefix of a stream is its
    first items, so ``n <= HELD_OUT`` validation and test items are disjoint too).
    """
    held_out: set[str] = set()
    for other in SPLITS[: SPLITS.index(split)]:
        held_out |= {training_text(i)[0] for i in generate(skill, HELD_OUT, seed, other)}
    rng = random.Random(f"{seed}/{skill}/{split}")
    make = SKILLS[skill].make
    seen: set[str] = set()
    out: list[Item] = []
    tries = 0
    while len(out) < n:
        item = make(rng)
        key = training_text(item)[0]
        tries += 1
        if key in seen or key in held_out:
            if tries > 50 * n:
                raise ValueError(f"skill '{skill}' cannot produce {n} distinct {split} items")
            continue
        seen.add(key)
        out.append(item)
    return out
