"""Latent diffusion (Rombach et al., 2022): ``ddpm`` on the latent grid of an autoencoder, text-to-image on captions.

Stage 1, ``autoencoder``: a small KL-regularised convolutional autoencoder. The encoder maps an image x (network
units, [-1, 1]) to q(z | x) = N(mu(x), diag sigma(x)^2) on a grid of ``latent_channels`` x H/2^k x W/2^k (k =
``downsample`` halvings, fewer when a side stops being even); the decoder maps z to per-pixel logits of x in
[0, 1]. Loss per example, with z = mu + sigma eps:

    L_AE = BCE(x, sigmoid(D(z)))  (mean per pixel)  +  kl_weight * KL(q(z | x) || N(0, I))  (mean per latent value)

Stage 2, ``diffusion``: the autoencoder is frozen and the latents z = s mu(x) are ddpm's data: the same schedule,
loss, U-Net (or DiT) on the latent grid, caption conditioning and classifier-free guidance, and samplers, with
x^_0 left unclipped (latents are not bounded). s = 1 / std(mu) is measured on the first batch of this stage, so
the latents the diffusion sees have unit variance (LDM's scale factor). Sampling: z from the diffusion, then
x = sigmoid(D(z / s)). Both stages live in one run directory (Contract 2 ``stages``).

A caption-conditioned run (``scenes:``, ``captions:`` data) draws from a prompt: ``model.sample(8, prompt="a small
red circle above a large blue square", guidance=4)`` or ``genzoo sample RUN --prompt ... --guidance 4``;
``genzoo eval`` reports caption accuracy on held-out captions (see ``ddpm``). Pixel-space abilities of ``ddpm``
(the likelihood bound, inpainting, image-to-image) do not carry over to latents and are refused.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import Batch, Capability, DataInfo, DataKind, GenerativeModel, Optimizers, Stage
from genzoo.models.diffusion.ddpm import DDPM, DDPMConfig
from genzoo.registry import register


class LDMConfig(DDPMConfig):
    # the latent U-Net keeps the sizes its benchmark was measured with (bench/ldm.py)
    width: int = Field(32, ge=4, description="U-Net: base channels")
    attention_below: int = Field(8, ge=0, description="U-Net: self-attention at levels whose larger side is at most "
                                 "this (and always in the middle block)")
    latent_channels: int = Field(4, ge=1, description="autoencoder: channels of the latent grid")
    downsample: int = Field(2, ge=0, description="autoencoder: halvings of the image sides down to the latent grid "
                            "(fewer when a side stops being even or would drop below 2)")
    ae_width: int = Field(32, ge=4, description="autoencoder: convolution channels")
    kl_weight: float = Field(1e-3, ge=0.0, description="autoencoder: weight of KL(q(z|x) || N(0, I)) per latent "
                             "value against the reconstruction cross-entropy per pixel")
    ae_lr: float = Field(2e-3, gt=0, description="autoencoder: Adam learning rate (the diffusion uses lr; 1e-2 "
                         "diverged after 500 steps on scenes)")


def latent_halvings(height: int, width: int, wanted: int) -> int:
    """How often both sides halve evenly, at most ``wanted`` times and keeping them at least 2."""
    halvings = 0
    while halvings < wanted and height % 2 == 0 and width % 2 == 0 and min(height, width) >= 4:
        height, width, halvings = height // 2, width // 2, halvings + 1
    return halvings


class LatentEncoder(nn.Module):
    """(B, C, H, W) in [-1, 1] -> mean and log-variance of q(z | x), each (B, latent, H / 2^k, W / 2^k)."""

    def __init__(self, channels: int, width: int, latent: int, halvings: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1), nn.SiLU()]
        for _ in range(halvings):
            layers += [nn.Conv2d(width, width, 4, stride=2, padding=1), nn.SiLU()]
        layers += [nn.Conv2d(width, width, 3, padding=1), nn.SiLU(), nn.Conv2d(width, 2 * latent, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mean, log_var = self.body(x).chunk(2, dim=1)
        return mean, log_var.clamp(-30.0, 20.0)  # as LDM: keeps exp(log_var) finite early in training


class LatentDecoder(nn.Module):
    """(B, latent, h, w) -> (B, C, h 2^k, w 2^k) logits of the pixels (nearest upsampling, then a convolution)."""

    def __init__(self, channels: int, width: int, latent: int, halvings: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(latent, width, 3, padding=1), nn.SiLU(),
                                   nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        for _ in range(halvings):
            layers += [nn.Upsample(scale_factor=2.0, mode="nearest"), nn.Conv2d(width, width, 3, padding=1), nn.SiLU()]
        layers.append(nn.Conv2d(width, channels, 3, padding=1))
        self.body = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        return self.body(z)


@register
class LDM(DDPM):
    """Latent diffusion: a KL autoencoder (stage 1), then ddpm on its scaled latents with caption conditioning and
    classifier-free guidance (stage 2)."""

    name = "ldm"
    quick_steps = None
    family = "diffusion"
    Config = LDMConfig
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE, Capability.TEXT_TO_IMAGE,
                                   Capability.ENCODE, Capability.DECODE, Capability.RECONSTRUCT})
    stages = (Stage("autoencoder", optimizers=("autoencoder",), share=0.25, validation_metric="val_ae"),
              Stage("diffusion", optimizers=("model",), share=0.75, validation_metric="val_loss"))
    validation_metric = "val_ae"
    smoke_config: ClassVar[dict[str, Any]] = {"timesteps": 50, "width": 8, "channel_mult": [1, 2], "ae_width": 8,
                                              "latent_channels": 2}
    # the EMA starts with the run, but the diffusion network only trains in stage 2: a shorter memory than ddpm's
    # keeps its untrained start out of the average
    train_defaults: ClassVar[dict[str, Any]] = {**DDPM.train_defaults, "ema_decay": 0.995}
    config: LDMConfig

    # ddpm's pixel-space abilities do not carry over to latents: the contract's refusals
    log_likelihood = GenerativeModel.log_likelihood
    inpaint = GenerativeModel.inpaint
    img2img = GenerativeModel.img2img

    def __init__(self, config: LDMConfig, data: DataInfo) -> None:
        super().__init__(config, data)  # the diffusion network, on the latent grid (diffusion_shape)
        channels, height, width = data.shape
        halvings = latent_halvings(height, width, config.downsample)
        self.encoder = LatentEncoder(channels, config.ae_width, config.latent_channels, halvings)
        self.decoder = LatentDecoder(channels, config.ae_width, config.latent_channels, halvings)
        #: s, 1 / std of the latent means; 0 until measured at the start of stage 2
        self.register_buffer("latent_scale", torch.zeros(()))

    @property
    def diffusion_shape(self) -> tuple[int, ...]:
        _, height, width = self.data.shape
        halvings = latent_halvings(height, width, self.config.downsample)
        return self.config.latent_channels, height >> halvings, width >> halvings

    @property
    def clips_x0(self) -> bool:
        return False

    def _scale(self) -> Tensor:
        """s, or 1 before stage 2 measured it (validation during stage 1)."""
        return torch.where(self.latent_scale > 0, self.latent_scale, torch.ones_like(self.latent_scale))

    def to_diffusion(self, x: Tensor) -> Tensor:
        """Images -> s mu(x), the frozen encoder's scaled latent means."""
        with torch.no_grad():
            mean, _ = self.encoder(self.preprocess(x))
        return mean * self._scale()

    def from_diffusion(self, z: Tensor) -> Tensor:
        """Scaled latents -> images in [0, 1]: sigmoid(D(z / s))."""
        return torch.sigmoid(self.decoder(z / self._scale()))

    # ----- training --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        autoencoder = [*self.encoder.parameters(), *self.decoder.parameters()]
        return {"autoencoder": torch.optim.Adam(autoencoder, lr=self.config.ae_lr),
                "model": torch.optim.Adam(self.net.parameters(), lr=self.config.lr)}

    def ema_targets(self) -> list[nn.Module]:
        """The diffusion network (the autoencoder is frozen by the time it samples)."""
        return [self.net]

    def _autoencoder_losses(self, x: Tensor, noise: Tensor) -> tuple[Tensor, Tensor]:
        """Reconstruction cross-entropy per pixel and KL per latent value, with z = mu + sigma ``noise``."""
        mean, log_var = self.encoder(self.preprocess(x))
        logits = self.decoder(mean + (0.5 * log_var).exp() * noise)
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1.0 - log_var).mean()
        return F.binary_cross_entropy_with_logits(logits, x), kl

    @torch.no_grad()
    def _measure_latent_scale(self, x: Tensor) -> None:
        mean, _ = self.encoder(self.preprocess(x))
        self.latent_scale.fill_(1.0 / mean.std().clamp_min(1e-6))

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        """Stage ``diffusion``: ddpm's step on the scaled latents (measuring s on its first batch); otherwise (stage
        ``autoencoder``, or no stage outside the trainer) an autoencoder step."""
        if optim.stage is not None and optim.stage.name == "diffusion":
            if self.latent_scale == 0:
                self._measure_latent_scale(batch.x)
            return super().training_step(batch, step, optim)
        rec, kl = self._autoencoder_losses(batch.x, torch.randn(len(batch.x), *self.diffusion_shape,
                                                                device=batch.x.device))
        optim.step("autoencoder", rec + self.config.kl_weight * kl)
        return {"rec": rec.item(), "kl": kl.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """The autoencoder's loss (``val_ae``: reconstruction ``val_rec`` and ``val_kl``) and the diffusion's
        (``val_loss``)."""
        rec, kl = self._autoencoder_losses(batch.x, self.randn(len(batch.x), *self.diffusion_shape,
                                                               generator=generator))
        ae = {"val_ae": float(rec + self.config.kl_weight * kl), "val_rec": rec.item(), "val_kl": kl.item()}
        return {**ae, **super().validation_step(batch, generator)}

    # ----- latents ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images -> their scaled latent means s mu(x), (B, latent, h, w)."""
        return self.to_diffusion(x.to(self.device))

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Scaled latents (B, latent, h, w) -> images in [0, 1]."""
        return self.from_diffusion(z.to(self.device))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))
