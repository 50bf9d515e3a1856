"""Gaussian kernel density estimate: a kernel of width h on every training example (Parzen, 1962).

    p(z) = 1/N sum_i N(z; c_i, h^2 I),   log p(z) = logsumexp_i(-|z - c_i|^2 / 2h^2) - log N - D/2 log(2 pi h^2)

in network units (images in [-1, 1], vectors standardised), carried back to data units by the preprocessing
log-det. The kernel centres c_i are the training examples (a random subset of at most ``max_points``). The width h
is chosen from a grid by the held-out likelihood of the validation split in the evaluation convention (discrete
images dequantized, probabilities of the levels), and logged. A KDE has no parameters to learn beyond h: it
remembers the data, so at small h its samples are near-copies of training examples (the arena's memorization
column shows it) and its likelihood is strong on small data and weak in high dimensions.

The centres are stored as buffers sized for ``max_points`` (unused rows have weight 0), so a run directory loads
with nothing pickled.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from pydantic import Field, PositiveFloat
from torch import Tensor

from genzoo.contract import Batch, Cost, DataInfo, ModelConfig, SampleOptions
from genzoo.models.classical.base import FittedDensity
from genzoo.registry import register


class KDEConfig(ModelConfig):
    bandwidths: list[PositiveFloat] = Field(
        [0.02, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 1.0], min_length=1,
        description="candidate kernel widths h in network units (images in [-1, 1], vectors standardised)")
    max_points: int = Field(5000, ge=1, description="most training examples kept as kernel centres (a random "
                                                    "subset of a larger training split)")


class KDESampleOptions(SampleOptions):
    temperature: float = Field(1.0, ge=0, allow_inf_nan=False,
                               description="scale of the kernel width when sampling (0 = the training examples)")


@register
class KernelDensity(FittedDensity):
    """A Gaussian kernel density estimate, its width chosen by held-out likelihood."""

    name = "kde"
    family = "classical"
    Config = KDEConfig
    SampleOptions = KDESampleOptions
    method = "Gaussian kernel density"
    smoke_config: ClassVar[dict[str, Any]] = {"bandwidths": [0.1, 0.5], "max_points": 200}
    #: rows of points scored at once against every centre (bounds the (rows, N) distance matrix)
    chunk: ClassVar[int] = 512

    def __init__(self, config: KDEConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        n, d = config.max_points, data.dims
        # before fitting: one centre at the origin with h = 1, a standard normal in network units
        self.register_buffer("weights", torch.nn.functional.one_hot(torch.tensor(0), n).float())
        self.register_buffer("centres", torch.zeros(n, d))
        self.register_buffer("bandwidth", torch.tensor(1.0))

    # ----- the density ------------------------------------------------------------------------------------------
    def kernel_log_density(self, z: Tensor, h: float) -> Tensor:
        """log p(z) with kernel width ``h``, float64, scored in chunks of rows."""
        active = self.weights > 0
        centres, log_w = self.centres[active].double(), self.weights[active].double().log()
        norm = 0.5 * self.data.dims * math.log(2 * math.pi * h * h)
        parts = [torch.logsumexp(log_w - torch.cdist(rows, centres).square() / (2 * h * h), dim=1) - norm
                 for rows in z.double().split(self.chunk)]
        return torch.cat(parts)

    def log_density(self, z: Tensor) -> Tensor:
        return self.kernel_log_density(z, float(self.bandwidth))

    # ----- fitting ----------------------------------------------------------------------------------------------
    def fit_whole_data(self, train: Batch, val: Batch, generator: torch.Generator) -> dict[str, float]:
        """Centres = the training examples; h = the grid value with the best held-out bits/dim."""
        keep = torch.randperm(len(train), generator=generator)[: self.config.max_points].sort().values
        n = len(keep)
        self.weights.zero_()
        self.weights[:n] = 1.0 / n
        self.centres.zero_()
        self.centres[:n] = self.preprocess(train.x[keep.to(train.x.device)]).reshape(n, -1)
        # one dequantization of the validation split for every candidate: the comparison is paired
        z_val = self.preprocess(self.dequantized(val.x, generator)).reshape(len(val), -1)
        scores = {h: self.bits_per_dim(self.kernel_log_density(z_val, h) + self.preprocess_log_det())
                  for h in sorted(set(self.config.bandwidths))}
        best = min(scores, key=scores.__getitem__)
        self.bandwidth.fill_(best)
        return {"bandwidth": best, "kernel_centres": float(n), "val_bpd": self.held_out_bits_per_dim(val.x, generator)}

    # ----- sampling ---------------------------------------------------------------------------------------------
    def draw(self, n: int, generator: torch.Generator, options: KDESampleOptions) -> Tensor:
        """i ~ Uniform(centres), z = c_i + temperature * h * eps."""
        index = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator).to(self.device)
        eps = self.randn(n, self.data.dims, generator=generator)
        return self.centres[index] + options.temperature * self.bandwidth * eps

    def cost(self, **options: Any) -> Cost:
        """No network: pick a centre, add scaled noise (scoring one point costs N D)."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=1, flops_per_sample=2.0 * self.data.dims)
