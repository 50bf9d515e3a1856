"""Glow (Kingma & Dhariwal, 2018): a flow of steps ActNorm -> invertible 1x1 convolution -> affine coupling.

One step of flow (sec. 3):

* ActNorm: y = (x + b) exp(log_scale) per channel; b and log_scale are set from the first training batch
  (``setup``) so that every ActNorm's output has zero mean and unit variance there, then trained as usual;
* invertible 1x1 convolution in LU form, W = P L (U + diag(sign(s) exp(log|s|))): a learned mixing of the channels
  (a generalised permutation) with log|det| = H W sum log|s|;
* affine coupling on the channel halves, y_b = x_b exp(s(x_a)) + t(x_a), log-scale soft-clamped
  s = c tanh(raw / c).

Images: ``levels`` levels of [squeeze, ``steps`` steps]; after each but the last, half of the channels are factored
out with a learned prior N(mu(h), sigma(h)^2) given the kept half h (standardised into the latent, so z stays
standard normal). Vectors: ``vector_steps`` steps on the whole vector. Sampling draws z ~ N(0, T^2 I) with a
temperature T (sec. 5). Likelihood, dequantization and the pre-transform are the shared ones (:mod:`.realnvp`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field

from genzoo.contract import Batch, DataKind
from genzoo.errors import ConfigError
from genzoo.models.flow.base import FLOW_TRAIN_DEFAULTS, FlowConfig, FlowModel
from genzoo.nn.flow import (
    ActNorm,
    FlowLayer,
    FlowSequential,
    InvConv1x1,
    MultiScale,
    Shape,
    Squeeze,
    channel_mask,
    data_dependent_init,
)
from genzoo.registry import register


class GlowConfig(FlowConfig):
    levels: int = Field(2, ge=1, description="images: levels of squeeze, steps and split")
    steps: int = Field(4, ge=1, description="images: steps of flow per level")
    vector_steps: int = Field(8, ge=1, description="vectors: steps of flow")
    learned_prior: bool = Field(True, description="images: factored-out halves get a Gaussian prior conditioned "
                                "on the kept half (else standard normal)")


@register
class Glow(FlowModel):
    """Glow: ActNorm with data-dependent initialisation, invertible 1x1 convolutions, affine couplings,
    multi-scale with learned priors, sampling temperature."""

    name = "glow"
    quick_steps = 800
    Config = GlowConfig
    smoke_config: ClassVar[dict[str, Any]] = {"hidden": 8, "mlp_width": 8, "steps": 2, "vector_steps": 2}
    train_defaults: ClassVar[dict[str, Any]] = FLOW_TRAIN_DEFAULTS
    config: GlowConfig

    def step_of_flow(self, shape: Shape) -> FlowSequential:
        """ActNorm -> invertible 1x1 convolution -> affine coupling of the second channel half given the first."""
        return FlowSequential([ActNorm(shape), InvConv1x1(shape), self.coupling(channel_mask(shape, 0), shape)])

    def build_flow(self) -> FlowLayer:
        cfg = self.config
        if self.data.kind is DataKind.VECTOR:
            return FlowSequential(self.step_of_flow((self.data.dims,)) for _ in range(cfg.vector_steps))
        channels, height, width = self.data.shape
        factor = 2**cfg.levels
        if height % factor or width % factor:
            raise ConfigError(f"glow with levels={cfg.levels} squeezes {cfg.levels} times: image sides must be "
                              f"divisible by {factor}, got {height}x{width}: use fewer levels (--set levels=...) "
                              "or resize the images")
        shape: Shape = (channels, height, width)
        levels = []
        for _ in range(cfg.levels):
            shape = Squeeze().output_shape(shape)
            levels.append(FlowSequential([Squeeze(), *(self.step_of_flow(shape) for _ in range(cfg.steps))]))
            shape = (shape[0] - shape[0] // 2, *shape[1:])  # the kept half goes on to the next level
        return MultiScale(levels, self.data.shape, cfg.learned_prior, cfg.hidden, cfg.scale_bound)

    def setup(self, first_batch: Batch) -> None:
        """Data-dependent ActNorm initialisation: one forward pass of the (dequantized) first batch."""
        with data_dependent_init(self):
            self(self.dequantized(first_batch.x, torch.default_generator))
