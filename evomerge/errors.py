"""One exception family for user mistakes.

Anything the user can fix (a bad file, an unknown name, an out-of-range value)
raises a :class:`UserError`. The CLI prints its message and exits with status 2,
without a traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations

from collections.abc import Iterable


class UserError(Exception):
    """A mistake in the user's input: message names the file, field and what was expected."""

    exit_code = 2


class ConfigError(UserError):
    """A bad value in a configuration file (space YAML, item bank, manifest)."""

    def __init__(self, file: str, field: str, expected: str, got: object = None):
        self.file, self.field, self.expected = file, field, expected
        msg = f"{file}: field '{field}': expected {expected}"
        if got is not None:
            msg += f", got {got!r}"
        super().__init__(msg)


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> UserError:
    """Error for an unknown registry name, listing the valid ones."""
    return UserError(f"unknown {kind} '{name}'; valid: {', '.join(sorted(valid))}")
