"""One exception family for user mistakes, and the readers that turn bad files into them.

Anything the user can fix (a bad file, an unknown name, an out-of-range value)
raises a :class:`UserError`. The CLI prints its message and exits with status 2,
without a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydantic import ValidationError


class UserError(Exception):
    """A mistake in the user's input: message names the file, field and what was expected."""

    exit_code = 2


class ConfigError(UserError):
    """A bad value in a configuration file (space YAML, item bank, manifest)."""

    def __init__(self, file: str, field: str, expected: str, got: object = None):
        self.file, self.field, self.expected, self.got = file, field, expected, got
        msg = f"{file}: field '{field}': expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Error for an unknown registry name, listing the valid ones."""
    return UserError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(valid))}")


def read_text(path: str | Path, what: str = "a text file") -> str:
    """A user's file as UTF-8 text; a missing, unreadable or binary file is a ConfigError naming it."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(str(path), "<file>", f"a readable file ({what})", exc.strerror) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), "<file>", f"UTF-8 text ({what}), not binary data",
                          f"byte 0x{data[exc.start]:02x} at offset {exc.start}") from None


def read_json(path: str | Path, what: str = "a JSON file") -> Any:
    """A user's JSON file, parsed; unreadable, binary or malformed content is a ConfigError naming it."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(str(path), "<json>", f"valid JSON ({what}) (line {exc.lineno}, column {exc.colno})",
                          exc.msg) from None


class FieldIssue(ValueError):
    """Raised inside pydantic validators: ``field`` is the path below the validated model."""

    def __init__(self, field: str, expected: str, got: object = None):
        self.field, self.expected, self.got = field, expected, got
        super().__init__(f"{field}: expected {expected}")


def _union_member(item: Any) -> bool:
    """pydantic's name for a member of a plain union in an error location (``constrained-float``...)."""
    return isinstance(item, str) and (item.startswith(("constrained-", "function-")) or "[" in item)


#: A discriminated union's tag field -> (what it names, its values), e.g. ``{"kind": ("a recipe kind", ...)}``.
Tags = Mapping[str, tuple[str, Sequence[str]]]


def _loc_path(loc: tuple[Any, ...], tags: Tags) -> str:
    members = {v for _, values in tags.values() for v in values}
    parts: list[str] = []
    for i, item in enumerate(loc):
        tag_slot = i == 0 or isinstance(loc[i - 1], int)  # where a discriminated union names its member
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif not ((tag_slot and item in members) or _union_member(item)):
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


def _most_specific(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The first error; within a union's alternatives, the one reaching deepest into the value."""
    first = errors[0]
    loc = tuple(first["loc"])
    cut = next((i for i, p in enumerate(loc) if _union_member(p)), None)
    if cut is None:
        return first
    same = [e for e in errors if tuple(e["loc"][:cut]) == loc[:cut]]
    return max(same, key=lambda e: len(e["loc"]))


def config_error(source: str, exc: ValidationError, prefix: str = "", tags: Tags | None = None) -> ConfigError:
    """A pydantic ValidationError as a ConfigError naming file, field path (under ``prefix``) and what
    was expected. Of several errors the first is named (the deepest of a union's alternatives) and the
    rest counted; ``tags`` describes the discriminated unions, whose tag values stay out of paths."""
    tags = tags or {}
    errors = exc.errors()
    err = _most_specific(errors)
    path = _loc_path(tuple(err["loc"]), tags)
    issue = (err.get("ctx") or {}).get("error")
    if isinstance(issue, FieldIssue):
        field = ".".join(p for p in (path, issue.field) if p).replace(".[", "[")
        expected, got = issue.expected, issue.got
    else:
        field, got = path, err.get("input")
        kind = err["type"]
        if kind == "missing":
            expected, got = "a value (the field is required)", None
        elif kind == "extra_forbidden":
            expected = "no such field (unknown key)"
        elif kind in ("union_tag_not_found", "union_tag_invalid"):
            tag = err["ctx"]["discriminator"].strip("'")
            field = f"{path}.{tag}" if path else tag
            name, values = tags.get(tag, (f"a '{tag}'", ()))
            expected = f"{name} ({', '.join(values) or err['ctx'].get('expected_tags', '')})"
            got = err["ctx"].get("tag")
        else:
            expected = err["msg"].removeprefix("Input should be ").removeprefix("Value error, ")
    field = ".".join(p for p in (prefix, field) if p).replace(".[", "[") or "<root>"
    more = len(errors) - 1
    error = ConfigError(source, field, expected, got)
    if more:
        error.args = (f"{error.args[0]} (and {more} more error{'s' * (more > 1)})",)
    return error
