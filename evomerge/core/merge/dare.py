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


def dare_drop(delta: torch.Tensor, p: float, generator: torch.Generator, rescale: str = "inverse") -> torch.Tensor:
    """Drop entries of ``delta`` with probability ``p`` and rescale the survivors.

    ``rescale="inverse"``: by ``1/(1-p)`` (the paper; keeps the expectation). ``"l1"``: by
    ``||delta||_1 / ||kept||_1`` (mergekit's ``rescale: true``, which keeps the L1 norm exactly;
    left unscaled when either norm is below 1e-7). ``"none"``: not at all.
    """
    if p <= 0:
        return delta.clone()
    before = delta.abs().sum() if rescale == "l1" else None
    kept = delta * dare_keep_mask(delta.shape, p, generator, delta.device)
    if rescale == "inverse":
        return kept.div_(1.0 - p)
    return rescale_l1_(kept, before) if before is not None else kept


def dare_keep_mask(shape: torch.Size, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Boolean mask keeping each entry with probability ``1 - p`` (drawn on the CPU from ``generator``)."""
    return (torch.rand(shape, generator=generator) >= p).to(device)


def rescale_l1_(kept: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Scale ``kept`` in place to the L1 norm ``before`` of what it was cut from:
    ``kept * before / ||kept||_1``, unchanged when either norm is below 1e-7."""
    after = kept.abs().sum()
    return kept if before < 1e-7 or after < 1e-7 else kept.mul_(before / after)


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
