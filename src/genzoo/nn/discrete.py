"""Distributions over a data's discrete levels, shared by the models that output them (VAE decoders, PixelCNNs,
the diffusion model's decoder).

Levels k = 0 .. L-1 of data in [0, 1] sit at c_k = 2k/(L-1) - 1 in network units ([-1, 1]); each owns the bin
[c_k - 1/(L-1), c_k + 1/(L-1)], the first and last bins open to -inf and +inf.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.special import log_ndtr


def soft_floor(x: Tensor, floor: float) -> Tensor:
    """floor + softplus(x - floor): x above the floor, smoothly (a log-scale that cannot reach -inf)."""
    return floor + F.softplus(x - floor)


def discretized_logistic_log_prob(k: Tensor, mean: Tensor, log_scale: Tensor, levels: int) -> Tensor:
    """log P(level k) under a logistic(mean, exp(log_scale)) on [-1, 1] cut into ``levels`` bins (Salimans et al.,
    2017): log(sigma(u) - sigma(l)) with u, l the bin's edges in units of the scale.

    Written as log sigma(u) + log(1 - sigma(l) / sigma(u)), and in the right tail as the mirror sigma(-l) - sigma(-u),
    so that neither term rounds to 1: exact for bins far from the mean, where a plain difference underflows."""
    half = 1.0 / (levels - 1)
    centre = 2.0 * half * k - 1.0
    inv_s = torch.exp(-log_scale)
    upper = torch.where(k == levels - 1, math.inf, inv_s * (centre + half - mean))
    lower = torch.where(k == 0, -math.inf, inv_s * (centre - half - mean))
    flip = lower > 0
    hi, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    return F.logsigmoid(hi) + torch.log(-torch.expm1(F.logsigmoid(lo) - F.logsigmoid(hi)))


def discretized_gaussian_log_prob(k: Tensor, mean: Tensor, std: Tensor, levels: int) -> Tensor:
    """log P(level k) under a Gaussian N(mean, std^2) on [-1, 1] cut into ``levels`` bins (Ho et al., 2020):
    log(Phi(u) - Phi(l)) with u, l the bin's edges in units of std; the same tail-safe form as the logistic's."""
    half = 1.0 / (levels - 1)
    centre = 2.0 * half * k - 1.0
    upper = torch.where(k == levels - 1, math.inf, (centre + half - mean) / std)
    lower = torch.where(k == 0, -math.inf, (centre - half - mean) / std)
    flip = lower > 0
    hi, lo = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
    return log_ndtr(hi) + torch.log(-torch.expm1(log_ndtr(lo) - log_ndtr(hi)))


def level_index(x: Tensor, levels: int) -> Tensor:
    """The level k of values in network units ([-1, 1]): the nearest of the centres 2k/(L-1) - 1."""
    return ((x + 1.0) * (levels - 1) / 2.0).round().clamp(0, levels - 1)
