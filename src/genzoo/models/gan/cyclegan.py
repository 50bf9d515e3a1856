"""CycleGAN (Zhu et al., 2017): unpaired image-to-image translation between two domains A and B.

Two generators, G_ab: A -> B and G_ba: B -> A, and two discriminators, D_b (real B against G_ab(a)) and D_a (real
A against G_ba(b)), trained on unpaired batches a ~ A, b ~ B. With least-squares adversarial losses (LSGAN, Mao et
al., 2017) the generators minimise

    L_G = E (D_b(G_ab(a)) - 1)^2 + E (D_a(G_ba(b)) - 1)^2                                  adversarial
        + lambda_cycle    (E |G_ba(G_ab(a)) - a| + E |G_ab(G_ba(b)) - b|)                   cycle consistency
        + lambda_identity (E |G_ab(b) - b|     + E |G_ba(a) - a|)                           identity

and each discriminator D in {D_a, D_b}, with its real domain r and the translations f into it,

    L_D = 1/2 E (D(r) - 1)^2 + 1/2 E D(f)^2,

where f is drawn from a pool of the last ``pool_size`` translations (Shrivastava et al., 2017) so the
discriminators do not chase only the generators' latest output. One step: the generators' Adam step, then the
discriminators'. Without the cycle term any mapping onto B's distribution would do; the cycle ties each output to
its input. The identity term keeps an image already in the target domain unchanged (the paper's lambda_identity =
lambda_cycle / 2).

Generators are ResNet-style (Johnson et al., 2016) sized for 8x8..32x32: a 3x3 stem, ``downsample`` stride-2
levels, ``blocks`` residual blocks, the mirrored upsampling and a tanh output, with instance norm. Discriminators are
PatchGANs: stride-2 convolutions down to a map of patch scores, each judging a patch of the image.

There is no unconditional sampler: the model translates (``img2img(x, direction="a2b")``, ``genzoo edit RUN --image
in.png --direction b2a``). Validation keeps the checkpoint with the lowest held-out cycle error (both directions,
data units) and logs how well translations land in the target domain: the MMD between G_ab(a) and held-out b plus
that between G_ba(b) and held-out a (network units). ``task_metrics`` reports the held-out cycle errors and, for
data whose held-out splits are aligned (``pair:digits-thick``), the translation errors against the known mapping
beside the untranslated input's error. All errors are mean absolute differences in data units ([0, 1] images).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    GenerativeModel,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import ConfigError, GenzooError
from genzoo.metrics.mmd import generator_validation
from genzoo.nn.conv import resolution_levels
from genzoo.registry import register

Direction = Literal["a2b", "b2a"]


class CycleGANConfig(ModelConfig):
    width: int = Field(16, ge=1, description="base channels of the generators and discriminators")
    blocks: int = Field(2, ge=0, description="residual blocks of each generator, at its lowest resolution")
    downsample: int = Field(1, ge=0, description="stride-2 levels of each generator (at most while sides stay >= 4)")
    d_layers: int = Field(2, ge=0, description="stride-2 convolutions of each PatchGAN discriminator (at most while "
                          "sides stay >= 4)")
    lambda_cycle: float = Field(10.0, ge=0, description="weight of the cycle-consistency L1 loss")
    lambda_identity: float = Field(5.0, ge=0, description="weight of the identity L1 loss |G_ab(b) - b| + "
                                   "|G_ba(a) - a|")
    pool_size: int = Field(50, ge=0, description="past translations each discriminator draws from (0: none)")
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of the generators and the discriminators")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1")


class CycleGANSampling(SampleOptions):
    direction: Direction = Field("a2b", description="a2b translates domain A images to B, b2a B to A")


# ----- networks ---------------------------------------------------------------------------------------------------
def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=True)


class ResidualBlock(nn.Module):
    """x + IN(conv(ReLU(IN(conv(x))))): the block keeps the resolution and learns a change of its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), _norm(channels), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), _norm(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def resnet_generator(shape: tuple[int, ...], width: int, blocks: int, downsample: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, C, H, W) in [-1, 1]: stem, stride-2 downsampling, residual blocks, upsampling, tanh."""
    channels, height, wide = shape
    levels = min(downsample, resolution_levels(height, wide))
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1, padding_mode="reflect"), _norm(width),
                               nn.ReLU()]
    c = width
    for _ in range(levels):
        layers += [nn.Conv2d(c, 2 * c, 4, stride=2, padding=1), _norm(2 * c), nn.ReLU()]
        c *= 2
    layers += [ResidualBlock(c) for _ in range(blocks)]
    for _ in range(levels):
        layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1), _norm(c // 2), nn.ReLU()]
        c //= 2
    layers += [nn.Conv2d(c, channels, 3, padding=1, padding_mode="reflect"), nn.Tanh()]
    return nn.Sequential(*layers)


def patch_discriminator(shape: tuple[int, ...], width: int, layers: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, 1, h, w) patch scores: stride-2 4x4 convolutions (no norm on the first), leaky ReLU, then
    a 3x3 layer and a 3x3 convolution to one score per patch."""
    channels, height, wide = shape
    c_in, c = channels, width
    body: list[nn.Module] = []
    for i in range(min(layers, resolution_levels(height, wide))):
        body += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), *([_norm(c)] if i else []), nn.LeakyReLU(0.2)]
        c_in, c = c, 2 * c
    body += [nn.Conv2d(c_in, c, 3, padding=1), _norm(c), nn.LeakyReLU(0.2), nn.Conv2d(c, 1, 3, padding=1)]
    return nn.Sequential(*body)


class FakePool(nn.Module):
    """Up to ``size`` past translations (Shrivastava et al., 2017), kept as buffers so a resumed run continues it.

    ``forward(fakes)`` returns what the discriminator sees: while the pool fills, the new fakes themselves; once it
    is full, each new fake is, with probability 1/2, swapped for a random stored one (which it replaces) and
    otherwise passed through. A batch's swaps are drawn at once (the training step's global generator)."""

    def __init__(self, size: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("images", torch.zeros(size, *shape))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, fakes: Tensor) -> Tensor:
        size = len(self.images)
        fakes = fakes.detach()
        if size == 0:
            return fakes
        fill = min(size - int(self.count), len(fakes))
        self.images[int(self.count) : int(self.count) + fill] = fakes[:fill]
        self.count += fill
        rest = fakes[fill:]
        if not len(rest):
            return fakes
        swap = (torch.rand(len(rest)) < 0.5).to(rest.device)
        slot = torch.randint(size, (len(rest),)).to(rest.device)[swap]
        out = rest.clone()
        out[swap] = self.images[slot]
        self.images[slot] = rest[swap]
        return torch.cat([fakes[:fill], out])


# ----- losses -----------------------------------------------------------------------------------------------------
def lsgan_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """L_D = 1/2 E (D(real) - 1)^2 + 1/2 E D(fake)^2 (least squares towards 1 for real, 0 for translations)."""
    return 0.5 * ((real_scores - 1).square().mean() + fake_scores.square().mean())


def lsgan_generator_loss(fake_scores: Tensor) -> Tensor:
    """E (D(fake) - 1)^2: the generator wants its translations scored as real."""
    return (fake_scores - 1).square().mean()


@register
class CycleGAN(GenerativeModel):
    """Unpaired translation A <-> B: two generators, two PatchGAN discriminators, cycle and identity losses."""

    name = "cyclegan"
    family = "gan"
    Config = CycleGANConfig
    SampleOptions = CycleGANSampling
    data_kinds = frozenset({DataKind.IMAGE})
    domains = 2
    base_capabilities = frozenset({Capability.IMG2IMG})
    validation_metric = "val_cycle"
    smoke_config: ClassVar[dict[str, Any]] = {"width": 4, "blocks": 1, "pool_size": 4}
    smoke_data = "pair:digits-thick"
    # on pair:digits-thick, 400 steps bring the A -> B error to a third of the untranslated input's (0.097 vs 0.295)
    quick_steps = 400

    config: CycleGANConfig

    def __init__(self, config: CycleGANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        assert data.domain_b is not None  # checked by GenerativeModel for a two-domain model
        if tuple(data.domain_b.shape) != tuple(data.shape):
            raise ConfigError(f"the two domains must have one image shape, but '{data.spec}' is {tuple(data.shape)} "
                              f"and '{data.domain_b.spec}' is {tuple(data.domain_b.shape)}: resize both with "
                              "--image-size N (and give both the same number of channels)")
        shape, c = tuple(data.shape), config
        self.g_ab = resnet_generator(shape, c.width, c.blocks, c.downsample)
        self.g_ba = resnet_generator(shape, c.width, c.blocks, c.downsample)
        self.d_a = patch_discriminator(shape, c.width, c.d_layers)
        self.d_b = patch_discriminator(shape, c.width, c.d_layers)
        self.pool_a = FakePool(c.pool_size, shape)  # translations into A, for D_a
        self.pool_b = FakePool(c.pool_size, shape)

    def translate(self, x: Tensor, direction: Direction) -> Tensor:
        """Images in data units -> their translations in data units (one generator pass)."""
        return self.postprocess((self.g_ab if direction == "a2b" else self.g_ba)(self.preprocess(x)))

    # ----- training ----------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c, betas = self.config, (self.config.beta1, 0.999)
        generators = [*self.g_ab.parameters(), *self.g_ba.parameters()]
        discriminators = [*self.d_a.parameters(), *self.d_b.parameters()]
        return {"generator": torch.optim.Adam(generators, lr=c.lr, betas=betas),
                "discriminator": torch.optim.Adam(discriminators, lr=c.lr, betas=betas)}

    def ema_targets(self) -> list[nn.Module]:
        """Only the generators are averaged: the discriminators train on live weights and never translate."""
        return [self.g_ab, self.g_ba]

    def _domains(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """(a, b) in network units."""
        if batch.x_b is None:
            raise GenzooError("cyclegan needs batches of two domains: train with --data A --data-b B or a "
                              "pair: spec (pair:digits-thick)")
        return self.preprocess(batch.x), self.preprocess(batch.x_b)

    def generator_losses(self, a: Tensor, b: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        """The three terms of L_G (unweighted, each summed over both directions) and the translations
        (G_ba(b), G_ab(a)), all in network units."""
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        losses = {
            "adversarial": lsgan_generator_loss(self.d_b(fake_b)) + lsgan_generator_loss(self.d_a(fake_a)),
            "cycle": F.l1_loss(self.g_ba(fake_b), a) + F.l1_loss(self.g_ab(fake_a), b),
        }
        if self.config.lambda_identity > 0:  # two more generator passes, only when they count
            losses["identity"] = F.l1_loss(self.g_ab(b), b) + F.l1_loss(self.g_ba(a), a)
        return losses, fake_a, fake_b

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        c = self.config
        a, b = self._domains(batch)
        # the discriminators are constants in the generators' step: no need to accumulate their gradients
        self.d_a.requires_grad_(False)
        self.d_b.requires_grad_(False)
        try:
            losses, fake_a, fake_b = self.generator_losses(a, b)
            g_loss = (losses["adversarial"] + c.lambda_cycle * losses["cycle"]
                      + c.lambda_identity * losses.get("identity", torch.zeros(())))
            optim.step("generator", g_loss)
        finally:
            self.d_a.requires_grad_(True)
            self.d_b.requires_grad_(True)
        d_loss = (lsgan_discriminator_loss(self.d_a(a), self.d_a(self.pool_a(fake_a)))
                  + lsgan_discriminator_loss(self.d_b(b), self.d_b(self.pool_b(fake_b))))
        optim.step("discriminator", d_loss)
        return {"g_loss": g_loss.item(), "d_loss": d_loss.item(), **{k: v.item() for k, v in losses.items()}}

    # ----- held-out numbers --------------------------------------------------------------------------------------
    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        a, b = self._domains(batch)
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        into_b, into_a = generator_validation(fake_b, b), generator_validation(fake_a, a)
        mmd = {"val_mmd": into_b["val_mmd"] + into_a["val_mmd"]} if into_b and into_a else {}
        # |.| of network units ([-1, 1]) is twice that of data units
        cycle = (F.l1_loss(self.g_ba(fake_b), a) + F.l1_loss(self.g_ab(fake_a), b)) / 4
        return {**mmd, "val_cycle": cycle.item()}

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """Held-out cycle errors |G_ba(G_ab(a)) - a| and |G_ab(G_ba(b)) - b|; where the data's held-out splits are
        aligned (``extra["aligned_heldout"]``: b = the known mapping of a), the translation errors |G_ab(a) - b|
        and |G_ba(b) - a| and the untranslated input's error |a - b| (the same for both directions). Means of
        absolute differences in data units."""
        with eval_mode(self):
            a, fake_b = test.x, self.translate(test.x, "a2b")
            out = {"cycle_a_error": (self.translate(fake_b, "b2a") - a).abs().mean().item()}
            if test.x_b is None:  # data without the second domain: A's side only
                return out
            b, fake_a = test.x_b, self.translate(test.x_b, "b2a")
            out["cycle_b_error"] = (self.translate(fake_a, "a2b") - b).abs().mean().item()
            if self.data.extra.get("aligned_heldout"):
                out |= {"a2b_error": (fake_b - b).abs().mean().item(), "b2a_error": (fake_a - a).abs().mean().item(),
                        "identity_baseline_error": (a - b).abs().mean().item()}
        return out

    # ----- translation -------------------------------------------------------------------------------------------
    def img2img(self, x: Tensor, strength: float | None = None, seed: int | None = None, **options: Any) -> Tensor:
        """Translate images (N, C, H, W) or (C, H, W) in [0, 1] in ``direction`` (``a2b`` or ``b2a``). One
        deterministic generator pass: ``strength`` and ``seed`` are accepted for the common editing interface and
        have no effect."""
        typed = self.sample_options(**options)
        image, _ = self.edit_inputs(x)
        with eval_mode(self), torch.no_grad():
            return self.translate(image, typed.direction)

    def cost(self, **options: Any) -> Cost:
        """One generator pass per translated image."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=1)
