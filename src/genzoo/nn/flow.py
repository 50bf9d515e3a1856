"""Normalizing-flow layers (Dinh et al., 2017, "Real NVP"; Kingma & Dhariwal, 2018, "Glow").

A flow is a bijection f from data to a latent z with a standard normal base, so by the change of variables

    log p(x) = log N(f(x); 0, I) + log |det df/dx|.

Every layer here is a :class:`FlowLayer`: ``forward(x) -> (y, log|det dy/dx|)`` with one log-determinant per
example, and ``inverse(y) -> x``. Layers act on images ``(B, C, H, W)`` or vectors ``(B, D)``; the per-example
shape of their input is what they are built for. Composition (:class:`FlowSequential`) adds log-determinants.

* :class:`AffineCoupling`: y = m x + (1 - m) (x exp(s(m x)) + t(m x)) for a binary mask m (checkerboard, channel
  halves or alternating vector entries). Its log-scale is soft-clamped, s = c tanh(raw / c), so that no coupling
  can scale by more than e^c: the guard against overflow (and NaN) in both directions.
* :class:`Squeeze`: (C, H, W) -> (4C, H/2, W/2), each 2x2 block into channels; volume-preserving.
* :class:`ActNorm`: a per-channel affine map whose data-dependent initialisation (inside
  :func:`data_dependent_init`) gives zero-mean, unit-variance outputs on a first batch.
* :class:`InvConv1x1`: an invertible 1x1 convolution (a linear map of the channels) in LU form.
* :class:`LogitTransform`: a bounded range squeezed into (alpha, 1 - alpha), then logit.
* :class:`MultiScale`: levels of layers with half of the channels factored out after each but the last; with a
  learned prior (Glow) the factored-out half is standardised by a Gaussian conditioned on the kept half.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genzoo.nn.conv import mlp

Shape = tuple[int, ...]


class FlowLayer(nn.Module):
    """An invertible map with a tractable log-determinant."""

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x -> (y, log|det dy/dx| per example, shape (B,))."""
        raise NotImplementedError

    def inverse(self, y: Tensor) -> Tensor:
        """y -> x."""
        raise NotImplementedError

    def output_shape(self, shape: Shape) -> Shape:
        """Per-example shape of the output for an input of per-example ``shape`` (most layers keep it)."""
        return shape


class FlowSequential(FlowLayer):
    """f_K o ... o f_1: log-determinants add up; the inverse runs the layers backwards."""

    def __init__(self, layers: Iterable[FlowLayer]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(len(x))
        for layer in self.layers:
            x, log_det = layer(x)
            total = total + log_det
        return x, total

    def inverse(self, y: Tensor) -> Tensor:
        for layer in reversed(self.layers):
            y = layer.inverse(y)
        return y

    def output_shape(self, shape: Shape) -> Shape:
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape


def soft_clamp(raw: Tensor, bound: float) -> Tensor:
    """bound * tanh(raw / bound): the identity near 0, never beyond +-bound."""
    return bound * torch.tanh(raw / bound)


def _per_example_sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


# ----- masks: 1 = kept (conditions the coupling), 0 = transformed ---------------------------------------------------
def checkerboard_mask(shape: Shape, parity: int) -> Tensor:
    """(1, 1, H, W): 1 where (row + column) % 2 == parity, for images of per-example ``shape`` (C, H, W)."""
    _, height, width = shape
    rows, cols = torch.arange(height).view(-1, 1), torch.arange(width).view(1, -1)
    return ((rows + cols) % 2 == parity).float().view(1, 1, height, width)


def channel_mask(shape: Shape, parity: int) -> Tensor:
    """1 on the first half of the channels (parity 0) or the second (parity 1): (1, C, 1, 1) for images of
    per-example shape (C, H, W), (1, D) for vectors of shape (D,)."""
    channels = shape[0]
    first = (torch.arange(channels) < channels // 2).float()
    mask = first if parity == 0 else 1.0 - first
    return mask.view(1, channels, *[1] * (len(shape) - 1))


def alternating_mask(dims: int, parity: int) -> Tensor:
    """(1, D): 1 on the entries whose index % 2 == parity (vector data)."""
    return (torch.arange(dims) % 2 == parity).float().view(1, dims)


# ----- coupling networks s(.), t(.) ---------------------------------------------------------------------------------
def _zero_last(net: nn.Sequential) -> nn.Sequential:
    """Zero the last layer: the coupling (or prior) starts as the identity (standard normal), a stable start."""
    nn.init.zeros_(net[-1].weight)
    nn.init.zeros_(net[-1].bias)
    return net


def conv_conditioner(channels: int, out_channels: int, hidden: int, depth: int, dropout: float) -> nn.Sequential:
    """(B, channels, H, W) -> (B, out_channels, H, W) as in Glow: a 3x3 conv, ``depth`` 1x1 convs (cheap: the
    3x3 convs already see the neighbourhood), a zeroed 3x3 conv; ReLU and dropout between them."""
    layers: list[nn.Module] = [nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(inplace=True),
                               nn.Dropout(dropout)]
    for _ in range(depth):
        layers += [nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True), nn.Dropout(dropout)]
    return _zero_last(nn.Sequential(*layers, nn.Conv2d(hidden, out_channels, 3, padding=1)))


def mlp_conditioner(dims: int, hidden: int, depth: int) -> nn.Sequential:
    """(B, D) -> (B, 2D): an MLP with ``depth`` hidden layers and a zeroed output layer."""
    return _zero_last(mlp(dims, [hidden] * depth, 2 * dims, act=nn.ReLU))


# ----- layers ---------------------------------------------------------------------------------------------------------
class AffineCoupling(FlowLayer):
    """y = m x + (1 - m) (x exp(s) + t), (s, t) = net(m x) (Dinh et al., 2017, eq. 9); log|det| = sum (1 - m) s.

    ``net`` maps the masked input to 2x its channels (s first, then t); s = c tanh(raw / c) with c =
    ``scale_bound``. Convolutions see the kept values only through ``m x``: a checkerboard is the same pattern
    around every transformed pixel, so they need no positional input.
    """

    def __init__(self, mask: Tensor, net: nn.Module, scale_bound: float) -> None:
        super().__init__()
        self.register_buffer("mask", mask, persistent=False)  # rebuilt from the architecture, not saved
        self.net = net
        self.scale_bound = scale_bound

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        raw, shift = self.net(kept).chunk(2, dim=1)
        free = 1.0 - self.mask
        return soft_clamp(raw, self.scale_bound) * free, shift * free

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self._scale_shift(x * self.mask)
        return x * s.exp() + t, _per_example_sum(s)

    def inverse(self, y: Tensor) -> Tensor:
        s, t = self._scale_shift(y * self.mask)  # the kept part passes unchanged: y m = x m
        return (y - t) * (-s).exp()


class Squeeze(FlowLayer):
    """(C, H, W) -> (4C, H/2, W/2): output channel 4c + 2i + j holds x[c, i::2, j::2] (Dinh et al., 2017, fig. 3)."""

    @staticmethod
    def squeeze(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        return x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(b, 4 * c, h // 2, w // 2)

    @staticmethod
    def unsqueeze(y: Tensor) -> Tensor:
        b, c4, h, w = y.shape
        return y.view(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, 2 * h, 2 * w)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.squeeze(x), x.new_zeros(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return self.unsqueeze(y)

    def output_shape(self, shape: Shape) -> Shape:
        c, h, w = shape
        return (4 * c, h // 2, w // 2)


class Squeezed(nn.Module):
    """``net`` applied at half the resolution: squeeze its input, unsqueeze its output. The same receptive field
    on a quarter of the positions: how the checkerboard couplings keep their convolutions cheap."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return Squeeze.unsqueeze(self.net(Squeeze.squeeze(x)))


def _channel_view(shape: Shape) -> Shape:
    """Shape of a per-channel parameter broadcast over a batch of per-example ``shape``: (1, C, 1, 1) or (1, D)."""
    return (1, shape[0], *[1] * (len(shape) - 1))


class ActNorm(FlowLayer):
    """y = (x + b) exp(log_scale) per channel (Kingma & Dhariwal, 2018, sec. 3.1); log|det| = H W sum log_scale.

    Within :func:`data_dependent_init` the layer first sets b = -mean and log_scale = -log std of the batch it sees
    (per channel, over the batch and positions), so that its output has zero mean and unit variance. The values
    live in the parameters: saved with them, never recomputed on load or resume. The std is floored at
    ``min_std`` so that a constant channel cannot give a huge scale.
    """

    def __init__(self, shape: Shape, min_std: float = 1e-3) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(_channel_view(shape)))
        self.log_scale = nn.Parameter(torch.zeros(_channel_view(shape)))
        self.positions = math.prod(shape[1:])
        self.min_std = min_std
        self.initialising = False

    @torch.no_grad()
    def initialise(self, x: Tensor) -> None:
        dims = [d for d in range(x.dim()) if d != 1]
        self.bias.copy_(-x.mean(dims, keepdim=True))
        self.log_scale.copy_(-x.std(dims, keepdim=True).clamp_min(self.min_std).log())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if self.initialising:
            self.initialise(x)
        log_det = self.positions * self.log_scale.sum()
        return (x + self.bias) * self.log_scale.exp(), log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return y * (-self.log_scale).exp() - self.bias


@contextmanager
def data_dependent_init(module: nn.Module) -> Iterator[None]:
    """Inside the block, each :class:`ActNorm` of ``module`` initialises itself from the input it sees: run one
    forward pass of a batch to initialise them in order, each on the output of the layers before it."""
    norms = [m for m in module.modules() if isinstance(m, ActNorm)]
    for norm in norms:
        norm.initialising = True
    try:
        yield
    finally:
        for norm in norms:
            norm.initialising = False


class InvConv1x1(FlowLayer):
    """y = W x at every position (Kingma & Dhariwal, 2018, sec. 3.2), W = P L (U + diag(sign(s) exp(log|s|))).

    P is a fixed permutation, L unit lower-triangular, U strictly upper-triangular; W starts as a random rotation.
    log|det W| = sum log|s|, counted once per position (H W times for images, once for vectors).
    """

    def __init__(self, shape: Shape) -> None:
        super().__init__()
        channels = shape[0]
        rotation = torch.linalg.qr(torch.randn(channels, channels))[0]
        perm, lower, upper = torch.linalg.lu(rotation)
        diagonal = upper.diagonal()
        self.register_buffer("perm", perm)  # random at construction: saved with the weights
        self.register_buffer("sign", diagonal.sign())
        self.register_buffer("eye", torch.eye(channels), persistent=False)
        self.lower = nn.Parameter(lower.tril(-1))
        self.upper = nn.Parameter(upper.triu(1))
        self.log_s = nn.Parameter(diagonal.abs().log())
        self.positions = math.prod(shape[1:])

    def weight(self) -> Tensor:
        lower = self.lower.tril(-1) + self.eye
        upper = self.upper.triu(1) + torch.diag(self.sign * self.log_s.exp())
        return self.perm @ lower @ upper

    @staticmethod
    def _mix(matrix: Tensor, x: Tensor) -> Tensor:
        return torch.einsum("ij,bj...->bi...", matrix, x)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        log_det = self.positions * self.log_s.sum()
        return self._mix(self.weight(), x), log_det.expand(len(x))

    def inverse(self, y: Tensor) -> Tensor:
        return self._mix(torch.linalg.inv(self.weight()), y)


class LogitTransform(FlowLayer):
    """Values in [lo, hi] -> R: p = alpha + (1 - 2 alpha) (x - lo) / (hi - lo), y = log p - log(1 - p)
    (Dinh et al., 2017, sec. 4.1). alpha keeps [lo, hi] away from the logit's poles;
    log|dy/dx| = log((1 - 2 alpha) / (hi - lo)) - log p - log(1 - p) per value."""

    def __init__(self, lo: float, hi: float, alpha: float) -> None:
        super().__init__()
        self.lo, self.hi, self.alpha = lo, hi, alpha
        self.log_slope = math.log((1 - 2 * alpha) / (hi - lo))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self.alpha + (1 - 2 * self.alpha) * (x - self.lo) / (self.hi - self.lo)
        y = p.log() - (-p).log1p()
        # -log p - log(1 - p) = softplus(-y) + softplus(y), stable at both ends
        return y, _per_example_sum(self.log_slope + F.softplus(-y) + F.softplus(y))

    def inverse(self, y: Tensor) -> Tensor:
        return (torch.sigmoid(y) - self.alpha) / (1 - 2 * self.alpha) * (self.hi - self.lo) + self.lo


class GaussianPrior(nn.Module):
    """The learned prior of a factored-out half (Glow's split): z ~ N(mu(h), sigma(h)^2) given the kept half h,
    as the map to a standard normal eps = (z - mu) / sigma; log|det| = -sum log sigma, log sigma soft-clamped."""

    def __init__(self, kept: int, out: int, hidden: int, scale_bound: float) -> None:
        super().__init__()
        self.net = conv_conditioner(kept, 2 * out, hidden, 0, 0.0)
        self.scale_bound = scale_bound

    def _stats(self, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, raw = self.net(h).chunk(2, dim=1)
        return mean, soft_clamp(raw, self.scale_bound)

    def forward(self, z: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_sigma = self._stats(h)
        return (z - mean) * (-log_sigma).exp(), -_per_example_sum(log_sigma)

    def inverse(self, eps: Tensor, h: Tensor) -> Tensor:
        mean, log_sigma = self._stats(h)
        return mean + eps * log_sigma.exp()


class MultiScale(FlowLayer):
    """Multi-scale architecture (Dinh et al., 2017, sec. 3.6): x (B, C, H, W) -> z (B, C H W).

    ``levels[i]`` maps its input; after every level but the last, the second half of its output channels is
    factored out (a part of z from then on) and only the first half goes on. With ``learned_prior`` (Glow, sec.
    3.3) the factored-out half is standardised by a :class:`GaussianPrior` given the kept half. z lists the
    factored-out parts in order, then the last level's output, each flattened.
    """

    def __init__(self, levels: list[FlowLayer], shape: Shape, learned_prior: bool = False, hidden: int = 32,
                 scale_bound: float = 3.0) -> None:
        super().__init__()
        self.levels = nn.ModuleList(levels)
        self.factored: list[Shape] = []  # per-example shapes of the factored-out parts
        kept: list[int] = []
        for level in levels[:-1]:
            c, h, w = level.output_shape(shape)
            self.factored.append((c // 2, h, w))
            kept.append(c - c // 2)
            shape = (kept[-1], h, w)
        self.final = levels[-1].output_shape(shape)
        self.priors = nn.ModuleList(GaussianPrior(k, f[0], hidden, scale_bound)
                                    for k, f in zip(kept, self.factored, strict=True)) if learned_prior else None
        self.dims = sum(math.prod(s) for s in [*self.factored, self.final])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        parts, total = [], x.new_zeros(len(x))
        for i, level in enumerate(self.levels):
            x, log_det = level(x)
            total = total + log_det
            if i < len(self.factored):
                x, out = x.split([x.shape[1] - self.factored[i][0], self.factored[i][0]], dim=1)
                if self.priors is not None:
                    out, log_det = self.priors[i](out, x)
                    total = total + log_det
                parts.append(out.flatten(1))
        return torch.cat([*parts, x.flatten(1)], dim=1), total

    def inverse(self, y: Tensor) -> Tensor:
        sizes = [math.prod(s) for s in [*self.factored, self.final]]
        pieces = y.split(sizes, dim=1)
        x = pieces[-1].reshape(len(y), *self.final)
        for i in reversed(range(len(self.levels))):
            if i < len(self.factored):
                out = pieces[i].reshape(len(y), *self.factored[i])
                if self.priors is not None:
                    out = self.priors[i].inverse(out, x)
                x = torch.cat([x, out], dim=1)
            x = self.levels[i].inverse(x)
        return x

    def output_shape(self, shape: Shape) -> Shape:
        return (self.dims,)
