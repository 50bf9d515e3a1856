"""Style-based generator layers (StyleGAN2, Karras et al., 2020): equalised learning rate, a mapping network,
modulated convolutions with weight demodulation, and per-layer noise inputs.

Equalised learning rate: weights are stored as N(0, 1) / lr_mul and scaled by lr_mul / sqrt(fan_in) at run time,
so every layer learns at the same speed under Adam and ``lr_mul`` slows a layer down (the mapping network: 0.01).

Modulation and demodulation: a style s (per input channel, an affine map of w) scales the convolution weight,
w'_oik = s_i w_oik, and demodulation rescales each output channel to unit L2 norm,

    w''_oik = w'_oik / sqrt(sum_ik w'_oik^2 + eps),

so that for inputs of unit variance (independent across channels and taps) every output channel has unit
variance again: the style changes what a layer computes, not the scale of its activations.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: gain that keeps activations at unit scale after a leaky ReLU (slope 0.2), as in StyleGAN
LRELU_GAIN = math.sqrt(2.0)


def scaled_lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU (slope 0.2) times sqrt(2): unit second moment in, about unit out."""
    return F.leaky_relu(x, 0.2) * LRELU_GAIN


class EqualLinear(nn.Module):
    """y = x W^T (lr_mul / sqrt(in)) + b lr_mul, weights stored at N(0, 1) / lr_mul (equalised learning rate)."""

    def __init__(self, in_features: int, out_features: int, bias_init: float = 0.0, lr_mul: float = 1.0) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_features,), bias_init / lr_mul))
        self.scale = lr_mul / math.sqrt(in_features)
        self.lr_mul = lr_mul

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class EqualConv2d(nn.Module):
    """A same-padded convolution with equalised learning rate (weights N(0, 1), scaled by 1 / sqrt(fan_in))."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1.0 / math.sqrt(in_channels * kernel * kernel)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.weight.shape[-1] // 2)


def pixel_norm(z: Tensor, eps: float = 1e-8) -> Tensor:
    """z / sqrt(mean(z^2)) per example: the latent on the sphere of radius sqrt(dim)."""
    return z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + eps)


class MappingNetwork(nn.Module):
    """z -> w: pixel norm, then ``layers`` fully connected layers with scaled leaky ReLUs (learning rate x lr_mul)."""

    def __init__(self, z_dim: int, w_dim: int, layers: int, lr_mul: float = 0.01) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.layers = nn.ModuleList(EqualLinear(a, b, lr_mul=lr_mul) for a, b in itertools.pairwise(dims))

    def forward(self, z: Tensor) -> Tensor:
        x = pixel_norm(z)
        for layer in self.layers:
            x = scaled_lrelu(layer(x))
        return x


def demodulation(weight: Tensor, styles: Tensor, eps: float = 1e-8) -> Tensor:
    """1 / sqrt(sum_ik (s_i w_oik)^2 + eps) per example and output channel (B, out), for ``weight`` (out, in, k, k)
    and ``styles`` (B, in)."""
    return torch.rsqrt(styles.square() @ weight.square().sum(dim=(2, 3)).T + eps)


class ModulatedConv2d(nn.Module):
    """A same-padded convolution whose weights are modulated per example by a style s = A(w) (bias 1 at
    initialisation: identity modulation) and demodulated.

    Computed as StyleGAN2's unfused form: scaling the input channels by s, convolving with the shared weight and
    scaling the output channels by the demodulation is the same linear map as the per-example weights, and one
    ordinary convolution is much faster on a CPU than a grouped one over the batch."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, w_dim: int, demodulate: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.affine = EqualLinear(w_dim, in_channels, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_channels * kernel * kernel)
        self.demodulate = demodulate

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        styles = self.affine(w)
        weight = self.weight * self.scale
        out = F.conv2d(x * styles[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            out = out * demodulation(weight, styles)[:, :, None, None]
        return out


def draw_noise(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """N(0, 1) noise: from ``generator`` on the CPU (same numbers on every device) or, without one, from the
    global generator on ``device`` (training, which the trainer seeds)."""
    if generator is None:
        return torch.randn(shape, device=device)
    return torch.randn(shape, generator=generator).to(device)


class StyleLayer(nn.Module):
    """One synthesis layer: modulated 3x3 convolution, noise B * strength (one learned strength per channel,
    zero at initialisation), bias, scaled leaky ReLU."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, w_dim)
        self.noise_strength = nn.Parameter(torch.zeros(out_channels))
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        """``noise`` (B, 1, H, W) is shared by the channels, each scaling it by its own strength."""
        x = self.conv(x, w) + self.noise_strength.view(1, -1, 1, 1) * noise
        return scaled_lrelu(x + self.bias.view(1, -1, 1, 1))


class ToRGB(nn.Module):
    """Features -> image channels: a modulated 1x1 convolution without demodulation, plus a bias."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias.view(1, -1, 1, 1)


def upsample2(x: Tensor) -> Tensor:
    """Bilinear doubling of the spatial size."""
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
