"""StyleGAN2 (Karras et al., 2019; 2020), sized for small images: a style-based generator against a residual
discriminator, non-saturating logistic loss with lazy R1 regularisation.

Generator. A mapping network f turns the latent z ~ N(0, I) (pixel-normalised) into an intermediate latent
w = f(z). Synthesis starts from a learned constant at the base resolution (8x8 -> 4x4, 28x28 -> 7x7, 32x32 -> 4x4:
halved while even and at least 4) and doubles it up to the data size. Each layer l is a 3x3 convolution modulated by
the style s_l = A_l(w_l) and demodulated (:mod:`genzoo.nn.style`), plus per-pixel noise B_l N(0, 1) with one learned
strength per channel, a bias and a leaky ReLU. Layers are numbered coarse to fine: layer 0 at the base resolution,
then two per doubling (upsample + conv, conv). Every resolution adds its toRGB output to the upsampled image so far
(skip generator); the toRGB of a resolution takes the style of that resolution's last layer. A final tanh maps the
sum to network units [-1, 1] (not in StyleGAN2; on small images with flat backgrounds it trains faster).

Styles per layer: w_l = w for every layer, except under style mixing, where the layers from ``mix_at`` on take the
w of a second latent. Truncation moves w towards the running mean w_avg (tracked over training, decay 0.995):
w' = w_avg + psi (w - w_avg); psi = 0 gives the mean style.

Training. D minimises the logistic loss softplus(D(G(z))) + softplus(-D(x)); every ``r1_every`` steps it adds the R1
penalty (Mescheder et al., 2018) gamma/2 E ||grad_x D(x)||^2 on real data, scaled by ``r1_every`` (lazy
regularisation). G minimises the non-saturating softplus(-D(G(z))). With probability ``mixing_prob`` a training
batch mixes two latents at a random layer (mixing regularisation), which keeps the styles of different layers
separate. The EMA averages the generator only; validation is the GAN base's (MMD and diversity, with the noise
drawn from the validation generator), and so are the training-health options (``d_acc`` logging, DiffAugment on
D's inputs -- R1 then taken on augmented reals --, TTUR through ``lr_g``/``lr_d``).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    DataInfo,
    DataKind,
    ExportModule,
    ExportSpec,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.gan.base import GAN, GANConfig
from genzoo.nn.conv import resolution_levels
from genzoo.nn.style import (
    EqualConv2d,
    EqualLinear,
    MappingNetwork,
    StyleLayer,
    ToRGB,
    draw_noise,
    scaled_lrelu,
    upsample2,
)
from genzoo.registry import register


class StyleGANConfig(GANConfig):
    width: int = Field(16, ge=1, description="channels at the finest resolution; doubling per halving, up to 4x")
    mapping_layers: int = Field(4, ge=1, description="fully connected layers of the mapping network z -> w")
    lr: float = Field(2e-3, gt=0, description="Adam learning rate of G and D (the mapping network learns 100x slower)")
    betas: tuple[float, float] = Field((0.0, 0.99), description="Adam betas of G and D")
    r1_gamma: float = Field(0.1, ge=0, description="R1 weight gamma (0: no R1)")
    r1_every: int = Field(4, ge=1, description="apply R1 every k-th discriminator step, scaled by k (lazy R1)")
    mixing_prob: float = Field(0.9, ge=0, le=1, description="probability that a training batch mixes two latents")
    w_avg_beta: float = Field(0.995, ge=0, lt=1, description="decay of the running mean of w (truncation centre)")


class StyleSampling(SampleOptions):
    truncation: float = Field(1.0, ge=0, le=1, description="psi: w = w_avg + psi (w - w_avg); 0 gives the mean "
                              "style, 1 no truncation")
    mix_seed: int | None = Field(None, ge=0, description="style mixing: a second seed whose w drives the layers "
                                 "from --mix-at on (sample i of the seed mixes with sample i of mix_seed)")
    mix_at: int | None = Field(None, ge=0, description="first layer (0 = coarsest) styled by mix_seed; None: the "
                               "middle layer")
    noise: float = Field(1.0, ge=0, description="scale of the per-layer noise inputs (0: the noise-free image)")

    @model_validator(mode="after")
    def _mix_at_needs_mix_seed(self) -> StyleSampling:
        if self.mix_at is not None and self.mix_seed is None:
            raise ValueError("mix_at is the layer where mix_seed's style takes over: give mix_seed too")
        return self


def channels_per_level(width: int, levels: int) -> list[int]:
    """Channels from the base (coarsest) to the finest resolution: width x 2^(levels - i), at most 4 width."""
    return [width * min(2 ** (levels - i), 4) for i in range(levels + 1)]


class Synthesis(nn.Module):
    """Per-layer styles (B, num_layers, w_dim) and noise -> image (B, C, H, W) in network units."""

    def __init__(self, shape: tuple[int, ...], w_dim: int, width: int) -> None:
        super().__init__()
        out_channels, height, wide = shape
        levels = resolution_levels(height, wide)
        chans = channels_per_level(width, levels)
        self.const = nn.Parameter(torch.randn(chans[0], height >> levels, wide >> levels))
        layers = [StyleLayer(chans[0], chans[0], w_dim)]
        #: the layers of each resolution, coarse to fine: [0], [1, 2], [3, 4] ...
        self.blocks = [[0]]
        for c_in, c_out in itertools.pairwise(chans):
            self.blocks.append([len(layers), len(layers) + 1])
            layers += [StyleLayer(c_in, c_out, w_dim), StyleLayer(c_out, c_out, w_dim)]
        self.layers = nn.ModuleList(layers)
        self.to_rgb = nn.ModuleList(ToRGB(c, out_channels, w_dim) for c in chans)
        self.out_channels = out_channels

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def noise(self, batch: int, generator: torch.Generator | None = None) -> list[Tensor]:
        """One N(0, 1) map (B, 1, H, W) per layer, at its resolution, in layer order."""
        _, height, wide = self.const.shape
        device = self.const.device
        return [draw_noise((batch, 1, height << r, wide << r), device, generator)
                for r, block in enumerate(self.blocks) for _ in block]

    def forward(self, ws: Tensor, noise: list[Tensor]) -> Tensor:
        x = self.const.expand(len(ws), *self.const.shape)
        image = x.new_zeros(len(ws), self.out_channels, *self.const.shape[1:])
        for resolution, (block, to_rgb) in enumerate(zip(self.blocks, self.to_rgb, strict=True)):
            if resolution:  # a finer resolution: double the features and the image so far
                x, image = upsample2(x), upsample2(image)
            for i in block:
                x = self.layers[i](x, ws[:, i], noise[i])
            image = image + to_rgb(x, ws[:, block[-1]])
        return torch.tanh(image)


class StyleGenerator(nn.Module):
    """G(z): mapping network, per-layer styles (truncation, mixing) and synthesis; keeps the running mean w_avg."""

    def __init__(self, shape: tuple[int, ...], latent_dim: int, width: int, mapping_layers: int) -> None:
        super().__init__()
        self.mapping = MappingNetwork(latent_dim, latent_dim, mapping_layers)
        self.synthesis = Synthesis(shape, latent_dim, width)
        self.register_buffer("w_avg", torch.zeros(latent_dim))
        #: where forward draws noise when not given a generator (None: the global one, as in training)
        self.noise_source: torch.Generator | None = None

    @property
    def num_layers(self) -> int:
        return self.synthesis.num_layers

    def truncate(self, w: Tensor, psi: float) -> Tensor:
        """w_avg + psi (w - w_avg)."""
        return self.w_avg.lerp(w, psi) if psi != 1 else w

    def styles(self, z: Tensor, z_mix: Tensor | None = None, mix_at: int = 0, psi: float = 1.0) -> Tensor:
        """Per-layer styles (B, num_layers, w_dim): f(z) everywhere, or f(z_mix) from layer ``mix_at`` on."""
        w = self.truncate(self.mapping(z), psi)
        ws = w.unsqueeze(1).repeat(1, self.num_layers, 1)
        if z_mix is not None:
            ws[:, mix_at:] = self.truncate(self.mapping(z_mix), psi).unsqueeze(1)
        return ws

    def forward(self, z: Tensor, z_mix: Tensor | None = None, mix_at: int = 0, psi: float = 1.0,
                noise_scale: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """Images for latents ``z``; noise from ``generator`` (CPU) or else :attr:`noise_source`."""
        ws = self.styles(z, z_mix, mix_at, psi)
        noise = [noise_scale * n for n in self.synthesis.noise(len(z), generator or self.noise_source)]
        return self.synthesis(ws, noise)


def minibatch_std(x: Tensor, eps: float = 1e-8) -> Tensor:
    """Append one channel holding the batch's mean feature standard deviation: D can see a lack of variety."""
    std = (x.var(dim=0, unbiased=False) + eps).sqrt().mean()
    return torch.cat([x, std.expand(len(x), 1, *x.shape[2:])], dim=1)


class ResidualDown(nn.Module):
    """Two 3x3 convolutions then 2x average pooling, plus a pooled 1x1 skip, summed and divided by sqrt(2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = EqualConv2d(c_in, c_in, 3), EqualConv2d(c_in, c_out, 3)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        main = F.avg_pool2d(scaled_lrelu(self.conv2(scaled_lrelu(self.conv1(x)))), 2)
        return (main + self.skip(F.avg_pool2d(x, 2))) / math.sqrt(2.0)


class ResidualDiscriminator(nn.Module):
    """x (B, C, H, W) -> logit (B,): fromRGB, residual blocks down to the base resolution, minibatch standard
    deviation, a 3x3 convolution and two fully connected layers. No normalisation (R1 is per example)."""

    def __init__(self, shape: tuple[int, ...], width: int) -> None:
        super().__init__()
        channels, height, wide = shape
        levels = resolution_levels(height, wide)
        chans = channels_per_level(width, levels)[::-1]  # fine to coarse
        self.from_rgb = EqualConv2d(channels, chans[0], 1)
        self.blocks = nn.Sequential(*(ResidualDown(a, b) for a, b in itertools.pairwise(chans)))
        self.conv = EqualConv2d(chans[-1] + 1, chans[-1], 3)
        self.fc = EqualLinear(chans[-1] * (height >> levels) * (wide >> levels), chans[-1])
        self.out = EqualLinear(chans[-1], 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(scaled_lrelu(self.from_rgb(x)))
        x = scaled_lrelu(self.conv(minibatch_std(x)))
        return self.out(scaled_lrelu(self.fc(x.flatten(1)))).squeeze(1)


def r1_penalty(discriminator: nn.Module, real: Tensor) -> Tensor:
    """R1 = E_x ||grad_x D(x)||^2 on real data, differentiable in D's parameters (``create_graph``)."""
    real = real.detach().requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()


@register
class StyleGAN(GAN):
    """StyleGAN2-style generator (mapping network, modulated convolutions, noise inputs, constant input) with a
    residual discriminator, logistic loss and lazy R1; truncation and style mixing at sampling time."""

    name = "stylegan"
    data_kinds = frozenset({DataKind.IMAGE})
    Config = StyleGANConfig
    SampleOptions = StyleSampling
    quick_steps = 1500
    smoke_config: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8, "mapping_layers": 2}
    config: StyleGANConfig
    generator: StyleGenerator

    def __init__(self, config: StyleGANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        self.generator = StyleGenerator(data.shape, c.latent_dim, c.width, c.mapping_layers)
        self.discriminator = ResidualDiscriminator(data.shape, c.width)

    @property
    def num_layers(self) -> int:
        """Style layers, 0 (coarsest) .. num_layers - 1 (finest): what ``mix_at`` counts."""
        return self.generator.num_layers

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.adam_pair(self.discriminator, self.config.lr, self.config.betas)

    # ----- training --------------------------------------------------------------------------------------------
    def _training_styles(self, n: int, device: torch.device) -> Tensor:
        """Styles of a training batch: with probability ``mixing_prob`` two latents mixed at a random layer."""
        z = self.latent(n, device)
        if self.num_layers > 1 and torch.rand(()) < self.config.mixing_prob:
            at = int(torch.randint(1, self.num_layers, ()))
            return self.generator.styles(z, self.latent(n, device), at)
        return self.generator.styles(z)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        c = self.config
        real = self.preprocess(batch.x)
        ws = self._training_styles(len(real), real.device)
        fake = self.generator.synthesis(ws, self.generator.synthesis.noise(len(real)))
        real_logits = self.discriminator(self.augment(real))
        fake_logits = self.discriminator(self.augment(fake.detach()))
        d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
        out = {"d_loss": d_loss.item(), **self.discriminator_accuracy(real_logits, fake_logits)}
        if c.r1_gamma > 0 and step % c.r1_every == 0:
            r1 = r1_penalty(self.discriminator, self.augment(real))
            d_loss = d_loss + c.r1_gamma / 2 * c.r1_every * r1
            out["r1"] = r1.item()
        optim.step("discriminator", d_loss)
        self.discriminator.requires_grad_(False)  # D is a constant in G's step
        try:
            g_loss = F.softplus(-self.discriminator(self.augment(fake))).mean()
            optim.step("generator", g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        with torch.no_grad():  # layer 0 always carries f(z) of the first latent
            self.generator.w_avg.lerp_(ws[:, 0].mean(0), 1 - c.w_avg_beta)
        return {**out, "g_loss": g_loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """The GAN base's validation, with the noise inputs drawn from the validation generator too."""
        self.generator.noise_source = generator
        try:
            return super().validation_step(batch, generator)
        finally:
            self.generator.noise_source = None

    # ----- sampling: truncation, style mixing, interpolation in w ------------------------------------------------
    def _mix_layer(self, options: StyleSampling) -> int:
        at = self.num_layers // 2 if options.mix_at is None else options.mix_at
        if at > self.num_layers:
            raise ConfigError(f"mix_at {at} is past the last style layer: this model has layers 0.."
                              f"{self.num_layers - 1} (mix_at {self.num_layers} keeps every layer's first style)")
        return at

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        z = self.randn(n, self.config.latent_dim, generator=generator)
        z_mix = None
        if options.mix_seed is not None:
            mix_generator = torch.Generator().manual_seed(options.mix_seed)
            z_mix = self.randn(n, self.config.latent_dim, generator=mix_generator)
        x = self.generator(z, z_mix, self._mix_layer(options), options.truncation, options.noise, generator)
        return self.postprocess(x)

    def export_module(self, batch: int, context: int | None = None) -> ExportSpec:
        """G with its noise maps as inputs: z (batch, latent_dim), noise_0 .. noise_L-1 (batch, 1, H_l, W_l) -> x in
        data units (no truncation, no mixing: sampling options stay in Python)."""
        maps = self.generator.synthesis.noise(batch, torch.Generator())
        inputs = {"z": torch.zeros(batch, self.config.latent_dim)} | {f"noise_{i}": m for i, m in enumerate(maps)}
        return ExportSpec(ExportModule(self, self.generate_with_noise), inputs, "x",
                          "z ~ N(0, I), then each noise_l ~ N(0, I) in layer order; x = module(z, *noise) in data "
                          "units",
                          noise=tuple(inputs))

    def generate_with_noise(self, z: Tensor, *noise: Tensor) -> Tensor:
        """x = G(z) in data units with the given per-layer noise maps."""
        return self.postprocess(self.generator.synthesis(self.generator.styles(z), list(noise)))

    def mix(self, seed_a: int, seed_b: int, at: int, **options: Any) -> Tensor:
        """Style mixing: seed A's styles on layers 0 .. at - 1 (coarse), seed B's from ``at`` on (fine), seed A's
        noise; one image (1, C, H, W). The same as ``sample(1, seed=A, mix_seed=B, mix_at=at)``."""
        return self.sample(1, seed=seed_a, mix_seed=seed_b, mix_at=at, **options)

    def interpolate_seeds(self, seed_a: int, seed_b: int, n: int = 8, truncation: float = 1.0,
                          noise: float = 1.0) -> Tensor:
        """``n`` images along the straight line from seed A's w to seed B's w (n, C, H, W), with seed A's noise
        throughout; the first is ``sample(1, seed=A)`` with the same options."""
        if n < 2:
            raise GenzooError(f"an interpolation needs at least 2 images, got {n}")
        self.sample_options(truncation=truncation, noise=noise)
        generator = torch.Generator().manual_seed(seed_a)
        z_a = self.randn(1, self.config.latent_dim, generator=generator)
        z_b = self.randn(1, self.config.latent_dim, generator=torch.Generator().manual_seed(seed_b))
        with eval_mode(self), torch.no_grad():
            g = self.generator
            w_a, w_b = (g.truncate(g.mapping(z), truncation) for z in (z_a, z_b))
            t = torch.linspace(0, 1, n, device=self.device).unsqueeze(1)
            ws = torch.lerp(w_a, w_b, t).unsqueeze(1).expand(n, self.num_layers, -1)
            frames = [noise * m.expand(n, -1, -1, -1) for m in g.synthesis.noise(1, generator)]
            return self.postprocess(g.synthesis(ws, frames))
