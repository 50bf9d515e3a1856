"""Convolutional encoders and decoders for any image shape from 8x8 to 64x64 (square or not, 1 or 3 channels).

Both halve/double the resolution with stride-2 4x4 convolutions while the side is even and stays >= 4, so
8x8 -> 4x4, 28x28 -> 7x7, 64x64 -> 4x4. The channel width doubles at each level up to ``8 * width``.
"""

from __future__ import annotations

import itertools
from typing import Literal

from torch import Tensor, nn

Norm = Literal["batch", "group", "none"]


def resolution_levels(height: int, width: int) -> int:
    """How many times both sides can be halved while even and at least 4 afterwards."""
    levels = 0
    while height % 2 == 0 and width % 2 == 0 and height // 2 >= 4 and width // 2 >= 4:
        height, width, levels = height // 2, width // 2, levels + 1
    return levels


def _norm(kind: Norm, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()


def _widths(width: int, levels: int) -> list[int]:
    return [width * min(2**i, 8) for i in range(levels + 1)]


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> (B, out_features). ``norm_first=False`` skips the norm after the first conv (DCGAN's D)."""

    def __init__(self, shape: tuple[int, ...], out_features: int, width: int = 32, norm: Norm = "batch",
                 norm_first: bool = True, act: type[nn.Module] = nn.LeakyReLU) -> None:
        super().__init__()
        channels, height, wide = shape
        levels = resolution_levels(height, wide)
        widths = _widths(width, levels)
        layers: list[nn.Module] = [nn.Conv2d(channels, widths[0], 3, padding=1),
                                   _norm(norm if norm_first else "none", widths[0]), _activation(act)]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1), _norm(norm, c_out), _activation(act)]
        self.features = nn.Sequential(*layers)
        flat = widths[-1] * (height >> levels) * (wide >> levels)
        self.head = nn.Linear(flat, out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


class ConvDecoder(nn.Module):
    """(B, in_features) -> (B, out_channels, H, W), mirroring :class:`ConvEncoder`."""

    def __init__(self, in_features: int, shape: tuple[int, ...], out_channels: int, width: int = 32,
                 norm: Norm = "batch", act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        _, height, wide = shape
        levels = resolution_levels(height, wide)
        widths = _widths(width, levels)[::-1]
        self.base = (widths[0], height >> levels, wide >> levels)
        self.project = nn.Sequential(nn.Linear(in_features, widths[0] * self.base[1] * self.base[2]))
        layers: list[nn.Module] = [_norm(norm, widths[0]), _activation(act)]
        for c_in, c_out in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1), _norm(norm, c_out), _activation(act)]
        layers.append(nn.Conv2d(widths[-1], out_channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(self.project(z).view(len(z), *self.base))


def _activation(act: type[nn.Module]) -> nn.Module:
    return act(0.2) if act is nn.LeakyReLU else act()


def mlp(in_features: int, hidden: list[int], out_features: int, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """A plain multilayer perceptron: Linear -> act for each hidden width, then a final Linear."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_features, width), _activation(act)]
        in_features = width
    layers.append(nn.Linear(in_features, out_features))
    return nn.Sequential(*layers)
