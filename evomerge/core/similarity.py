"""Representation similarity: CKA (linear, RBF, debiased) and effective rank.

All functions take activations with a leading sample axis; any further axes (conv maps
``(n, C, L)``, token sequences ``(n, T, D)``) are flattened to ``(n, features)``.
Computations run in float64 and return Python floats.

References: Kornblith et al. 2019, "Similarity of Neural Network Representations Revisited"
(CKA, feature form of linear CKA, RBF kernel with a median-distance bandwidth); Song et al. 2012,
"Feature Selection via Dependence Maximization" (unbiased HSIC); Nguyen et al. 2021, "Do Wide
and Deep Networks Learn the Same Things?" (debiased CKA); Roy & Vetterli 2007, "The effective
rank: a measure of effective dimensionality".
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from evomerge.registry import Registry


def as_features(x: Tensor) -> Tensor:
    """``(n, *shape) -> (n, prod(shape))`` in float64."""
    return x.reshape(x.shape[0], -1).to(torch.float64)


def _centred(x: Tensor) -> Tensor:
    x = as_features(x)
    return x - x.mean(dim=0, keepdim=True)


def _check_pair(x: Tensor, y: Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA needs the same samples on both sides: {x.shape[0]} vs {y.shape[0]} rows")


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 else 0.0


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA in feature form: ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``.

    ``Xc``, ``Yc`` are column-centred. Memory is O(n·d + d_x·d_y), never an n×n Gram matrix
    (Kornblith et al. 2019, eq. 5).
    """
    _check_pair(x, y)
    xc, yc = _centred(x), _centred(y)
    num = torch.linalg.matrix_norm(yc.T @ xc) ** 2
    den = torch.linalg.matrix_norm(xc.T @ xc) * torch.linalg.matrix_norm(yc.T @ yc)
    return _ratio(float(num), float(den))


def rbf_gram(x: Tensor, sigma_frac: float = 0.5) -> Tensor:
    """RBF Gram matrix ``exp(-||xi-xj||² / (2σ²))`` with σ = ``sigma_frac`` × median pairwise distance."""
    f = as_features(x)
    d2 = torch.cdist(f, f).pow(2)
    off = d2[~torch.eye(len(f), dtype=torch.bool)]
    med = off.sqrt().median() if off.numel() else torch.tensor(1.0, dtype=f.dtype)
    sigma = sigma_frac * float(med) if float(med) > 0 else 1.0
    return torch.exp(-d2 / (2 * sigma**2))


def _centre_gram(k: Tensor) -> Tensor:
    """``H K H`` with ``H = I - 11^T/n``."""
    return k - k.mean(dim=0, keepdim=True) - k.mean(dim=1, keepdim=True) + k.mean()


def gram_cka(k: Tensor, l: Tensor) -> float:
    """CKA of two Gram matrices with the biased HSIC ``tr(KHLH)`` (Kornblith et al. 2019, eq. 4)."""
    kc, lc = _centre_gram(k), _centre_gram(l)
    num = (kc * lc).sum()
    den = torch.linalg.matrix_norm(kc) * torch.linalg.matrix_norm(lc)
    return _ratio(float(num), float(den))


def rbf_cka(x: Tensor, y: Tensor, sigma_frac: float = 0.5) -> float:
    """CKA with RBF kernels, bandwidth a fraction of the median distance (Kornblith et al. 2019, §4)."""
    _check_pair(x, y)
    return gram_cka(rbf_gram(x, sigma_frac), rbf_gram(y, sigma_frac))


def hsic_unbiased(k: Tensor, l: Tensor) -> float:
    """Unbiased HSIC of two Gram matrices (Song et al. 2012, eq. 5), needs n >= 4.

    With ``K~``, ``L~`` the Grams with zeroed diagonals:
    ``[tr(K~L~) + 1ᵀK~1 · 1ᵀL~1 / ((n-1)(n-2)) - 2/(n-2) · 1ᵀK~L~1] / (n(n-3))``.
    """
    n = k.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
    kt = k - torch.diag(torch.diagonal(k))
    lt = l - torch.diag(torch.diagonal(l))
    k1, l1 = kt.sum(dim=1), lt.sum(dim=1)
    val = (kt * lt).sum() + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k1 @ l1)
    return float(val / (n * (n - 3)))


def _linear_hsic_unbiased(x: Tensor, y: Tensor) -> float:
    """:func:`hsic_unbiased` for linear kernels ``K = XXᵀ``, ``L = YYᵀ`` in O(n·d) memory.

    Uses ``tr(K~L~) = ||YᵀX||_F² - Σ k_ii l_ii`` and ``K~1 = X(Xᵀ1) - diag(K)``.
    """
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples, got {n}")
    kd, ld = (x * x).sum(dim=1), (y * y).sum(dim=1)
    k1 = x @ x.sum(dim=0) - kd
    l1 = y @ y.sum(dim=0) - ld
    tr = torch.linalg.matrix_norm(y.T @ x) ** 2 - (kd * ld).sum()
    val = tr + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2 / (n - 2) * (k1 @ l1)
    return float(val / (n * (n - 3)))


def debiased_cka(x: Tensor, y: Tensor, kernel: str = "linear", sigma_frac: float = 0.5) -> float:
    """CKA from unbiased HSIC estimates (Nguyen et al. 2021, §3.1); ``kernel`` is ``linear`` or ``rbf``.

    The linear kernel runs in feature form (no n×n matrices). Small or negative HSIC estimates
    are possible for unrelated features; the value is returned as is.
    """
    _check_pair(x, y)
    if kernel == "linear":
        # Centring does not change the unbiased estimator; it improves float conditioning.
        xf, yf = _centred(x), _centred(y)
        hxy, hxx, hyy = _linear_hsic_unbiased(xf, yf), _linear_hsic_unbiased(xf, xf), _linear_hsic_unbiased(yf, yf)
    elif kernel == "rbf":
        k, l = rbf_gram(x, sigma_frac), rbf_gram(y, sigma_frac)
        hxy, hxx, hyy = hsic_unbiased(k, l), hsic_unbiased(k, k), hsic_unbiased(l, l)
    else:
        raise ValueError(f"kernel must be 'linear' or 'rbf', got {kernel!r}")
    den = math.sqrt(hxx * hyy) if hxx > 0 and hyy > 0 else 0.0
    return _ratio(hxy, den)


def effective_rank(x: Tensor) -> float:
    """Effective rank ``exp(H(p))``, ``p = σ / Σσ`` over the singular values of the centred features.

    Roy & Vetterli 2007, def. 1. Ranges from 1 (one direction) to ``min(n, d)`` (flat spectrum).
    """
    s = torch.linalg.svdvals(_centred(x))
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


CKA_MEASURES: Registry[Callable[[Tensor, Tensor], float]] = Registry("similarity measure")
CKA_MEASURES.register("linear")(linear_cka)
CKA_MEASURES.register("rbf")(rbf_cka)
CKA_MEASURES.register("debiased")(debiased_cka)
