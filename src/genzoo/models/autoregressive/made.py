"""``made``: Masked Autoencoder for Distribution Estimation (Germain et al., 2015).

An MLP whose weights are masked (:func:`genzoo.nn.masked.made_masks`) so that its output block d depends on
x_1 .. x_{d-1} only gives every conditional of

    log p(x) = sum_d log p(x_d | x_<d)

in one pass. The order is raster order with channels inside a pixel for images (as ``pixelcnn``), the coordinate
order for vectors. Each conditional is

* images with L discrete levels: a categorical over the levels (one logit, a Bernoulli, for binary data) or a
  discretized logistic mixture (``output``; the heads of :mod:`genzoo.models.autoregressive.pixels`): an exact
  probability of the levels;
* vectors: a mixture of K Gaussians in standardised units z = (x - mean) / std,
  p(z_d | z_<d) = sum_k pi_k N(z_d; mu_k, s_k^2), with log s soft-floored at -7 (no collapsing component). The
  density is carried to data units by ``preprocess_log_det`` = -sum_d log std_d.

Sampling draws x_1, then x_2 given it, ...: D passes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import ConfigError
from genzoo.models.autoregressive.pixels import (
    Output,
    adamw,
    draw_levels,
    from_levels,
    make_head,
    to_levels,
)
from genzoo.nn.discrete import soft_floor
from genzoo.nn.masked import MADENet
from genzoo.registry import register
from genzoo.searchspace import Choice, IntRange, LogUniform, Param, Uniform


class MADEConfig(ModelConfig):
    hidden: int = Field(256, ge=1, description="units per hidden layer")
    layers: int = Field(2, ge=1, description="hidden layers")
    mixtures: int = Field(10, ge=1, description="components per dimension: Gaussians (vectors) or logistics "
                          "(images with output=logistic_mixture)")
    output: Output = Field("auto", description="images: categorical over the levels, logistic_mixture, or auto "
                           "(categorical up to 8 levels, logistic_mixture above)")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer while training")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on weight matrices")


class MADESampling(SampleOptions):
    temperature: float = Field(1.0, gt=0, description="Sharpens (< 1) or flattens (> 1) every conditional: levels "
                               "from p^(1/T) renormalised (images), Gaussian scales times T (vectors)")


def gaussian_mixture_log_prob(params: Tensor, z: Tensor) -> Tensor:
    """log sum_k pi_k N(z; mu_k, s_k^2) for params (B, 3K, ...) = [logits, mu, log s] and z (B, ...)."""
    logits, mean, log_scale = params.chunk(3, dim=1)
    log_scale = soft_floor(log_scale, -7.0)
    log_normal = -0.5 * ((z.unsqueeze(1) - mean) * torch.exp(-log_scale)) ** 2 - log_scale - 0.5 * math.log(2 * math.pi)
    return torch.logsumexp(F.log_softmax(logits, 1) + log_normal, dim=1)


@register
class MADE(GenerativeModel):
    """MADE: a masked MLP giving an exact autoregressive likelihood of images (discrete levels) or vectors."""

    name = "made"
    quick_steps = 500
    family = "autoregressive"
    Config = MADEConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(3e-4, 1e-2), "hidden": Choice(128, 256, 512), "layers": IntRange(1, 3),
        "dropout": Uniform(0.0, 0.3), "weight_decay": Uniform(0.0, 0.1),
    }
    SampleOptions = MADESampling
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD})
    validation_metric = "val_bpd"
    smoke_config: ClassVar[dict[str, Any]] = {"hidden": 16, "layers": 1, "mixtures": 2}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 128, "eval_every": 100}
    config: MADEConfig

    def __init__(self, config: MADEConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        self.head = None
        if data.kind is DataKind.IMAGE:
            if not data.levels:
                raise ConfigError("model 'made' models images with discrete levels; this image data is continuous "
                                  "(no levels)")
            self.head = make_head(config.output, data.levels, config.mixtures)
        params = self.head.params if self.head else 3 * config.mixtures
        self.net = MADENet(data.dims, [config.hidden] * config.layers, params, config.dropout)

    # ----- ordering ------------------------------------------------------------------------------------------------
    def to_sequence(self, x: Tensor) -> Tensor:
        """(B, *shape) -> (B, D) in the model's order: images (C, H, W) by pixel, channels inside a pixel."""
        return x.permute(0, 2, 3, 1).flatten(1) if self.data.kind is DataKind.IMAGE else x

    def from_sequence(self, s: Tensor) -> Tensor:
        """(B, D) in the model's order -> (B, *shape): the inverse of :meth:`to_sequence`."""
        if self.data.kind is DataKind.IMAGE:
            c, h, w = self.data.shape
            return s.reshape(len(s), h, w, c).permute(0, 3, 1, 2)
        return s

    def forward(self, z: Tensor) -> Tensor:
        """(B, D) sequence in network units -> (B, P, D) parameters of each conditional."""
        return self.net(z).transpose(1, 2)

    # ----- likelihood and training ---------------------------------------------------------------------------------
    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) per example in nats, in data units (probabilities of the levels for images)."""
        s = self.to_sequence(x)
        if self.head is not None:
            ids = to_levels(s, self.data.levels)
            return self.head.log_prob(self(self.preprocess(from_levels(ids, self.data.levels))), ids).sum(1)
        z = self.preprocess(s)
        return gaussian_mixture_log_prob(self(z), z).sum(1) + self.preprocess_log_det()

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = -self.log_prob(batch.x).mean() / self.data.dims
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_bpd": -self.log_prob(batch.x).mean().item() / (self.data.dims * math.log(2.0))}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        with eval_mode(self):
            values = self.log_prob(x.to(self.device))
        return LogLikelihood(values, "exact", discrete=self.head is not None, method="MADE autoregressive")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": adamw(self, self.config.lr, self.config.weight_decay)}

    # ----- sampling ------------------------------------------------------------------------------------------------
    def _draw_gaussian(self, params: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
        """One z per row of (B, 3K) mixture parameters: a component k ~ pi, then mu_k + T s_k eps."""
        logits, mean, log_scale = params.chunk(3, dim=1)
        k = torch.multinomial(F.softmax(logits, 1).cpu(), 1, generator=generator).to(params.device)
        scale = soft_floor(log_scale, -7.0).exp().gather(1, k).squeeze(1)
        return mean.gather(1, k).squeeze(1) + temperature * scale * self.randn(len(params), generator=generator)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: MADESampling) -> Tensor:
        z = torch.zeros(n, self.data.dims, device=self.device)
        ids = torch.zeros(n, self.data.dims, dtype=torch.long, device=self.device)
        for d in range(self.data.dims):
            params = self(z)[:, :, d]
            if self.head is not None:
                ids[:, d] = draw_levels(self.head.level_log_probs(params), options.temperature, generator)
                z[:, d] = self.preprocess(from_levels(ids[:, d], self.data.levels))
            else:
                z[:, d] = self._draw_gaussian(params, options.temperature, generator)
        s = from_levels(ids, self.data.levels) if self.head is not None else self.postprocess(z)
        return self.from_sequence(s)

    def cost(self, **options: Any) -> Cost:
        """One pass per dimension."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=self.data.dims)
