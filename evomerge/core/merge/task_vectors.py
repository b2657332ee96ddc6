"""Task vectors (Ilharco et al. 2023): ``tau_t = theta_t - theta_base``, key by key.

State dicts are ``dict[str, Tensor]``. Updates are computed in float32 and written back in
the base's dtype. Only floating-point tensors are merged (integer buffers such as
BatchNorm's ``num_batches_tracked`` are copied from the base).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from evomerge.errors import UserError

StateDict = dict[str, torch.Tensor]
KeyFilter = Callable[[str], bool]

HEAD_PREFIX = "layers.head."


def is_trunk_key(key: str) -> bool:
    """Key filter of the shared-base family: everything but the task head (``layers.head.*``)."""
    return not key.startswith(HEAD_PREFIX)


def mergeable_keys(base: StateDict, keys: KeyFilter | None = None) -> list[str]:
    """Keys of ``base`` holding floating-point tensors that pass ``keys``, in ``base``'s order."""
    return [k for k, v in base.items() if v.is_floating_point() and (keys is None or keys(k))]


def task_vectors(base: StateDict, finetuned: list[StateDict], keys: KeyFilter | None = None) -> list[StateDict]:
    """One task vector per fine-tuned model over the mergeable keys (float32).

    Raises :class:`UserError` if there is no model, or a model lacks a key or has another shape.
    """
    if not finetuned:
        raise UserError("merge needs at least one fine-tuned model, got none")
    names = mergeable_keys(base, keys)
    out = []
    for i, sd in enumerate(finetuned):
        for k in names:
            if k not in sd:
                raise UserError(f"fine-tuned model {i} has no parameter '{k}' (the base has it)")
            if sd[k].shape != base[k].shape:
                raise UserError(
                    f"fine-tuned model {i}: parameter '{k}' has shape {tuple(sd[k].shape)}, "
                    f"the base has {tuple(base[k].shape)}"
                )
        out.append({k: sd[k].detach().float() - base[k].detach().float() for k in names})
    return out


def add_update(base: StateDict, update: StateDict, scale: float = 1.0) -> StateDict:
    """``base + scale * update`` on the keys of ``update``; other entries are copies of ``base``."""
    out = {k: v.detach().clone() for k, v in base.items()}
    for k, u in update.items():
        out[k] = (base[k].detach().float() + scale * u).to(base[k].dtype)
    return out
