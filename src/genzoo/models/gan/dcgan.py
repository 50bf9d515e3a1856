"""DCGAN (Radford et al., 2016): a generator G and a discriminator D trained as a two-player game.

D is a classifier of real against generated data with logit D(x); it minimises the binary cross-entropy

    L_D = -E_x log sigmoid(D(x)) - E_z log(1 - sigmoid(D(G(z)))),    z ~ N(0, I),

and G minimises the non-saturating loss L_G = -E_z log sigmoid(D(G(z))) (Goodfellow et al., 2014), which has the
same fixed point as the minimax game but strong gradients early on. Both take one Adam step per training step,
D first. Architecture after the paper: strided (transposed) convolutions, batch norm in G and in D except on D's
first layer, ReLU in G, leaky ReLU in D, tanh output. Vector data use MLPs.

There is no likelihood, so validation compares ``len(batch)`` generated samples with the held-out batch by the
unbiased squared MMD in network units (Gaussian kernel, bandwidth a quarter of the median pairwise distance, which
is sensitive to local structure; see :mod:`genzoo.metrics.mmd`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.models.gan.base import GAN, GANConfig
from genzoo.nn.gan import discriminator_net, generator_net
from genzoo.registry import register
from genzoo.searchspace import Choice, LogUniform, Param


class DCGANConfig(GANConfig):
    lr: float | None = Field(None, gt=0, description="Adam learning rate of G and D; None: 2e-4 for conv nets "
                             "(the paper's), 1e-3 for MLPs (at 2e-4 they collapse onto one mode of toy:8gaussians)")
    betas: tuple[float, float] = Field((0.5, 0.999), description="Adam betas of G and D")


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D: binary cross-entropy with label 1 for real and 0 for generated examples."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


def generator_loss(fake_logits: Tensor) -> Tensor:
    """L_G = -E log sigmoid(D(G(z))), the non-saturating loss."""
    return F.softplus(-fake_logits).mean()


@register
class DCGAN(GAN):
    """Deep convolutional GAN: a generator against a real/fake classifier (non-saturating loss)."""

    name = "dcgan"
    quick_steps = 1000
    Config = DCGANConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(5e-5, 2e-3), "latent_dim": Choice(16, 32, 64, 128), "width": Choice(16, 32, 64),
        "diffaugment": Choice(False, True),
    }
    config: DCGANConfig

    def __init__(self, config: DCGANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        self.generator = generator_net(data, c.latent_dim, c.width, c.hidden, c.depth, norm="batch")
        self.discriminator = discriminator_net(data, c.width, c.hidden, c.depth, norm="batch", norm_first=False)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        lr = self.config.lr or (2e-4 if self.data.kind is DataKind.IMAGE else 1e-3)
        return self.adam_pair(self.discriminator, lr, self.config.betas)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        real = self.preprocess(batch.x)
        fake = self.generator(self.latent(len(real), real.device))
        real_logits = self.discriminator(self.augment(real))
        fake_logits = self.discriminator(self.augment(fake.detach()))
        d_loss = discriminator_loss(real_logits, fake_logits)
        optim.step("discriminator", d_loss)
        # D's weights are constants in G's step: no need to accumulate their gradients
        self.discriminator.requires_grad_(False)
        try:
            g_loss = generator_loss(self.discriminator(self.augment(fake)))
            optim.step("generator", g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                **self.discriminator_accuracy(real_logits, fake_logits)}
