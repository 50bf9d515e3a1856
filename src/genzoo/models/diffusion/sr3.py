"""``sr3``: super-resolution by iterative refinement (Saharia et al., 2021), a diffusion model of p(x | x_low).

Training pairs come from any image data: the low-resolution image is the high-resolution one averaged over
f x f blocks (``factor`` f), x_low = AvgPool_f(x). Its bicubic upsampling u = Up_f(x_low) is the conditioning
image, concatenated to x_t along the channels, so the denoiser sees both at every pixel:

    x_t = alpha_t x + sigma_t eps,   loss = E_{t, eps} || f([x_t, u], t) - v ||^2,   v = alpha_t eps - sigma_t x,

everything in network units ([-1, 1]). Sampling starts from x_T ~ N(0, I) with the same u throughout and runs any
sampler of :mod:`genzoo.models.diffusion.samplers` (DPM-Solver++ 2M by default) through the denoiser
D(x_t, t) = alpha_t x_t - sigma_t f([x_t, u], t), clipped to [-1, 1]. Bicubic upsampling u itself is the baseline
the task metrics compare against (PSNR and SSIM of both against the true x on the test split).
"""

from __future__ import annotations

from typing import Any, ClassVar, cast

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
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import ConfigError, GenzooError
from genzoo.metrics.fidelity import psnr, ssim
from genzoo.models.diffusion.ddpm import UNetDiffusionConfig
from genzoo.models.diffusion.samplers import Denoiser, SamplerName, denoiser_calls, make_sampler, sample_loop
from genzoo.models.diffusion.schedules import Schedule
from genzoo.nn.unet import UNet
from genzoo.registry import register

#: test images upscaled by :meth:`SR3.task_metrics` (sampling costs ``steps`` network calls per image)
METRIC_EXAMPLES = 256


class SR3Config(UNetDiffusionConfig):
    factor: int = Field(4, ge=2, description="upscaling factor f: the model maps (H / f, W / f) images to (H, W); "
                        "f must divide the data's height and width")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")


class SR3SampleOptions(SampleOptions):
    """How ``sr3`` upscales (``model.upscale(x_low, sampler="ddim", steps=50)``)."""

    sampler: SamplerName = Field("dpm", description="dpm (DPM-Solver++ 2M, 20 steps), ddim (50 steps, "
                                 "deterministic) or ancestral (alias ddpm; every step of the schedule)")
    steps: int | None = Field(None, ge=1, description="network-evaluation steps over the full noise range "
                              "(default: the sampler's own)")


@register
class SR3(GenerativeModel):
    """Diffusion super-resolution: a U-Net denoiser of the high-resolution image given the bicubic upsampling of
    the low-resolution one, concatenated to its input."""

    name = "sr3"
    family = "diffusion"
    Config = SR3Config
    SampleOptions = SR3SampleOptions
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SUPER_RESOLVE})
    smoke_config: ClassVar[dict[str, Any]] = {"timesteps": 50, "width": 8, "channel_mult": [1, 2]}
    smoke_overfit_steps: ClassVar[int] = 30
    smoke_sample_options: ClassVar[dict[str, Any]] = {"steps": 4}
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "batch_size": 128, "warmup_steps": 100}
    config: SR3Config

    def __init__(self, config: SR3Config, data: DataInfo) -> None:
        super().__init__(config, data)
        channels, height, width = data.shape
        if height % config.factor or width % config.factor:
            raise ConfigError(f"sr3: factor {config.factor} must divide the image sides {height}x{width}")
        self.schedule = Schedule.make(config.schedule, config.timesteps)
        # the U-Net reads x_t and the upsampled low-resolution image stacked on the channels
        self.net = UNet(data.shape, config.width, tuple(config.channel_mult), config.num_res_blocks,
                        config.attention_below, config.dropout, in_channels=2 * channels)

    @property
    def upscale_factor(self) -> int:
        return self.config.factor

    @property
    def low_shape(self) -> tuple[int, int, int]:
        """(C, H / f, W / f): the shape of the images the model upscales."""
        channels, height, width = self.data.shape
        return channels, height // self.config.factor, width // self.config.factor

    # ----- the degradation and its bicubic inverse ---------------------------------------------------------------
    def downsample(self, x: Tensor) -> Tensor:
        """High-resolution images -> their low-resolution versions: the mean of each f x f block (data units)."""
        return F.avg_pool2d(x, self.config.factor)

    def bicubic(self, x_low: Tensor) -> Tensor:
        """Bicubic upsampling by f, clamped to [0, 1]: the conditioning image and the baseline (data units)."""
        up = F.interpolate(x_low, scale_factor=self.config.factor, mode="bicubic", align_corners=False)
        return up.clamp(0.0, 1.0)

    # ----- training ------------------------------------------------------------------------------------------------
    def _loss(self, x: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        x0, cond = self.preprocess(x), self.preprocess(self.bicubic(self.downsample(x)))
        xt = self.schedule.q_sample(x0, t, noise)
        target = self.schedule.target(x0, noise, t, self.config.prediction)
        return F.mse_loss(self.net(torch.cat([xt, cond], dim=1), t), target)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        t = torch.randint(0, self.schedule.steps, (len(batch.x),), device=batch.x.device)
        loss = self._loss(batch.x, t, torch.randn_like(batch.x))
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        t = torch.randint(0, self.schedule.steps, (len(batch.x),), generator=generator).to(self.device)
        return {"val_loss": self._loss(batch.x, t, self.randn(*batch.x.shape, generator=generator)).item()}

    # ----- upscaling -----------------------------------------------------------------------------------------------
    def denoiser(self, cond: Tensor) -> Denoiser:
        """D(x_t, t) -> x^_0 given the conditioning image ``cond`` (network units), clipped to [-1, 1]."""

        def denoise(x: Tensor, t: int) -> Tensor:
            steps = torch.full((len(x),), t, dtype=torch.long, device=x.device)
            out = self.net(torch.cat([x, cond], dim=1), steps)
            return self.schedule.predict_x0(x, steps, out, self.config.prediction).clamp(-1.0, 1.0)

        return denoise

    def _low_inputs(self, x_low: Tensor) -> Tensor:
        """Low-resolution images as (N, C, H / f, W / f) in [0, 1] on the model's device; one clear error if not."""
        x_low = torch.as_tensor(x_low, dtype=torch.float32)
        x_low = x_low.unsqueeze(0) if x_low.dim() == 3 else x_low
        if tuple(x_low.shape[1:]) != self.low_shape:
            raise GenzooError(f"sr3 upscales {self.low_shape[1]}x{self.low_shape[2]} images with "
                              f"{self.low_shape[0]} channel(s) by {self.config.factor}; got shape "
                              f"{tuple(x_low.shape[1:])} (channels, height, width)")
        if x_low.min() < 0 or x_low.max() > 1:
            raise GenzooError("low-resolution image values must be in [0, 1]")
        return x_low.to(self.device)

    def upscale(self, x_low: Tensor, *, seed: int | None = None, generator: torch.Generator | None = None,
                **options: Any) -> Tensor:
        """Sample x ~ p(x | x_low): (N, C, H, W) in [0, 1] from (N, C, H / f, W / f) images in [0, 1]. Same seed,
        same result."""
        typed = cast(SR3SampleOptions, self.sample_options(**options))
        x_low = self._low_inputs(x_low)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        sampler = make_sampler(typed.sampler)
        sampler.set_timesteps(self.schedule, typed.steps)
        with eval_mode(self), torch.no_grad():
            cond = self.preprocess(self.bicubic(x_low))
            noise = self.randn(len(x_low), *self.data.shape, generator=generator)
            out = sample_loop(self.denoiser(cond), sampler, noise,
                              lambda shape: self.randn(*shape, generator=generator))
        return self.postprocess(out)

    def cost(self, **options: Any) -> Cost:
        """One network evaluation per point of the sampler's grid."""
        typed = cast(SR3SampleOptions, self.sample_options(**options))
        sampler = make_sampler(typed.sampler)
        sampler.set_timesteps(self.schedule, typed.steps)
        return Cost(nfe_per_sample=denoiser_calls(sampler))

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """PSNR (dB) and SSIM of the upscaled test images (the first ``METRIC_EXAMPLES``, default sampler) against
        the originals, and the same for bicubic upsampling of the same low-resolution images."""
        x = test.x[:METRIC_EXAMPLES].to(self.device)
        x_low = self.downsample(x)
        upscaled, bicubic = self.upscale(x_low, generator=generator), self.bicubic(x_low)
        return {"psnr_db": psnr(upscaled, x).mean().item(), "ssim": ssim(upscaled, x).mean().item(),
                "bicubic_psnr_db": psnr(bicubic, x).mean().item(), "bicubic_ssim": ssim(bicubic, x).mean().item()}
