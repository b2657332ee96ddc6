"""Shared machinery of the DEAP engines: gene codec, per-gene-type variation, generations.

DEAP's operators (``cxSimulatedBinaryBounded``, ``cxUniform``, ``mutGaussian``,
``mutUniformInt``, ``varAnd``, selections) do the evolution. Written by hand here,
because DEAP has no such parts: the mapping between a mixed genome (categorical,
int, float, log-scale, conditional; array genes element by element) and a flat
individual; splitting variation by gene type; generational batches fed through
ask/tell; and running DEAP (which draws from the global ``random`` module) on the
engine's own seeded, checkpointed stream.
"""

from __future__ import annotations

import math
import random
from abc import abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

from deap import algorithms, base, tools
from pydantic import BaseModel, Field

from evomerge.errors import ConfigError, read_json
from evomerge.search.engines.base import Candidate, Engine, candidate_id, worst_values
from evomerge.search.pareto import fitness_class
from evomerge.search.run_folder import write_json_atomic
from evomerge.search.space import CategoricalGene, IntGene, Probability, SearchSpace, Strict, mask_inactive

STATE_FILE = "engine_state.json"


class DeapSettings(Strict):
    cxpb: Probability = 0.7
    mutpb: Annotated[float, Field(gt=0, le=1)] = 1.0
    indpb: Annotated[float, Field(gt=0, le=1)] = 0.3
    sigma: Annotated[float, Field(gt=0)] = 0.2
    eta: Annotated[float, Field(gt=0)] = 15.0
    cx_indpb: Probability = 0.5


class Individual(list):
    """Numeric genes as positions in [0, 1] (log-aware), categorical genes as choice indices."""

    fitness: base.Fitness


class GeneCodec:
    """Maps individuals to genomes and varies them per gene type."""

    def __init__(self, space: SearchSpace, settings: DeapSettings):
        self.space, self.settings = space, settings
        self.cat = [i for i, g in enumerate(space.scalar_genes) if isinstance(g, CategoricalGene)]
        self.num = [i for i, g in enumerate(space.scalar_genes) if not isinstance(g, CategoricalGene)]

    def random(self) -> list[float | int]:
        return [
            random.randrange(len(g.choices)) if isinstance(g, CategoricalGene) else random.random()
            for g in self.space.scalar_genes
        ]

    def encode(self, genome: dict[str, Any]) -> list[float | int]:
        """An individual holding ``genome``'s values (the inverse of :meth:`genome`); genes it leaves
        out drawn at random."""
        values = self.random()
        for i, g in enumerate(self.space.scalar_genes):
            if g.name in genome:
                values[i] = _position(g, genome[g.name])
        return values

    def genome(self, values: list[float | int]) -> dict[str, Any]:
        return mask_inactive(self.space, {g.name: _value(g, x) for g, x in zip(self.space.scalar_genes, values)})

    def mate(self, a: Individual, b: Individual) -> tuple[Individual, Individual]:
        if self.num:
            na, nb = [a[i] for i in self.num], [b[i] for i in self.num]
            tools.cxSimulatedBinaryBounded(na, nb, eta=self.settings.eta, low=0.0, up=1.0)
            self._put(a, self.num, na), self._put(b, self.num, nb)
        if self.cat:
            ca, cb = [a[i] for i in self.cat], [b[i] for i in self.cat]
            tools.cxUniform(ca, cb, indpb=self.settings.cx_indpb)
            self._put(a, self.cat, ca), self._put(b, self.cat, cb)
        return a, b

    def mutate(self, ind: Individual) -> tuple[Individual]:
        s = self.settings
        if self.num:
            x = [ind[i] for i in self.num]
            tools.mutGaussian(x, mu=0.0, sigma=s.sigma, indpb=s.indpb)
            self._put(ind, self.num, [min(1.0, max(0.0, v)) for v in x])
        if self.cat:
            c = [ind[i] for i in self.cat]
            ups = [len(self.space.scalar_genes[i].choices) - 1 for i in self.cat]
            tools.mutUniformInt(c, low=[0] * len(c), up=ups, indpb=s.indpb)
            self._put(ind, self.cat, c)
        return (ind,)

    @staticmethod
    def _put(ind: Individual, positions: list[int], values: list) -> None:
        for i, v in zip(positions, values):
            ind[i] = v


def _range(gene: Any) -> tuple[float, float]:
    """The values positions 0 and 1 map to; int genes widened by half a step so every grid value is
    equally wide."""
    lo, hi = float(gene.low), float(gene.high)
    if isinstance(gene, IntGene):
        lo, hi = lo - gene.step / 2, hi + gene.step / 2
    return lo, hi


def _position(gene: Any, value: Any) -> float | int:
    """The position of ``value`` (the inverse of :func:`_value`)."""
    if isinstance(gene, CategoricalGene):
        return gene.index(value)
    lo, hi = _range(gene)
    if gene.log:
        return (math.log(value) - math.log(lo)) / (math.log(hi) - math.log(lo))
    return (value - lo) / (hi - lo)


def _value(gene: Any, x: float | int) -> Any:
    """A gene's value at position ``x``; int genes round onto their step grid."""
    if isinstance(gene, CategoricalGene):
        return gene.choices[int(x)]
    lo, hi = _range(gene)
    if gene.log:
        v = math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo)))
    else:
        v = lo + x * (hi - lo)
    if isinstance(gene, IntGene):
        return int(min(gene.high, max(gene.low, gene.low + gene.step * round((v - gene.low) / gene.step))))
    return float(min(gene.high, max(gene.low, v)))


class DeapEngine(Engine):
    """Generational DEAP engine: each generation's new individuals are asked as one batch; the first
    generation holds the space's ``engine.initial`` genomes, then random individuals."""

    Settings = DeapSettings

    @classmethod
    def check(cls, space: SearchSpace) -> BaseModel:
        if len(space.engine.initial) > space.engine.population:
            raise ConfigError(space.source, "engine.initial",
                              f"at most engine.population ({space.engine.population}) genomes for a DEAP engine",
                              f"{len(space.engine.initial)} genomes")
        return super().check(space)

    def __init__(self, space: SearchSpace, state_dir: Path | None = None):
        super().__init__(space, state_dir)
        self.codec = GeneCodec(space, self.settings)
        self._fitness_cls = fitness_class(space.directions)
        self.toolbox = base.Toolbox()
        self.toolbox.register("mate", self.codec.mate)
        self.toolbox.register("mutate", self.codec.mutate)
        self._rng_state = random.Random(self.seed).getstate()
        self.population: list[Individual] = []  # current generation
        self.archive: list[Individual] = []  # survivors kept across generations (NSGA-II)
        self._queue: list[Individual] = []  # bred, not yet asked
        self._asked: dict[str, Individual] = {}
        self._told: set[str] = set()
        self._count = 0
        self.generation = 0
        if self._state_path and self._state_path.exists():
            self.load_state_dict(read_json(self._state_path))

    @property
    def _state_path(self) -> Path | None:
        return self.state_dir / STATE_FILE if self.state_dir else None

    @abstractmethod
    def breed(self) -> list[Individual]:
        """The next generation from the fully told current one (``self.population``)."""

    def individual(self, values: list[float | int], fitness: list[float] | None = None) -> Individual:
        ind = Individual(values)
        ind.fitness = self._fitness_cls(fitness) if fitness is not None else self._fitness_cls()
        return ind

    def ask(self) -> Candidate | None:
        with self._deap_random():
            while not self._queue and not self._asked:
                initial = [] if self.population else self.space.initial_genomes  # the first generation starts there
                self.population = self.breed() if self.population else [
                    self.individual(self.codec.encode(initial[k]) if k < len(initial) else self.codec.random())
                    for k in range(self.space.engine.population)
                ]
                self.generation += 1
                self._queue = [ind for ind in self.population if not ind.fitness.valid]
        if not self._queue:
            return None
        ind = self._queue.pop(0)
        cid = candidate_id(self._count)
        self._count += 1
        self._asked[cid] = ind
        return Candidate(cid, self.codec.genome(ind))

    def tell(self, candidate_id: str, objectives: list[float] | None) -> None:
        ind = self._asked.pop(candidate_id)
        ind.fitness.values = tuple(objectives if objectives is not None else worst_values(self.space.directions))
        self._told.add(candidate_id)

    def pending(self) -> list[Candidate]:
        return [Candidate(cid, self.codec.genome(ind)) for cid, ind in self._asked.items()]

    def told(self) -> set[str]:
        return set(self._told)

    def checkpoint(self) -> None:
        if self._state_path:
            write_json_atomic(self._state_path, self.state_dict())

    @contextmanager
    def _deap_random(self) -> Iterator[None]:
        """Run DEAP's operators on this engine's random stream, leaving the global one untouched."""
        outer = random.getstate()
        random.setstate(self._rng_state)
        try:
            yield
        finally:
            self._rng_state = random.getstate()
            random.setstate(outer)

    def state_dict(self) -> dict[str, Any]:
        def dump(inds: list[Individual]) -> list:
            return [[list(i), list(i.fitness.values) if i.fitness.valid else None] for i in inds]

        index = {id(ind): k for k, ind in enumerate(self.population)}
        version, internal, gauss = self._rng_state
        return {
            "rng": [version, list(internal), gauss],
            "count": self._count,
            "generation": self.generation,
            "population": dump(self.population),
            "archive": dump(self.archive),
            "queue": [index[id(i)] for i in self._queue],
            "asked": {cid: index[id(i)] for cid, i in self._asked.items()},
            "told": sorted(self._told),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self._rng_state = (version, tuple(internal), gauss)
        self._count, self.generation = state["count"], state["generation"]
        self.population = [self.individual(v, f) for v, f in state["population"]]
        self.archive = [self.individual(v, f) for v, f in state["archive"]]
        self._queue = [self.population[k] for k in state["queue"]]
        self._asked = {cid: self.population[k] for cid, k in state["asked"].items()}
        self._told = set(state["told"])

    def vary(self, parents: list[Individual]) -> list[Individual]:
        """DEAP's ``varAnd`` with this engine's per-gene-type crossover and mutation."""
        return algorithms.varAnd(parents, self.toolbox, self.settings.cxpb, self.settings.mutpb)
