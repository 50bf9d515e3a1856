"""What the flows share (:class:`FlowModel`): the pre-transform, the likelihood, dequantized training.

A flow is a bijection z = f(x) onto a standard normal latent, so the likelihood is exact by the change of
variables:

    log p(x) = log N(f(x); 0, I) + log |det df/dx|.

f starts with a fixed map into the space the network works in: images in [lo, hi] (the data's range [0, 1] widened
by half a level, where dequantized values live) go through a logit transform, p = alpha + (1 - 2 alpha)
(x - lo) / (hi - lo), y = logit(p); vectors are standardised. Its log-determinant is part of log|det df/dx|, so
``log_likelihood`` is a density in data units.

Discrete images (L levels on the grid k / (L - 1)) are dequantized: training and validation evaluate the density at
x + u / (L - 1), u ~ U(-1/2, 1/2)^D, and report

    bits/dim = -(log p(x + u / (L - 1)) - D log(L - 1)) / (D log 2),

an upper bound on -log2 P(x) / D for the probability of the levels (Theis et al., 2016): exactly what ``genzoo eval``
reports from ``log_likelihood``, so the best checkpoint is chosen by the reported number.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    ExportModule,
    ExportSpec,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import GenzooError
from genzoo.metrics import dequantize, to_discrete
from genzoo.nn.flow import (
    AffineCoupling,
    FlowLayer,
    LogitTransform,
    Shape,
    Squeezed,
    conv_conditioner,
    mlp_conditioner,
)


class FlowConfig(ModelConfig):
    hidden: int = Field(48, ge=1, description="channels of the image coupling networks")
    depth: int = Field(0, ge=0, description="1x1 convolutions between the two 3x3 ones of an image coupling network")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside the image coupling networks")
    mlp_width: int = Field(64, ge=1, description="hidden units of the vector coupling networks")
    mlp_depth: int = Field(2, ge=1, description="hidden layers of the vector coupling networks")
    scale_bound: float = Field(3.0, gt=0, description="bound c of every log-scale, s = c tanh(raw / c): no layer "
                               "scales by more than e^c (guards against overflow)")
    logit_alpha: float = Field(0.05, gt=0.0, lt=0.5, description="images: margin alpha of the logit transform")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0.0, description="AdamW (decoupled) weight decay")


#: 1,347 digits overfit within a few hundred steps: averaged weights (EMA) hold the held-out bits/dim down
FLOW_TRAIN_DEFAULTS: dict[str, Any] = {"batch_size": 64, "warmup_steps": 100, "ema_decay": 0.999}


class FlowSampleOptions(SampleOptions):
    temperature: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="standard deviation T of the latent, "
                               "z ~ N(0, T^2 I): below 1 gives cleaner, less varied samples; 0 gives the mode of z")


class FlowModel(GenerativeModel):
    """What the flows share: the pre-transform, the likelihood in genzoo's convention, dequantized training,
    sampling with a temperature, encode/decode and interpolation in z. A subclass builds the flow
    (:meth:`build_flow`) from the image or vector shape."""

    family = "flow"
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.ENCODE,
                                   Capability.DECODE, Capability.INTERPOLATE})
    SampleOptions = FlowSampleOptions
    validation_metric = "val_bpd"
    config: FlowConfig

    def __init__(self, config: FlowConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        is_image = data.kind is DataKind.IMAGE
        #: discrete levels of image data (dequantized); None for vectors and continuous images
        self.levels = data.levels if is_image else None
        half_level = 0.5 / (self.levels - 1) if self.levels else 0.0
        self.logit = LogitTransform(-half_level, 1.0 + half_level, config.logit_alpha) if is_image else None
        self.flow = self.build_flow()

    def build_flow(self) -> FlowLayer:
        """The flow from network units (B, *data.shape) to z (B, D)."""
        raise NotImplementedError

    def coupling(self, mask: Tensor, shape: Shape, squeezed: bool = False) -> AffineCoupling:
        """An affine coupling with this model's networks: conv for images (shape (C, H, W)), run on the squeezed
        image when ``squeezed``; an MLP for vectors."""
        cfg = self.config
        if len(shape) == 1:
            return AffineCoupling(mask, mlp_conditioner(shape[0], cfg.mlp_width, cfg.mlp_depth), cfg.scale_bound)
        channels = 4 * shape[0] if squeezed else shape[0]
        net = conv_conditioner(channels, 2 * channels, cfg.hidden, cfg.depth, cfg.dropout)
        return AffineCoupling(mask, Squeezed(net) if squeezed else net, cfg.scale_bound)

    # ----- the bijection and the density ---------------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x in data units -> (z (B, D), log|det dz/dx| per example)."""
        if self.logit is not None:
            y, log_det = self.logit(x)
        else:
            y, log_det = self.preprocess(x), self.preprocess_log_det()
        z, flow_log_det = self.flow(y)
        return z, flow_log_det + log_det

    def inverse(self, z: Tensor) -> Tensor:
        """z (B, D) -> x in data units (continuous: not snapped to the data's levels)."""
        y = self.flow.inverse(z)
        return self.logit.inverse(y) if self.logit is not None else self.postprocess(y)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = log N(f(x); 0, I) + log|det df/dx| per example, a density in data units."""
        z, log_det = self(x)
        return -0.5 * (z.square() + math.log(2 * math.pi)).sum(1) + log_det

    def dequantized(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """x + u / (L - 1), u ~ U(-1/2, 1/2), for discrete images (a uniform draw from each value's bin)."""
        return dequantize(x, self.levels, generator) if self.levels else x

    def bits_per_dim(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Per-example NLL in bits/dim in ``genzoo eval``'s convention: discrete images dequantized with
        ``generator`` and scored as probabilities of their levels; other data by their density."""
        ll = LogLikelihood(self.log_prob(self.dequantized(x, generator)), "exact", discrete=False, method=self.name)
        return to_discrete(ll, self.data.dims, self.levels, dequantized=True).bits_per_dim(self.data.dims)

    def _checked(self, x: Tensor) -> Tensor:
        """x on the model's device; images must lie where the logit transform is defined."""
        if self.logit is not None and (x.min() < self.logit.lo or x.max() > self.logit.hi):
            raise GenzooError(f"{self.name}: image values must lie in [0, 1] (dequantized: in [{self.logit.lo:.4g}, "
                              f"{self.logit.hi:.4g}]), got values from {float(x.min()):.4g} to {float(x.max()):.4g}")
        return x.to(self.device)

    # ----- training ------------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {"model": torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)}

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        """Maximum likelihood on a freshly dequantized batch (the trainer seeds the global generator)."""
        loss = self.bits_per_dim(batch.x, torch.default_generator).mean()
        optim.step("model", loss)
        return {"bpd": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_bpd": self.bits_per_dim(batch.x, generator).mean().item()}

    # ----- capabilities --------------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """The exact density at ``x`` in data units (``genzoo eval`` dequantizes discrete images before calling)."""
        x = self._checked(x)
        with eval_mode(self):
            return LogLikelihood(self.log_prob(x), "exact", discrete=False, method=f"{self.name} change of variables")

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None,
                options: FlowSampleOptions) -> Tensor:
        """z ~ N(0, T^2 I), x = f^-1(z) on the data's levels."""
        return self.decode(options.temperature * self.randn(n, self.data.dims, generator=generator))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """z = f(x): (B, D), standard normal under the model."""
        x = self._checked(x)
        with eval_mode(self):
            return self(x)[0]

    def inverse_clamped(self, z: Tensor) -> Tensor:
        """x = f^-1(z) in data units, continuous; images clamped to [0, 1]."""
        x = self.inverse(z).reshape(len(z), *self.data.shape)
        return x if self.logit is None else x.clamp(0.0, 1.0)  # vectors: their own scale

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """x = f^-1(z) in data units; images clamped to [0, 1] and rounded to the data's levels."""
        with eval_mode(self):
            x = self.inverse_clamped(z.to(self.device))
        if self.logit is None or not self.levels:
            return x
        return (x * (self.levels - 1)).round() / (self.levels - 1)

    def export_module(self, batch: int, context: int | None = None) -> ExportSpec:
        """The inverse flow z (batch, D) -> x in data units, continuous (``sample`` also snaps images to the levels)."""
        return ExportSpec(ExportModule(self, self.inverse_clamped), {"z": torch.zeros(batch, self.data.dims)}, "x",
                          "z ~ N(0, T^2 I); x = module(z) in data units, continuous: round images to the data's "
                          "levels", noise=("z",))

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, n: int = 8) -> Tensor:
        """Decode ``n`` points on the straight line between f(a) and f(b): (n, *shape)."""
        z = self.encode(torch.stack([a, b]))
        t = torch.linspace(0, 1, n, device=z.device).unsqueeze(1)
        return self.decode((1 - t) * z[:1] + t * z[1:])

    def cost(self, **options: Any) -> Cost:
        """One inverse pass of the flow per sample, whatever the temperature."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=1)
