"""Item sets: items with stable ids and splits, and the ``format`` block that maps a file's fields.

An item's id is the file's ``id`` field when it has one, else the content hash lm-eval-harness logs
as ``doc_hash`` (``lm_eval/evaluator.py``: SHA-256 of ``json.dumps(doc, indent=2,
ensure_ascii=False)``), so a response logged by evomerge and one logged by lm-eval name the same item.
Splits are the file's ``split`` field where present, else drawn by a seeded hash of the id, so an
item's split depends on the seed and its id only, never on the file's order.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from evomerge.errors import ConfigError, UserError

#: Split names an item can carry (``validation`` in a file is read as ``val``).
SPLITS = ("train", "val", "test")
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Format(_Block):
    id: str = "id"
    split: str = "split"

    def fields(self) -> dict[str, str]:
        """Item field -> file field, for the fields every item must have."""
        raise NotImplementedError


class ClassificationFormat(_Format):
    """``input`` (a list of numbers, nested for a shaped tensor, or a text) and an integer ``label``."""

    type: Literal["classification"]
    input: str = "input"
    label: str = "label"

    def fields(self) -> dict[str, str]:
        return {"input": self.input, "label": self.label}


class MultipleChoiceFormat(_Format):
    """lm-eval's ``output_type: multiple_choice`` with ``doc_to_text``/``doc_to_choice``/``doc_to_target``
    naming fields: ``gold`` is an index into ``choices`` or one of the choice strings."""

    type: Literal["multiple_choice"]
    context: str = "context"
    choices: str = "choices"
    gold: str = "gold"
    target_delimiter: str = " "

    def fields(self) -> dict[str, str]:
        return {"context": self.context, "choices": self.choices, "gold": self.gold}


class RegexFilter(_Block):
    """lm-eval's ``regex`` filter (``lm_eval/filters/extraction.py``): the ``group_select``-th match
    of ``findall``, first non-empty group of a tuple, stripped; ``fallback`` when nothing matches."""

    regex: str
    group_select: int = 0
    fallback: str = "[invalid]"

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        import re

        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"a valid regular expression ({exc})") from None
        return value


class Normalize(_Block):
    """The options of lm-eval's ``exact_match`` metric (``lm_eval/api/metrics.py``)."""

    ignore_case: bool = False
    ignore_punctuation: bool = False
    ignore_numbers: bool = False
    regexes_to_ignore: tuple[str, ...] = ()


class GenerationFormat(_Format):
    """lm-eval's ``output_type: generate_until``: greedy, stop strings ``until`` (lm-eval's default
    ``["\\n\\n"]``), at most ``max_gen_toks`` new tokens (default 256), then filter and exact match."""

    type: Literal["generation"]
    prompt: str = "prompt"
    target: str = "target"
    until: tuple[str, ...] = ("\n\n",)
    max_gen_toks: int = Field(256, gt=0)
    filter: RegexFilter | None = None
    normalize: Normalize = Normalize()

    @field_validator("until", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("until")
    @classmethod
    def _non_empty(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(s == "" for s in value):
            raise ValueError("non-empty stop strings")
        return value

    def fields(self) -> dict[str, str]:
        return {"prompt": self.prompt, "target": self.target}


ItemFormat = Annotated[ClassificationFormat | MultipleChoiceFormat | GenerationFormat, Field(discriminator="type")]
FORMAT_TYPES = ("classification", "multiple_choice", "generation")


def parse_format(block: Any, source: str) -> ClassificationFormat | MultipleChoiceFormat | GenerationFormat:
    """Validate a ``format`` block; any problem is a :class:`ConfigError` naming ``source`` and the field."""
    from pydantic import TypeAdapter

    if isinstance(block, _Format):
        return block
    if not isinstance(block, Mapping):
        raise ConfigError(source, "format", "a mapping with a 'type'", block)
    if block.get("type") not in FORMAT_TYPES:
        raise ConfigError(source, "format.type", f"one of {', '.join(FORMAT_TYPES)}", block.get("type"))
    try:
        return TypeAdapter(ItemFormat).validate_python(dict(block))
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"][1:]]  # drop the union tag
        where = ".".join(["format", *loc])
        if err["type"] == "extra_forbidden":
            raise ConfigError(source, where, "no such field (unknown key)") from None
        msg = err["msg"].removeprefix("Value error, ").removeprefix("Input should be ")
        raise ConfigError(source, where, msg, err.get("input")) from None


def hash_string(text: str) -> str:
    """SHA-256 of a text's UTF-8 bytes in hex (``lm_eval.utils.hash_string``)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def doc_hash(doc: Mapping[str, Any]) -> str:
    """lm-eval's ``doc_hash`` of a sample: SHA-256 of the document as ``json.dumps(indent=2)`` writes it."""

    def plain(o: Any) -> Any:  # lm_eval.utils.handle_non_serializable
        if isinstance(o, np.bool_):
            return bool(o)
        if isinstance(o, np.integer):
            return int(o)
        if isinstance(o, np.floating):
            return float(o)
        if isinstance(o, set):
            return list(o)
        return str(o)

    return hash_string(json.dumps(doc, indent=2, default=plain, ensure_ascii=False))


@dataclass(frozen=True)
class Item:
    """One item: stable ``id``, ``split``, the fields its scorer reads, where it came from, and the
    record as the file gave it (``doc``, what lm-eval's sample logs carry)."""

    id: str
    split: str
    fields: Mapping[str, Any]
    where: str = ""
    doc: Mapping[str, Any] | None = None


def prompt_hash(item: Item) -> str | None:
    """lm-eval's ``prompt_hash`` of the item's zero-shot prompt (SHA-256 of the context of its first
    request: a multiple-choice item's ``context``, a generation item's ``prompt``), or None for
    classification items. Equal to lm-eval's only without few-shot examples, description or chat template."""
    text = item.fields.get("context", item.fields.get("prompt"))
    return None if text is None else hash_string(str(text))


@dataclass(frozen=True)
class ItemSet:
    """Items of one kind (the format's ``type``) with unique ids, in file order."""

    name: str
    format: ClassificationFormat | MultipleChoiceFormat | GenerationFormat
    items: tuple[Item, ...]
    _index: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        seen: dict[str, str] = {}
        for i, item in enumerate(self.items):
            if item.id in seen:
                raise ConfigError(item.where or self.name, "id", f"ids unique within the item set (also at {seen[item.id]})", item.id)
            seen[item.id] = item.where or str(i)
            self._index[item.id] = i

    @property
    def kind(self) -> str:
        return self.format.type

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(item.id for item in self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Item]:
        return iter(self.items)

    def __getitem__(self, key: int | str) -> Item:
        return self.items[self._index[key] if isinstance(key, str) else key]

    def answered(self) -> list[tuple[str, str]]:
        """Each text item as ``(prompt, answer)``, the text a causal LM is trained to continue: a
        generation item's prompt and first target then its first stop string; a multiple-choice item's
        context and ``target_delimiter`` + the gold choice (lm-eval's request for it)."""
        fmt = self.format
        if isinstance(fmt, GenerationFormat):
            stop = fmt.until[0] if fmt.until else ""
            return [(i.fields["prompt"], i.fields["targets"][0] + stop) for i in self.items]
        if isinstance(fmt, MultipleChoiceFormat):
            return [(i.fields["context"], fmt.target_delimiter + i.fields["choices"][i.fields["gold"]]) for i in self.items]
        raise UserError(f"{self.name}: classification items have no text answer to continue")

    def split(self, name: str) -> ItemSet:
        """The items of one split (``train``, ``val`` or ``test``), in file order."""
        if name not in SPLITS:
            raise ConfigError(self.name, "split", f"one of {', '.join(SPLITS)}", name)
        return self.subset([i.id for i in self.items if i.split == name], suffix=f"/{name}")

    def subset(self, ids: Sequence[str], suffix: str = "") -> ItemSet:
        """The items with the given ids, in the order given."""
        missing = [i for i in ids if i not in self._index]
        if missing:
            raise ConfigError(self.name, "id", "an id of this item set", missing[0])
        return ItemSet(self.name + suffix, self.format, tuple(self.items[self._index[i]] for i in ids))


def assign_splits(ids: Sequence[str], declared: Sequence[str | None], seed: int, val_fraction: float) -> list[str]:
    """Each item's split: its declared one, else ``val`` for the ``round(val_fraction * n)`` undeclared items
    ranked first by ``sha256(f"{seed}/{id}")`` and ``test`` for the rest (independent of file order)."""
    undeclared = [i for i, d in zip(ids, declared) if d is None]
    rank = sorted(undeclared, key=lambda i: hashlib.sha256(f"{seed}/{i}".encode()).hexdigest())
    val = set(rank[: int(round(val_fraction * len(rank)))])
    return [d if d is not None else ("val" if i in val else "test") for i, d in zip(ids, declared)]


def split_name(declared: Any, where: str, fmt_field: str) -> str | None:
    """A file's ``split`` value as ``train``/``val``/``test`` (``validation``, ``valid``, ``dev`` read as ``val``)."""
    if declared is None or declared == "":
        return None
    name = _SPLIT_ALIASES.get(str(declared), str(declared))
    if name not in SPLITS:
        raise ConfigError(where, fmt_field, f"a split ({', '.join(SPLITS)}, validation)", declared)
    return name
