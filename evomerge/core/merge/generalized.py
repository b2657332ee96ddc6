"""mergekit's per-tensor merges, written as functions of one tensor name's values across models.

These give ``evomerge merge`` mergekit's semantics on a mergekit config (mergekit 0.1.5,
``merge_methods/linear.py`` and ``merge_methods/generalized_task_arithmetic.py``; read, not copied).
They reuse evomerge's trim, sign election and DARE drop with mergekit's choices where the two differ.

Linear (Wortsman et al. 2022, model soups)::

    theta = sum_i w_i theta_i / (sum_i w_i if normalize else 1)

Generalized task arithmetic, one function for task arithmetic, TIES and DARE (Ilharco et al. 2023;
Yadav et al. 2023; Yu et al. 2024). With ``tau_t = theta_t - theta_base``:

1. sparsify each ``tau_t`` at its own ``density_t``: ``magnitude`` keeps the
   ``max(1, floor(density * numel))`` largest entries (TIES); ``random`` keeps each entry with
   probability ``density`` and, with ``rescale``, scales the kept entries to the L1 norm of ``tau_t``
   (DARE as mergekit runs it);
2. weight: ``d_t = w_t tau_t``;
3. with ``consensus="sum"`` (TIES' sign election on the *weighted* updates), the elected sign is
   ``+1`` where ``sum_t d_t >= 0`` (a tie at exactly zero elects +1) and ``-1`` elsewhere; the mask
   ``m_t`` keeps entries whose sign equals it (zero entries never do); without consensus ``m_t = 1``;
4. ``delta = sum_t m_t d_t``, divided by ``sum_t m_t w_t`` when ``normalize`` (a zero divisor counts as
   1; without consensus a divisor below 1e-8 in magnitude counts as 1);
5. ``theta = theta_base + lambda * delta``.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence, Sequence

import torch

from evomerge.core.merge.dare import dare_drop, rescale_l1
from evomerge.core.merge.ties import elect_sign, magnitude_mask


def linear(tensors: Iterable[torch.Tensor], weights: Sequence[float], normalize: bool = True) -> torch.Tensor:
    """``sum_i w_i x_i``, divided by ``sum_i w_i`` when ``normalize`` (``tensors`` is iterated once)."""
    out: torch.Tensor | None = None
    for x, w in zip(tensors, weights):
        if out is None:
            out = torch.zeros_like(x)
        out.add_(x, alpha=float(w))
        del x
    assert out is not None, "linear needs at least one tensor"
    if normalize:
        out.div_(float(sum(weights)))
    return out


def generalized_task_arithmetic(
    base: torch.Tensor,
    tensors: MutableSequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    *,
    sparsify: str | None = None,
    consensus: str | None = None,
    normalize: bool = False,
    lam: float = 1.0,
    rescale: bool = False,
    generators: Sequence[torch.Generator] | None = None,
) -> torch.Tensor:
    """One output tensor from ``base`` and the fine-tunes' ``tensors`` (see the module docstring).

    ``sparsify``: None, ``"magnitude"`` or ``"random"`` (which needs one generator per tensor).
    ``tensors`` is emptied (``pop(0)``) as each fine-tune's update enters the stack, so each source
    copy is freed as soon as it is used (with the executor's lazy inputs, read only then): the peak
    is the base, the stack of ``T`` updates, one input and the trim's temporaries.
    """
    if not tensors:
        return base.clone()
    n = len(tensors)
    stack = base.new_empty((n, *base.shape))
    for t in range(n):
        x = tensors.pop(0)
        d = x.sub_(base) if x is not base else x - base
        del x
        density = densities[t]
        if sparsify == "magnitude":
            if density <= 0:
                d.zero_()
            elif (keep := magnitude_mask(d, density, rounding="floor")) is not None:
                d = rescale_l1(d, d * keep) if rescale else d.mul_(keep)
                del keep
        elif sparsify == "random":
            if density <= 0:
                d.zero_()
            elif density < 1:
                assert generators is not None, "random sparsification needs generators"
                d = dare_drop(d, 1.0 - density, generators[t], rescale="l1" if rescale else "none")
        torch.mul(d, float(weights[t]), out=stack[t])
        del d
    if consensus == "sum":
        mask = torch.sign(stack) == elect_sign(stack, tie=1.0)
        stack.mul_(mask)
        delta = stack.sum(dim=0)
        divisor = torch.zeros_like(delta)
        for t in range(n):
            divisor.add_(mask[t].to(divisor.dtype), alpha=float(weights[t]))
        del mask
        divisor[divisor == 0] = 1
    elif consensus is None:
        delta = stack.sum(dim=0)
        total = float(sum(float(w) for w in weights))
        divisor = torch.full_like(delta, 1.0 if abs(total) < 1e-8 else total)
    else:
        raise ValueError(f"unknown consensus {consensus!r}")
    del stack
    if normalize:
        delta.div_(divisor)
    if lam != 1:
        delta.mul_(lam)
    return delta.add_(base)
