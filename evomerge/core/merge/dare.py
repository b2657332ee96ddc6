"""DARE (Yu et al., ICML 2024): drop each update entry with probability ``p``, rescale by 1/(1-p).

``tau'_t = m_t * tau_t / (1 - p)`` with ``m_t ~ Bernoulli(1 - p)``, so ``E[tau'_t] = tau_t``.
The dropped updates are then summed (``theta_base + lam * sum_t tau'_t``, DARE + task
arithmetic) or, with ``elect_sign``, merged by TIES' sign election and disjoint mean
(DARE-TIES). Masks come from a generator seeded by ``(seed, key, task)``, so a merge is
reproducible and a key's mask does not depend on which other keys are merged.
"""

from __future__ import annotations

import zlib
from typing import Annotated

import torch
from pydantic import Field

from evomerge.core.merge.base import MergeMethod, MergeParams, PerLayer, layer_value, register_method
from evomerge.core.merge.ties import ties_combine

DropRate = Annotated[float, Field(ge=0.0, lt=1.0)]


def dare_drop(delta: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Drop entries of ``delta`` with probability ``p``; rescale the survivors by ``1/(1-p)``."""
    keep = torch.rand(delta.shape, generator=generator) >= p
    return delta * keep / (1.0 - p)


def key_generator(seed: int, key: str, task: int) -> torch.Generator:
    """A CPU generator seeded by ``(seed, key, task)`` (CRC32, stable across runs)."""
    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{key}/{task}".encode()))


class DareParams(MergeParams):
    p: PerLayer[DropRate] = 0.5
    lam: PerLayer[float] = 1.0
    elect_sign: bool = False
    seed: int = 0


@register_method
class Dare(MergeMethod):
    name = "dare"
    Params = DareParams

    def combine_key(self, key: str, deltas: list[torch.Tensor], params: DareParams) -> torch.Tensor:
        p = layer_value(params.p, key, "dare.p")
        lam = layer_value(params.lam, key, "dare.lam")
        dropped = [dare_drop(d, p, key_generator(params.seed, key, t)) for t, d in enumerate(deltas)]
        return lam * (ties_combine(dropped) if params.elect_sign else sum(dropped))
