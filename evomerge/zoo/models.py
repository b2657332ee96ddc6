"""Built-in architectures as ``LayeredNet``: an ordered dict of layers run one after another.

Every layer's output is a stitch point. Shapes of the activations:
MLP ``(B, H)``; CNN conv layers ``(B, C, L)`` (1-D) or ``(B, C, H, W)`` (2-D), then ``fc`` ``(B, H)``;
transformer ``embed``/``block*`` ``(B, T, D)``, ``pool`` ``(B, D)``. The last layer is always ``head``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from evomerge.errors import unknown_name
from evomerge.registry import Registry

INPUT_SHAPES: dict[str, tuple[int, ...]] = {"mnist1d": (1, 40), "digits": (1, 8, 8)}


class LayeredNet(nn.Module):
    """A network that is a sequence of named layers; ``forward_to``/``forward_from`` cut it anywhere."""

    def __init__(self, layers: dict[str, nn.Module], arch: str, input_shape: tuple[int, ...]):
        super().__init__()
        self.layers = nn.ModuleDict(layers)
        self.arch = arch
        self.input_shape = tuple(input_shape)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers.keys())

    def _index(self, name: str) -> int:
        names = self.layer_names
        if name not in names:
            raise unknown_name(f"layer of {self.arch}", name, names)
        return names.index(name)

    def forward_to(self, x: torch.Tensor, name: str) -> torch.Tensor:
        """The output of layer ``name`` for input ``x``."""
        stop = self._index(name)
        for i, layer in enumerate(self.layers.values()):
            x = layer(x)
            if i == stop:
                return x
        raise AssertionError("unreachable")

    def forward_from(self, h: torch.Tensor, name: str) -> torch.Tensor:
        """Run the layers after ``name`` on ``h`` (an output of layer ``name``)."""
        start = self._index(name)
        for layer in list(self.layers.values())[start + 1 :]:
            h = layer(h)
        return h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x


class PatchEmbed(nn.Module):
    """Split the input into non-overlapping patches, project each to ``dim``, add learned positions."""

    def __init__(self, input_shape: tuple[int, ...], patch: int, dim: int):
        super().__init__()
        spatial = input_shape[1:]
        self.patch = patch
        self.ndim = len(spatial)
        tokens = math.prod(s // patch for s in spatial)
        self.proj = nn.Linear(input_shape[0] * patch**self.ndim, dim)
        self.pos = nn.Parameter(torch.zeros(1, tokens, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch
        if self.ndim == 1:  # (B, C, L) -> (B, L/p, C*p)
            b, c, length = x.shape
            x = x.reshape(b, c, length // p, p).permute(0, 2, 1, 3).reshape(b, length // p, c * p)
        else:  # (B, C, H, W) -> (B, HW/p^2, C*p*p)
            b, c, h, w = x.shape
            x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // p) * (w // p), c * p * p)
        return self.proj(x) + self.pos


class MeanPool(nn.Module):
    """LayerNorm then mean over tokens: ``(B, T, D) -> (B, D)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x).mean(dim=1)


ARCHITECTURES: Registry[Callable[[tuple[int, ...], int, int], LayeredNet]] = Registry("architecture")


@ARCHITECTURES.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int, width: int = 0) -> LayeredNet:
    """Three hidden ReLU layers (100 wide on MNIST-1D as in Greydanus 2020, 64 on digits)."""
    h = width or (100 if input_shape == INPUT_SHAPES["mnist1d"] else 64)
    d = math.prod(input_shape)
    layers = {
        "fc1": nn.Sequential(nn.Flatten(), nn.Linear(d, h), nn.ReLU()),
        "fc2": nn.Sequential(nn.Linear(h, h), nn.ReLU()),
        "fc3": nn.Sequential(nn.Linear(h, h), nn.ReLU()),
        "head": nn.Linear(h, num_classes),
    }
    return LayeredNet(layers, "mlp", input_shape)


@ARCHITECTURES.register("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int, width: int = 0) -> LayeredNet:
    """Three strided conv layers, a hidden linear layer, a head (1-D or 2-D by the input)."""
    c = width or 32
    one_d = len(input_shape) == 2
    conv = nn.Conv1d if one_d else nn.Conv2d
    first = 5 if one_d else 3
    convs = {
        "conv1": nn.Sequential(conv(input_shape[0], c, first, stride=2 if one_d else 1, padding=first // 2), nn.ReLU()),
        "conv2": nn.Sequential(conv(c, c, 3, stride=2, padding=1), nn.ReLU()),
        "conv3": nn.Sequential(conv(c, c, 3, stride=2, padding=1), nn.ReLU()),
    }
    with torch.no_grad():  # flattened size of conv3's output, by a dry run
        flat = nn.Sequential(*convs.values())(torch.zeros(1, *input_shape)).numel()
    layers = {
        **convs,
        "fc": nn.Sequential(nn.Flatten(), nn.Linear(flat, 64), nn.ReLU()),
        "head": nn.Linear(64, num_classes),
    }
    return LayeredNet(layers, "cnn", input_shape)


@ARCHITECTURES.register("transformer")
def transformer(input_shape: tuple[int, ...], num_classes: int, width: int = 0) -> LayeredNet:
    """Patch tokens, two pre-LN encoder blocks (4 heads), mean pooling, a head."""
    d = width or 32
    patch = 4 if len(input_shape) == 2 else 2

    def block() -> nn.Module:
        return nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, dropout=0.0, batch_first=True, norm_first=True)

    layers = {
        "embed": PatchEmbed(input_shape, patch, d),
        "block1": block(),
        "block2": block(),
        "pool": MeanPool(d),
        "head": nn.Linear(d, num_classes),
    }
    return LayeredNet(layers, "transformer", input_shape)


def build_model(arch: str, dataset: str, num_classes: int, seed: int, width: int = 0) -> LayeredNet:
    """A freshly initialized built-in model, its weights fixed by ``seed``."""
    if dataset not in INPUT_SHAPES:
        raise unknown_name("dataset", dataset, INPUT_SHAPES)
    builder = ARCHITECTURES.get(arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return builder(INPUT_SHAPES[dataset], num_classes, width)
