"""mergekit's per-tensor merges, written as functions of one tensor name's values across models.

These give ``evomerge merge`` mergekit's semantics on a mergekit config (mergekit 0.1.5,
``merge_methods/linear.py`` and ``merge_methods/generalized_task_arithmetic.py``; read, not copied).
They reuse evomerge's trim and DARE drop with mergekit's choices where the two differ.

Linear (Wortsman et al. 2022, model soups)::

    theta = sum_i w_i theta_i / (sum_i w_i if normalize else 1)

Generalized task arithmetic, one function for task arithmetic, TIES and DARE (Ilharco et al. 2023;
Yadav et al. 2023; Yu et al. 2024). With ``tau_t = theta_t - theta_base``:

1. sparsify each ``tau_t`` at its own ``density_t``: ``magnitude`` keeps the
   ``max(1, floor(density * numel))`` largest entries (TIES); ``random`` keeps each entry with
   probability ``density`` and, with ``rescale``, scales the kept entries to the L1 norm of ``tau_t``
   (DARE as mergekit runs it);
2. weight: ``d_t = w_t tau_t``;
3. with ``consensus="sum"`` (TIES' sign election on the *weighted* updates, :func:`~evomerge.core.merge.ties.elect_sign`
   with ``tie=1``), the elected sign is ``+1`` where ``sum_t d_t >= 0`` (a tie at exactly zero elects +1) and ``-1`` elsewhere; the mask
   ``m_t`` keeps entries whose sign equals it (zero entries never do); without consensus ``m_t = 1``;
4. ``delta = sum_t m_t d_t``, divided by ``sum_t m_t w_t`` when ``normalize`` (a zero divisor counts as
   1; without consensus a divisor below 1e-8 in magnitude counts as 1);
5. ``theta = theta_base + lambda * delta``.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence, Sequence

import torch

from evomerge.core.merge.dare import dare_keep_mask, rescale_l1_
from evomerge.core.merge.ties import magnitude_mask


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
    is the base, the stack of ``T`` updates (with consensus; without, a running sum), one input and
    the sparsification's temporaries.
    """
    if not tensors:
        return base.clone()
    n = len(tensors)
    stack = base.new_empty((n, *base.shape)) if consensus is not None else None
    delta: torch.Tensor | None = None
    for t in range(n):
        x = tensors.pop(0)
        d = x.sub_(base) if x is not base else x - base
        del x
        density = densities[t]
        if sparsify is not None and density <= 0:
            d.zero_()
        elif sparsify is not None and density < 1:
            if sparsify == "magnitude":
                keep = magnitude_mask(d, density, rounding="floor")
            elif sparsify == "random":
                assert generators is not None, "random sparsification needs generators"
                keep = dare_keep_mask(d.shape, 1.0 - density, generators[t], d.device)
            else:
                raise ValueError(f"unknown sparsification {sparsify!r}")
            before = d.abs().sum() if rescale else None
            d.mul_(keep)
            del keep
            if before is not None:
                rescale_l1_(d, before)
        if stack is None:  # no consensus: a running sum, no stack of T updates
            d.mul_(float(weights[t]))  # rounded before the sum, as mergekit's deltas.mul_(weights)
            delta = d if delta is None else delta.add_(d)
        else:
            torch.mul(d, float(weights[t]), out=stack[t])
        del d
    if consensus == "sum":
        assert stack is not None
        # elect_sign(stack, tie=1) as a boolean "elected +1" (sum >= 0): one bit per entry, not a float
        positive = stack.sum(dim=0) >= 0
        divisor = torch.zeros_like(base) if normalize else None
        for t in range(n):  # one model's mask at a time: no (T, ...) sign stack is held
            agree = torch.where(positive, stack[t] > 0, stack[t] < 0)  # sign(d) == elected; zeros never agree
            stack[t].mul_(agree)
            if divisor is not None:
                divisor.add_(agree.to(divisor.dtype), alpha=float(weights[t]))
            del agree
        del positive
        delta = stack.sum(dim=0)
        if divisor is not None:
            divisor[divisor == 0] = 1
    elif consensus is None:
        assert delta is not None
        total = torch.tensor([float(w) for w in weights], dtype=base.dtype).sum().item()  # summed in the tensors' dtype
        divisor = 1.0 if abs(total) < 1e-8 else total
    else:
        raise ValueError(f"unknown consensus {consensus!r}")
    del stack
    if normalize:
        delta.div_(divisor)
    if lam != 1:
        delta.mul_(lam)
    return delta.add_(base)
