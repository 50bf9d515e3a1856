"""Energy-based model trained by contrastive divergence with short-run Langevin chains and a replay buffer
(Du & Mordatch, 2019, "IGEBM"; Grathwohl et al., 2020, "JEM").

An energy network E_theta(x) (a conv net for images, an MLP for vectors; Swish or LeakyReLU, optional spectral
norm) defines p_theta(x) ~ exp(-E_theta(x) / T). Negative samples come from the unadjusted Langevin (SGLD) update

    x <- x - a * dE/dx + b * xi,    xi ~ N(0, I),

run for K steps in network units (images in [-1, 1], vectors standardised), clamped to the data's box after each
step. With a = b^2 / 2 this samples exp(-E) as a -> 0 (the default on vectors); on images, like IGEBM and JEM, step
``a`` and noise ``b`` are decoupled (a large step, a small noise: a low temperature T = b^2 / (2a)), which
contrastive divergence then calibrates. Discrete data are dequantized within their level bins before use as
positives, so the grid alone cannot tell data from chains.

Chains start from a replay buffer of past negatives with probability 1 - ``reinit_prob``, else from fresh noise,
and are written back after their K steps (persistent chains that keep mixing across training steps). The loss

    L = E(x+) - E(x-) + alpha * (E(x+)^2 + E(x-)^2)

lowers the energy of data x+ and raises that of the (detached) negatives x-; the alpha term keeps energies near 0.

There is no tractable likelihood: ``score(x)`` is the energy, an unnormalised anomaly score (higher = more unusual).
Validation compares fixed-seed samples (the default sampling options) with held-out data by the squared MMD, as for
the GANs: the CD loss itself is ~0 whenever the chains keep up with the model and says nothing about sample quality.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    Capability,
    DataInfo,
    DataKind,
    GenerativeModel,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import ConfigError
from genzoo.metrics.likelihood import dequantize
from genzoo.metrics.mmd import generator_validation
from genzoo.nn import ConvEncoder, mlp
from genzoo.registry import register

#: default SGLD (step a, noise b) per data kind. Images: IGEBM/JEM's large step and small noise (T = 5e-5; CD
#: calibrates the energy to it). Vectors: true Langevin, a = b^2 / 2 (T = 1), which spreads samples over the
#: density where a low temperature piles them on the energy's minima (a ring for toy:8gaussians)
LANGEVIN_DEFAULTS = {DataKind.IMAGE: (1.0, 0.01), DataKind.VECTOR: (0.01, math.sqrt(0.02))}
#: the box chains live in, in network units: images are [-1, 1]; standardised vectors get +-6 standard deviations,
#: far outside any data yet a bound on a chain pushed away by a badly shaped energy
IMAGE_BOX = (-1.0, 1.0)
VECTOR_BOX = (-6.0, 6.0)


class EBMConfig(ModelConfig):
    width: int = Field(32, ge=1, description="conv base channels of the energy network (images)")
    hidden: int = Field(128, ge=1, description="MLP hidden units of the energy network (vectors)")
    depth: int = Field(3, ge=1, description="MLP hidden layers of the energy network (vectors)")
    activation: Literal["swish", "leaky_relu"] = Field("swish", description="nonlinearity of the energy network")
    spectral_norm: bool = Field(False, description="spectral normalisation of every layer (a smoother energy)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    alpha: float = Field(0.1, ge=0, description="weight of the energy regulariser E(x+)^2 + E(x-)^2")
    langevin_steps: int = Field(20, ge=1, description="SGLD steps per training iteration (K)")
    step_size: float | None = Field(None, gt=0, description="SGLD step a in x <- x - a dE/dx + b xi, network units "
                                                            "(default: 1 on images, 0.01 on vectors)")
    noise: float | None = Field(None, ge=0, description="SGLD noise standard deviation b, network units (default: "
                                                        "0.01 on images, sqrt(2 * 0.01) on vectors)")
    dequantize: bool = Field(True, description="spread discrete data uniformly over their level bins before use "
                                               "as positives (else the grid alone tells data from chains)")
    buffer_size: int = Field(10_000, ge=1, description="replay buffer of past negative samples")
    reinit_prob: float = Field(0.05, ge=0, le=1, description="probability a chain starts from fresh noise")


class EBMSampleOptions(SampleOptions):
    init: Literal["buffer", "noise"] = Field("buffer", description="start chains from the replay buffer or from "
                                                                   "fresh noise")
    steps: int | None = Field(None, ge=0, description="Langevin steps (default: the training chain length "
                                                      "langevin_steps)")
    step_size: float | None = Field(None, gt=0, description="Langevin step a (default: the training value)")
    noise: float | None = Field(None, ge=0, description="Langevin noise standard deviation b (default: the "
                                                        "training value)")


def langevin(energy: Callable[[Tensor], Tensor], x: Tensor, steps: int, step_size: float, noise: float,
             generator: torch.Generator | None = None, box: tuple[float, float] | None = None) -> Tensor:
    """``steps`` unadjusted Langevin updates x <- clamp(x - a dE/dx + b xi) from ``x``; returns detached samples.

    The noise xi is drawn on the CPU from ``generator`` (None: the global generator, which the trainer seeds and
    restores on resume). dE/dx needs autograd whatever the caller's grad mode (sampling, validation)."""
    x = x.detach()
    for _ in range(steps):
        with torch.enable_grad():
            x.requires_grad_(True)
            grad = torch.autograd.grad(energy(x).sum(), x)[0]
        xi = torch.randn(x.shape, generator=generator).to(x.device)
        x = x.detach() - step_size * grad + noise * xi
        if box is not None:
            x = x.clamp(*box)
    return x


def energy_network(data: DataInfo, config: EBMConfig) -> nn.Module:
    """x (B, *shape) in network units -> E(x) (B,)."""
    act = nn.SiLU if config.activation == "swish" else nn.LeakyReLU
    if data.kind is DataKind.IMAGE:
        body: nn.Module = ConvEncoder(data.shape, 1, width=config.width, norm="none", act=act)
    else:
        body = mlp(data.dims, [config.hidden] * config.depth, 1, act=act)
    if config.spectral_norm:
        for module in body.modules():
            if isinstance(module, nn.Conv2d | nn.Linear):
                nn.utils.parametrizations.spectral_norm(module)
    return nn.Sequential(body, nn.Flatten(0))


@register
class EBM(GenerativeModel):
    """Neural energy E_theta(x), contrastive divergence with persistent short-run Langevin chains."""

    name = "ebm"
    quick_steps = 600
    family = "energy"
    Config = EBMConfig
    SampleOptions = EBMSampleOptions
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.ANOMALY_SCORE})
    validation_metric = "val_mmd"
    sampling_needs_grad = True
    validation_needs_grad = True
    score_name: ClassVar[str] = "energy"
    smoke_config: ClassVar[dict[str, Any]] = {"width": 8, "hidden": 32, "depth": 2, "buffer_size": 64,
                                              "langevin_steps": 5, "lr": 1e-2}
    smoke_overfit_steps: ClassVar[int] = 150
    smoke_sample_options: ClassVar[dict[str, Any]] = {"steps": 5}

    config: EBMConfig

    def __init__(self, config: EBMConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        self.energy_net = energy_network(data, config)
        self.box = IMAGE_BOX if data.kind is DataKind.IMAGE else VECTOR_BOX
        step_size, noise = LANGEVIN_DEFAULTS[data.kind]
        self.step_size = step_size if config.step_size is None else config.step_size
        self.noise = noise if config.noise is None else config.noise
        # persistent: the chains are part of the model's state (saved, restored on resume, sampled from)
        self.register_buffer("replay", self.noise_like(config.buffer_size))

    def noise_like(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """Fresh chain starts in network units: uniform on [-1, 1] for images, N(0, I) for standardised vectors."""
        shape = (n, *self.data.shape)
        if self.data.kind is DataKind.IMAGE:
            return (2.0 * torch.rand(shape, generator=generator) - 1.0).to(self.device)
        return torch.randn(shape, generator=generator).to(self.device)

    def energy(self, z: Tensor) -> Tensor:
        """E_theta per example, of inputs in network units."""
        return self.energy_net(z)

    def chains(self, start: Tensor, steps: int, step_size: float, noise: float,
               generator: torch.Generator | None) -> Tensor:
        """Langevin chains of this model's energy from ``start`` (network units), kept in the data's box."""
        return langevin(self.energy, start, steps, step_size, noise, generator, self.box)

    # ----- training --------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        cfg = self.config
        x = batch.x
        if cfg.dequantize and self.data.levels:
            x = dequantize(x, self.data.levels, None)
        positive = self.preprocess(x).clamp(*self.box)
        n = len(positive)
        if n > cfg.buffer_size:
            raise ConfigError(f"ebm: buffer_size ({cfg.buffer_size}) must be at least the batch size ({n})")
        # chain starts: distinct buffer entries, or fresh noise with probability reinit_prob (the global RNG: seeded
        # by the trainer and restored on resume)
        picks = torch.randperm(cfg.buffer_size)[:n].to(positive.device)
        fresh = (torch.rand(n) < cfg.reinit_prob).to(positive.device).view(n, *[1] * (positive.dim() - 1))
        start = torch.where(fresh, self.noise_like(n), self.replay[picks])
        negative = self.chains(start, cfg.langevin_steps, self.step_size, self.noise, None)
        self.replay[picks] = negative
        e_pos, e_neg = self.energy(positive), self.energy(negative)
        contrast = e_pos.mean() - e_neg.mean()
        loss = contrast + cfg.alpha * (e_pos.square() + e_neg.square()).mean()
        optim.step("model", loss)
        return {"loss": loss.item(), "cd": contrast.item(), "e_pos": e_pos.mean().item(),
                "e_neg": e_neg.mean().item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Squared MMD between ``len(batch)`` samples (default options, the given generator) and the batch."""
        fake = self._chains_from(len(batch), generator, self.SampleOptions())
        return generator_validation(fake, self.preprocess(batch.x))

    # ----- sampling and scoring --------------------------------------------------------------------------------
    def _chains_from(self, n: int, generator: torch.Generator, options: EBMSampleOptions) -> Tensor:
        """Run the sampling chains in network units."""
        if options.init == "buffer":
            picks = torch.randint(self.config.buffer_size, (n,), generator=generator)
            start = self.replay[picks.to(self.replay.device)]
        else:
            start = self.noise_like(n, generator)
        cfg = self.config
        steps = cfg.langevin_steps if options.steps is None else options.steps
        step_size = self.step_size if options.step_size is None else options.step_size
        noise = self.noise if options.noise is None else options.noise
        return self.chains(start, steps, step_size, noise, generator)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: EBMSampleOptions) -> Tensor:
        """Langevin chains from the buffer or noise; images clamped to [0, 1] and snapped to the level grid."""
        x = self.postprocess(self._chains_from(n, generator, options))
        if self.data.kind is DataKind.IMAGE and self.data.levels:
            x = (x * (self.data.levels - 1)).round() / (self.data.levels - 1)
        return x

    def score(self, x: Tensor) -> Tensor:
        """The energy E_theta(x) per example: unnormalised, higher = less like the training data."""
        with eval_mode(self), torch.no_grad():
            return self.energy(self.preprocess(x.to(self.device)))
