"""What every GAN here shares: a latent code z ~ N(0, I) of size ``latent_dim`` and a generator G(z).

Sampling is x = G(z). A GAN has no likelihood, so validation compares ``len(batch)`` generated samples with the
held-out batch by the unbiased squared MMD in network units (Gaussian kernel, bandwidth a quarter of the median
pairwise distance, which is sensitive to local structure; see :mod:`genzoo.metrics.mmd`). Each model file adds
its adversary, its losses and its optimizers.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import Batch, Capability, DataKind, GenerativeModel, ModelConfig
from genzoo.metrics.mmd import generator_validation


class GANConfig(ModelConfig):
    latent_dim: int = Field(64, ge=1, description="size of the latent code z")
    width: int = Field(32, ge=1, description="conv base channels (images)")
    hidden: int = Field(256, ge=1, description="MLP hidden units (vector data)")
    depth: int = Field(3, ge=1, description="MLP hidden layers (vector data)")


class GAN(GenerativeModel):
    """Base of the GANs: latent sampling, sampling and validation through ``self.generator``."""

    family = "gan"
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE})
    validation_metric = "val_mmd"
    smoke_config: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8, "hidden": 32, "depth": 2}
    # averaged generator weights give visibly cleaner samples (Yazici et al., 2019)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999}

    config: GANConfig
    generator: nn.Module

    def latent(self, n: int, device: torch.device) -> Tensor:
        """z ~ N(0, I) for a training step (the trainer seeds the global generator)."""
        return torch.randn(n, self.config.latent_dim, device=device)

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        fake = self.generator(self.randn(len(batch), self.config.latent_dim, generator=generator))
        return generator_validation(fake, self.preprocess(batch.x))

    def ema_targets(self) -> list[nn.Module]:
        """Only the generator is averaged: the adversary trains on live weights and is never sampled."""
        return [self.generator]

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        z = self.randn(n, self.config.latent_dim, generator=generator)
        return self.postprocess(self.generator(z).view(n, *self.data.shape))
