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

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from genzoo.contract import Batch, Capability, DataInfo, DataKind, GenerativeModel, ModelConfig, Optimizers
from genzoo.metrics.mmd import generator_validation
from genzoo.nn.gan import discriminator_net, generator_net
from genzoo.registry import register


class DCGANConfig(ModelConfig):
    latent_dim: int = Field(64, ge=1, description="size of the latent code z")
    width: int = Field(32, ge=1, description="conv base channels (images)")
    hidden: int = Field(256, ge=1, description="MLP hidden units (vector data)")
    depth: int = Field(3, ge=1, description="MLP hidden layers (vector data)")
    lr: float | None = Field(None, gt=0, description="Adam learning rate of G and D; None: 2e-4 for conv nets "
                             "(the paper's), 1e-3 for MLPs (at 2e-4 they collapse onto one mode of toy:8gaussians)")
    betas: tuple[float, float] = (0.5, 0.999)


def discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D: binary cross-entropy with label 1 for real and 0 for generated examples."""
    return (F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
            + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))


@register
class DCGAN(GenerativeModel):
    """Deep convolutional GAN: a generator against a real/fake classifier (non-saturating loss)."""

    name = "dcgan"
    family = "gan"
    Config = DCGANConfig
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE})
    validation_metric = "val_mmd"
    smoke_config: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8, "hidden": 32, "depth": 2}
    # averaged generator weights give visibly cleaner samples (Yazici et al., 2019)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999}

    config: DCGANConfig

    def __init__(self, config: DCGANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        self.generator = generator_net(data, c.latent_dim, c.width, c.hidden, c.depth, norm="batch")
        self.discriminator = discriminator_net(data, c.width, c.hidden, c.depth, norm="batch", norm_first=False)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        c = self.config
        lr = c.lr or (2e-4 if self.data.kind is DataKind.IMAGE else 1e-3)
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=lr, betas=c.betas),
                "discriminator": torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=c.betas)}

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        real = self.preprocess(batch.x)
        fake = self.generator(torch.randn(len(real), self.config.latent_dim, device=real.device))
        d_loss = discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
        optim.step("discriminator", d_loss)
        # D's weights are constants in G's step: no need to accumulate their gradients
        self.discriminator.requires_grad_(False)
        try:
            g_loss = F.softplus(-self.discriminator(fake)).mean()  # -log sigmoid(D(G(z)))
            optim.step("generator", g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        fake = self.generator(self.randn(len(batch), self.config.latent_dim, generator=generator))
        return generator_validation(fake, self.preprocess(batch.x))

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, **options: Any) -> Tensor:
        z = self.randn(n, self.config.latent_dim, generator=generator)
        return self.postprocess(self.generator(z).view(n, *self.data.shape))
