"""A small nonlinear stitcher trained on the regression loss with a complexity penalty."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from evomerge.core.align.base import Aligner, Rows, linear_core, register
from evomerge.core.align.ridge import ridge_map


class ResidualMLP(nn.Module):
    """``x ↦ x W + g(x)`` with ``g = Linear ∘ ReLU ∘ Linear``; ``g``'s output layer starts at zero."""

    def __init__(self, linear: nn.Linear, hidden: int, generator: torch.Generator):
        super().__init__()
        f_in, f_out = linear.in_features, linear.out_features
        self.linear = linear
        self.branch = nn.Sequential(nn.Linear(f_in, hidden), nn.ReLU(), nn.Linear(hidden, f_out))
        with torch.no_grad():
            bound = f_in**-0.5
            self.branch[0].weight.uniform_(-bound, bound, generator=generator)
            self.branch[0].bias.zero_()
            self.branch[2].weight.zero_()
            self.branch[2].bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.branch(x)


@register("mlp")
class MLPStitcher(Aligner):
    """Minimize ``Σ_i w_i ||f(a_i) - b_i||² + λ Ω(f)`` (seed 001, Alg. 3 step d) by Adam.

    ``f`` is :class:`ResidualMLP` started from the ridge solution, so training only adds
    nonlinearity where it lowers the loss; ``Ω`` is the squared Frobenius norm of the nonlinear
    branch's weights. Initialization and mini-batch order come from ``seed``.
    """

    def __init__(
        self,
        hidden: int = 64,
        epochs: int = 30,
        lr: float = 1e-3,
        batch_size: int = 256,
        penalty: float = 1e-4,
        alpha: float = 1e-4,
        center: str = "condition",
        seed: int = 0,
    ):
        super().__init__(center, seed)
        if hidden < 1 or epochs < 0 or batch_size < 1 or penalty < 0:
            raise ValueError("need hidden >= 1, epochs >= 0, batch_size >= 1, penalty >= 0")
        self.hidden, self.epochs, self.lr, self.batch_size, self.penalty, self.alpha = (
            hidden, epochs, lr, batch_size, penalty, alpha
        )

    def fit_core(self, rows: Rows) -> nn.Module:
        a, b, w = rows.stacked()
        g = torch.Generator().manual_seed(self.seed)
        net = ResidualMLP(linear_core(ridge_map(a, b, w, self.alpha)), self.hidden, g)
        a, b, w = a.float(), b.float(), (w * len(w)).float()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr)
        weights = [net.branch[0].weight, net.branch[2].weight]
        for _ in range(self.epochs):
            for idx in torch.randperm(len(a), generator=g).split(self.batch_size):
                err = (net(a[idx]) - b[idx]).pow(2).sum(dim=1)
                loss = (w[idx] * err).mean() + self.penalty * sum(p.pow(2).sum() for p in weights)
                opt.zero_grad()
                loss.backward()
                opt.step()
        return net.requires_grad_(True)
