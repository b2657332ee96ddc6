"""A learned router between frozen paths: mixture-of-experts gating fitted by maximum likelihood.

Given K frozen paths with class probabilities ``p_k(y|x)`` and fixed routing coefficients
``w_k``, the gate ``g(x) = softmax(W h(x) + c)`` on features ``h(x)`` (e.g. a trunk activation
and the paths' log-probabilities)
maximizes the mixture likelihood (Jacobs et al. 1991, "Adaptive mixtures of local experts"):

    max_W  Σ_i log Σ_k g_k(x_i) w_k p_k(y_i|x_i) / Σ_k g_k(x_i) w_k

Only the gate trains; path outputs are computed once. This is seed 001's task-conditioned
routing coefficient α_t made input-adaptive: the router learns from the trunk which path's
task distribution an input belongs to, instead of a fixed α per task.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def mixture_log_likelihood(gate_logits: Tensor, path_probs: Tensor, weights: Tensor, y: Tensor) -> Tensor:
    """Mean ``log Σ_k ĝ_k p_k(y|x)`` with ``ĝ ∝ softmax(gate_logits) · w``; ``path_probs`` is ``(K, B, C)``."""
    g = torch.softmax(gate_logits, dim=-1) * weights  # (B, K)
    g = g / g.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    p_true = path_probs.gather(2, y.view(1, -1, 1).expand(path_probs.shape[0], -1, 1)).squeeze(-1).T  # (B, K)
    return (g * p_true).sum(-1).clamp_min(1e-12).log().mean()


def fit_gate(
    features: Tensor,
    path_probs: Tensor,
    y: Tensor,
    weights: Tensor | None = None,
    epochs: int = 300,
    lr: float = 0.02,
    weight_decay: float = 1e-4,
    seed: int = 0,
) -> nn.Linear:
    """A linear gate ``(B, F) -> (B, K)`` fitted full-batch with Adam on the mixture likelihood."""
    k = path_probs.shape[0]
    weights = torch.ones(k) if weights is None else weights
    feats = features.reshape(len(features), -1).float()
    mu, sd = feats.mean(0), feats.std(0).clamp_min(1e-6)
    gen = torch.Generator().manual_seed(seed)
    gate = nn.Linear(feats.shape[1], k)
    with torch.no_grad():
        gate.weight.copy_(0.01 * torch.randn(gate.weight.shape, generator=gen))
        gate.bias.zero_()
    z = (feats - mu) / sd
    opt = torch.optim.Adam(gate.parameters(), lr=lr, weight_decay=weight_decay)
    with torch.enable_grad():
        for _ in range(epochs):
            opt.zero_grad()
            (-mixture_log_likelihood(gate(z), path_probs, weights, y)).backward()
            opt.step()
    # fold the standardization into the layer: W (x - mu) / sd + c
    with torch.no_grad():
        w = gate.weight / sd
        gate.bias.sub_(w @ mu)
        gate.weight.copy_(w)
    return gate.requires_grad_(False)


ROUTINGS = ("mixture", "confidence", "learned")


def route(probs: Tensor, weights: Tensor, routing: str = "mixture", gate: Tensor | None = None) -> Tensor:
    """``log Σ_k r_k p_k / Σ_k r_k`` over paths ``probs`` ``(K, *batch, C)`` with coefficients ``weights`` ``(K,)``.

    ``r_k``: ``mixture``, ``w_k``; ``confidence``, ``w_k · max_c p_k(c)`` (trust the more confident
    path); ``learned``, ``w_k · g_k`` with the gate's probabilities ``gate`` ``(*batch, K)``.
    """
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
    if not bool((weights > 0).any()):
        raise ValueError("every routing coefficient is zero: no path to run")
    coef = weights.reshape(-1, *([1] * (probs.dim() - 1))).expand(*probs.shape[:-1], 1)
    if routing == "confidence":
        coef = coef * probs.amax(dim=-1, keepdim=True)
    elif routing == "learned":
        if gate is None:
            raise ValueError("routing 'learned' needs the gate's probabilities")
        coef = coef * gate.movedim(-1, 0).unsqueeze(-1)
    mixed = (coef * probs).sum(0) / coef.sum(0).clamp_min(1e-12)
    return mixed.clamp_min(1e-12).log()
