"""Class-conditional GAN with a projection discriminator (Miyato & Koyama, 2018) and the hinge loss.

The generator takes a class y with the latent code: G(z, y) = G([z, e_G(y)]), a learned class embedding e_G(y)
concatenated to z. The discriminator scores an (example, class) pair by projection,

    D(x, y) = psi(phi(x)) + <e_D(y), phi(x)>,

with phi a convolutional feature extractor (ReLU features), psi a linear unconditional score and e_D a class
embedding: the class term is the log-ratio of the class-conditional to the marginal density under a log-linear
model, instead of concatenating y to the input. Both play the hinge game (Lim & Ye, 2017; Miyato et al., 2018):

    L_D = E_(x,y) max(0, 1 - D(x, y)) + E_(z,y) max(0, 1 + D(G(z, y), y)),
    L_G = -E_(z,y) D(G(z, y), y),

the fakes taking the classes of the real batch (so the class mix is the data's). ``spectral_norm`` (on by
default: on digits it halves the FD of batch norm at equal steps, docs/gans.md) divides every D weight by its
largest singular value; with ``spectral_norm=false`` D uses batch norm (after its first layer, as DCGAN).

Sampling with labels draws those classes; without, classes are drawn in the training proportions, counted in the
``class_counts`` buffer over the batches seen in training (uniform before any).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import Batch, Capability, DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError
from genzoo.models.gan.base import GAN, GANConfig
from genzoo.nn.conv import ConvEncoder
from genzoo.nn.gan import generator_net, spectral_normalise
from genzoo.registry import register


class CGANConfig(GANConfig):
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of G and D (lr_g/lr_d override it)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of G and D")
    embed_dim: int = Field(16, ge=1, description="size of the generator's class embedding, concatenated to z")
    feature_dim: int = Field(128, ge=1, description="size of the discriminator's features phi(x)")
    spectral_norm: bool = Field(True, description="spectral normalisation of every discriminator layer (false: "
                                "batch norm in D instead)")


class ConditionalGenerator(nn.Module):
    """G(z, y) = G([z, e_G(y)])."""

    def __init__(self, data: DataInfo, config: CGANConfig) -> None:
        super().__init__()
        c = config
        self.embed = nn.Embedding(data.num_classes, c.embed_dim)
        self.net = generator_net(data, c.latent_dim + c.embed_dim, c.width, c.hidden, c.depth, norm="batch")

    def forward(self, z: Tensor, y: Tensor) -> Tensor:
        return self.net(torch.cat([z, self.embed(y)], dim=1))


class ProjectionDiscriminator(nn.Module):
    """D(x, y) = psi(phi(x)) + <e_D(y), phi(x)>, one score per example."""

    def __init__(self, data: DataInfo, config: CGANConfig) -> None:
        super().__init__()
        c = config
        norm = "none" if c.spectral_norm else "batch"
        self.phi = nn.Sequential(ConvEncoder(data.shape, c.feature_dim, width=c.width, norm=norm, norm_first=False),
                                 nn.ReLU())
        self.psi = nn.Linear(c.feature_dim, 1)
        self.embed = nn.Embedding(data.num_classes, c.feature_dim)
        if c.spectral_norm:
            spectral_normalise(self)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        h = self.phi(x)
        return self.psi(h).squeeze(1) + (self.embed(y) * h).sum(1)


def hinge_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """L_D = E max(0, 1 - D(real)) + E max(0, 1 + D(fake))."""
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


@register
class CGAN(GAN):
    """Class-conditional GAN: generator given (z, class) against a projection discriminator, hinge loss."""

    name = "cgan"
    quick_steps = 1500
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE})
    Config = CGANConfig
    config: CGANConfig

    def __init__(self, config: CGANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if not data.conditional:
            raise ConfigError(f"cgan needs class labels; the data '{data.spec}' has none (use labelled images such "
                              "as digits or mnist)")
        self.generator = ConditionalGenerator(data, config)
        self.discriminator = ProjectionDiscriminator(data, config)
        self.register_buffer("class_counts", torch.zeros(data.num_classes))

    def synthesize(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.generator(z, labels)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.adam_pair(self.discriminator, self.config.lr, self.config.betas)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        real, y = self.preprocess(batch.x), batch.y
        self.class_counts += torch.bincount(y, minlength=self.data.num_classes)
        fake = self.generator(self.latent(len(real), real.device), y)
        real_scores = self.discriminator(self.augment(real), y)
        fake_scores = self.discriminator(self.augment(fake.detach()), y)
        d_loss = hinge_discriminator_loss(real_scores, fake_scores)
        optim.step("discriminator", d_loss)
        self.discriminator.requires_grad_(False)  # D is a constant in G's step
        try:
            g_loss = -self.discriminator(self.augment(fake), y).mean()
            optim.step("generator", g_loss)
        finally:
            self.discriminator.requires_grad_(True)
        return {"d_loss": d_loss.item(), "g_loss": g_loss.item(),
                **self.discriminator_accuracy(real_scores, fake_scores)}

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: object) -> Tensor:
        if labels is None:
            total = self.class_counts.sum()
            weights = self.class_counts / total if total > 0 else torch.ones_like(self.class_counts)
            labels = torch.multinomial(weights.cpu(), n, replacement=True, generator=generator).to(self.device)
        return super()._sample(n, generator, labels, options)
