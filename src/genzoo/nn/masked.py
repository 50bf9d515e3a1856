"""Masked layers of autoregressive models: PixelCNN's masked convolutions, the gated PixelCNN's vertical and
horizontal stacks, and MADE's masked linear layers.

Raster order over an image (C, H, W): pixel (i, j) comes after every pixel of the rows above it and every pixel to
its left in its row, and inside a pixel the channels come in order (R -> G -> B). A convolution keeps that order
by zeroing weights: at the current pixel, a layer's channels are split into C groups (channel k belongs to group
k mod C, so the two halves of a gated layer with a multiple of C channels keep the same groups) and output group g
reads input group h only if h < g (mask type A: the first layer, which must not see the value it predicts) or
h <= g (type B: later layers, whose group g already only carries information from before sub-pixel g).

MADE (Germain et al., 2015) does the same for a vector in the order x_1 .. x_D: each unit gets a degree m, inputs
m(x_d) = d, hidden units m in 1 .. D-1, and a weight from a unit of degree m' to a hidden unit of degree m is kept
if m >= m', to an output of degree d if d > m'; output d then depends on x_<d only.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def channel_groups(channels: int, colors: int) -> Tensor:
    """The colour group of each channel: k mod ``colors``."""
    return torch.arange(channels) % colors


def centre_mask(in_channels: int, out_channels: int, colors: int, mask_type: str) -> Tensor:
    """(out, in) connections at the current pixel: group h -> group g if h < g (type 'A') or h <= g ('B')."""
    if mask_type not in ("A", "B"):
        raise ValueError(f"mask type must be 'A' or 'B', got '{mask_type}'")
    g_in = channel_groups(in_channels, colors)[None, :]
    g_out = channel_groups(out_channels, colors)[:, None]
    return (g_in < g_out if mask_type == "A" else g_in <= g_out).float()


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel sees, around the output pixel at kernel position ``centre`` = (ci, cj), the rows
    above it, the pixels left of it in its row, and the pixel itself through :func:`centre_mask`.

    Padding puts the centre on the output pixel, so the output has the input's size. PixelCNN uses a k x k kernel
    centred at (k//2, k//2); the gated PixelCNN's horizontal stack a 1 x (k//2 + 1) kernel whose last column is the
    current pixel; a 1 x 1 kernel is a pure channel mask.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], centre: tuple[int, int],
                 mask_type: str, colors: int) -> None:
        super().__init__(in_channels, out_channels, kernel)
        (kh, kw), (ci, cj) = kernel, centre
        self.pad = (cj, kw - 1 - cj, ci, kh - 1 - ci)  # left, right, top, bottom
        mask = torch.zeros(out_channels, in_channels, kh, kw)
        mask[:, :, :ci, :] = 1.0  # rows above
        mask[:, :, ci, :cj] = 1.0  # left in the current row
        mask[:, :, ci, cj] = centre_mask(in_channels, out_channels, colors, mask_type)
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.pad), self.weight * self.mask, self.bias)


def shift_down(x: Tensor) -> Tensor:
    """Move features one row down (row 0 gets zeros): what row i reads then comes from rows < i only."""
    return F.pad(x, (0, 0, 1, 0))[:, :, :-1]


def gate(x: Tensor) -> Tensor:
    """Gated activation tanh(a) * sigmoid(b) of the two channel halves [a, b]."""
    a, b = x.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One layer of the gated PixelCNN (van den Oord et al., 2016, "Conditional Image Generation with PixelCNN
    Decoders", fig. 2), without the blind spot of stacked masked convolutions:

        vertical:   v' = gate(V * v),                       V a (k//2 + 1) x k kernel over rows <= i
        horizontal: h' = h + W_1x1 gate(H * h + U shift_down(V * v)),   H a 1 x (k//2 + 1) kernel, masked

    The vertical stack sees whole rows up to the current one (including pixels to the right), which is only safe
    once shifted down a row before it feeds the horizontal stack; the horizontal stack sees the current row up to
    the current pixel, masked by colour group. Together they cover every earlier pixel in the receptive field. The
    first layer reads the image (type A, no residual); later layers are type B with a residual connection.
    """

    def __init__(self, in_channels: int, channels: int, kernel: int, colors: int, first: bool,
                 dropout: float = 0.0) -> None:
        super().__init__()
        half = kernel // 2
        self.v_pad = (half, half, half, 0)  # rows i - k//2 .. i, columns j - k//2 .. j + k//2
        self.vertical = nn.Conv2d(in_channels, 2 * channels, (half + 1, kernel))
        self.horizontal = MaskedConv2d(in_channels, 2 * channels, (1, half + 1), (0, half), "A" if first else "B",
                                       colors)
        self.v_to_h = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.h_out = MaskedConv2d(channels, channels, (1, 1), (0, 0), "B", colors)
        self.drop = nn.Dropout(dropout)
        self.residual = not first

    def forward(self, v: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        v_features = self.vertical(F.pad(v, self.v_pad))
        h_features = self.horizontal(h) + self.v_to_h(shift_down(v_features))
        h_new = self.h_out(self.drop(gate(h_features)))
        return gate(v_features), h + h_new if self.residual else h_new


# ----- MADE -------------------------------------------------------------------------------------------------------
def made_masks(dims: int, hidden: list[int], outputs_per_dim: int) -> list[Tensor]:
    """The (out, in) masks of an MLP dims -> hidden... -> dims * outputs_per_dim whose output block d (rows
    d * outputs_per_dim ...) depends on inputs x_<d only. Hidden degrees cycle through 1 .. D-1 (deterministic,
    so a rebuilt model has the same masks)."""
    degrees = [torch.arange(1, dims + 1)]
    degrees += [torch.arange(n) % max(dims - 1, 1) + 1 for n in hidden]
    masks = [(d_out[:, None] >= d_in[None, :]).float() for d_in, d_out in itertools.pairwise(degrees)]
    out_degrees = torch.arange(1, dims + 1).repeat_interleave(outputs_per_dim)
    masks.append((out_degrees[:, None] > degrees[-1][None, :]).float())
    return masks


class MaskedLinear(nn.Linear):
    """A linear layer with a fixed (out, in) connectivity mask."""

    def __init__(self, mask: Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADENet(nn.Module):
    """MADE's masked MLP: (B, D) -> (B, D, outputs_per_dim), output d a function of x_<d only."""

    def __init__(self, dims: int, hidden: list[int], outputs_per_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dims, self.outputs_per_dim = dims, outputs_per_dim
        *hidden_masks, out_mask = made_masks(dims, hidden, outputs_per_dim)
        layers: list[nn.Module] = []
        for mask in hidden_masks:
            layers += [MaskedLinear(mask), nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.out = MaskedLinear(out_mask)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.body(x)).view(len(x), self.dims, self.outputs_per_dim)
