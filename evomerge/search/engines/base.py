"""The engine interface every search engine implements, and the engine registry.

An engine proposes genomes (``ask``) and learns from their objectives (``tell``).
Values told are raw objective values in the space's units; engines read the
directions (max/min) from the space. ``tell(id, None)`` marks a failed candidate,
which the engine scores worst. Engines persist their state under ``state_dir``
(a run folder) and resume from it when it already holds state.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ValidationError

from evomerge.errors import ConfigError
from evomerge.registry import Registry
from evomerge.search.space import SearchSpace, Strict, config_error

#: Objective value told for a failed candidate (finite, so ranks and crowding stay defined).
WORST = 1e30


@dataclass(frozen=True)
class Candidate:
    """One proposal: a unique id within the run and its genome (inactive genes are None)."""

    id: str
    genome: dict[str, Any]


def candidate_id(number: int) -> str:
    return f"c{number:05d}"


def worst_values(directions: list[str]) -> list[float]:
    """The worst finite value for each objective direction."""
    return [-WORST if d == "max" else WORST for d in directions]


class NoSettings(Strict):
    """An engine without settings of its own."""


class Engine(ABC):
    """Ask/tell search engine over a :class:`SearchSpace`."""

    #: pydantic model of ``engine.settings`` in the space file
    Settings: ClassVar[type[BaseModel]] = NoSettings
    #: whether the engine optimizes several objectives at once
    multi_objective: ClassVar[bool] = True

    def __init__(self, space: SearchSpace, state_dir: Path | None = None):
        self.space = space
        self.seed = space.seed
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.settings = self.check(space)

    @classmethod
    def check(cls, space: SearchSpace) -> BaseModel:
        """Validate the space's engine section for this engine; ConfigError otherwise."""
        if len(space.objectives) > 1 and not cls.multi_objective:
            multi = [n for n in ENGINES if ENGINES.get(n).multi_objective]
            raise ConfigError(
                space.source, "engine.name",
                f"an engine for {len(space.objectives)} objectives (one of {', '.join(multi)})",
                space.engine.name,
            )
        try:
            return cls.Settings.model_validate(space.engine.settings)
        except ValidationError as exc:
            raise config_error(space.source, exc, prefix="engine.settings") from None

    @abstractmethod
    def ask(self) -> Candidate | None:
        """The next candidate, or None while a generational engine waits for tells."""

    @abstractmethod
    def tell(self, candidate_id: str, objectives: list[float] | None) -> None:
        """Report a candidate's objective values (None: failed, scored worst)."""

    @abstractmethod
    def pending(self) -> list[Candidate]:
        """Candidates asked and not yet told (re-submitted after a resume)."""

    @abstractmethod
    def told(self) -> set[str]:
        """Ids of the candidates whose results the engine has learned."""

    @abstractmethod
    def checkpoint(self) -> None:
        """Persist the state under ``state_dir`` (no-op without one)."""


ENGINES: Registry[type[Engine]] = Registry("engine")
