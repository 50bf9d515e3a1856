"""What every GAN here shares: a latent code z ~ N(0, I) of size ``latent_dim``, a generator G(z), and its health.

Sampling is x = G(z). A GAN has no likelihood, so validation compares ``len(batch)`` generated samples with the
held-out batch by the unbiased squared MMD in network units (Gaussian kernel, bandwidth a quarter of the median
pairwise distance, which is sensitive to local structure; see :mod:`genzoo.metrics.mmd`). Each model file adds
its adversary, its losses and its optimizers.

Training health, shared by every GAN:

* **balance** — each training step logs how well D tells real from fake (:meth:`GAN.discriminator_accuracy`):
  ``d_acc_real``/``d_acc_fake`` for a real/fake classifier, and ``d_acc`` for every adversary (a critic's share of
  (real, fake) pairs ranked the right way round). ``d_acc`` stuck at 1 means D has won and G learns nothing.
* **mode collapse** — validation draws a fixed batch (the validation generator is reseeded every time) and reports
  ``val_diversity`` = mean pairwise distance of the generated batch / that of the held-out batch (about 1 for a
  good generator, 0 for a constant one). When it falls below ``collapse_ratio`` times the highest value seen so
  far, a :class:`ModeCollapseWarning` is issued, once per model. (Relative to the best so far, because an untrained
  generator starts with little diversity and is not collapsed.)
* **DiffAugment** (``diffaugment=true``, images) — :meth:`GAN.augment` applies the same kind of random, differentiable
  translation + cutout to real and fake images on their way into D; sampling never goes through it.
* **TTUR** (Heusel et al., 2017) — ``lr_g``/``lr_d`` give G and D their own learning rates
  (:meth:`GAN.adam_pair`); unset, both take the model's ``lr``.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    Capability,
    DataInfo,
    DataKind,
    ExportModule,
    ExportSpec,
    GenerativeModel,
    ModelConfig,
)
from genzoo.errors import ConfigError
from genzoo.metrics.mmd import generator_validation
from genzoo.nn.gan import classifier_accuracy, critic_accuracy, diff_augment, mean_pairwise_distance


class ModeCollapseWarning(UserWarning):
    """The generator's samples have become much less varied than the data."""


class GANConfig(ModelConfig):
    latent_dim: int = Field(64, ge=1, description="size of the latent code z")
    width: int = Field(32, ge=1, description="conv base channels (images)")
    hidden: int = Field(256, ge=1, description="MLP hidden units (vector data)")
    depth: int = Field(3, ge=1, description="MLP hidden layers (vector data)")
    lr_g: float | None = Field(None, gt=0, description="generator learning rate (TTUR); None: the model's lr")
    lr_d: float | None = Field(None, gt=0, description="discriminator (critic) learning rate (TTUR); None: the "
                               "model's lr")
    diffaugment: bool = Field(False, description="DiffAugment: random translation + cutout of real and fake images "
                              "before D (small datasets); images only")
    collapse_ratio: float = Field(0.5, ge=0, le=1, description="warn of mode collapse when the diversity of a fixed "
                                  "batch of samples (relative to held-out data) falls below this fraction of its "
                                  "highest value so far")


class GAN(GenerativeModel):
    """Base of the GANs: latent sampling, sampling and validation through ``self.generator``, training health."""

    family = "gan"
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE})
    validation_metric = "val_mmd"
    smoke_config: ClassVar[dict[str, Any]] = {"latent_dim": 8, "width": 8, "hidden": 32, "depth": 2}
    # averaged generator weights give visibly cleaner samples (Yazici et al., 2019)
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999}
    #: True when D outputs a real/fake logit (real > 0); False for a critic, whose scores have no threshold
    scores_are_logits: ClassVar[bool] = True

    config: GANConfig
    generator: nn.Module

    def __init__(self, config: GANConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if config.diffaugment and data.kind is not DataKind.IMAGE:
            raise ConfigError(f"diffaugment=true augments images; '{self.name}' is trained on {data.kind.value} data")
        self.diversity_peak = 0.0  # this session's highest val_diversity (not saved: a resumed run starts anew)
        self.collapse_warned = False

    def latent(self, n: int, device: torch.device) -> Tensor:
        """z ~ N(0, I) for a training step (the trainer seeds the global generator)."""
        return torch.randn(n, self.config.latent_dim, device=device)

    def synthesize(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """G(z) in network units; ``labels`` are for class-conditional generators (unconditional ones ignore them)."""
        return self.generator(z)

    def adam_pair(self, discriminator: nn.Module, lr: float, betas: tuple[float, float]
                  ) -> dict[str, torch.optim.Optimizer]:
        """Adam for the generator and for ``discriminator``, at ``lr_g``/``lr_d`` when set (TTUR), else ``lr``."""
        c = self.config
        return {"generator": torch.optim.Adam(self.generator.parameters(), lr=c.lr_g or lr, betas=betas),
                "discriminator": torch.optim.Adam(discriminator.parameters(), lr=c.lr_d or lr, betas=betas)}

    def augment(self, x: Tensor) -> Tensor:
        """A batch on its way into D: DiffAugmented when ``diffaugment`` is on, else unchanged."""
        return diff_augment(x) if self.config.diffaugment else x

    def discriminator_accuracy(self, real_scores: Tensor, fake_scores: Tensor) -> dict[str, float]:
        """How well D separates this step's real and fake batches (see the module docstring), for the step's log."""
        if not self.scores_are_logits:
            return {"d_acc": critic_accuracy(real_scores.detach(), fake_scores.detach())}
        real, fake = classifier_accuracy(real_scores.detach(), fake_scores.detach())
        return {"d_acc": (real + fake) / 2, "d_acc_real": real, "d_acc_fake": fake}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        fake = self.synthesize(self.randn(len(batch), self.config.latent_dim, generator=generator), batch.y)
        real = self.preprocess(batch.x)
        metrics = generator_validation(fake, real)
        if "val_mmd" in metrics and torch.isfinite(fake).all():
            metrics["val_diversity"] = (mean_pairwise_distance(fake) / mean_pairwise_distance(real)).item()
            self.warn_if_collapsed(metrics["val_diversity"])
        return metrics

    def warn_if_collapsed(self, diversity: float) -> None:
        """One :class:`ModeCollapseWarning` per model when ``diversity`` falls below ``collapse_ratio`` times its
        highest value so far."""
        self.diversity_peak = max(self.diversity_peak, diversity)
        if diversity < self.config.collapse_ratio * self.diversity_peak and not self.collapse_warned:
            self.collapse_warned = True
            warnings.warn(f"{self.name}: possible mode collapse: the samples' diversity fell to {diversity:.2f}x the "
                          f"held-out data's, from {self.diversity_peak:.2f}x (mean pairwise distance of a fixed "
                          "batch). Try a lower learning rate, lr_d > lr_g, diffaugment=true or spectral normalisation",
                          ModeCollapseWarning, stacklevel=2)

    def ema_targets(self) -> list[nn.Module]:
        """Only the generator is averaged: the adversary trains on live weights and is never sampled."""
        return [self.generator]

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        z = self.randn(n, self.config.latent_dim, generator=generator)
        return self.generate_from(z, labels)

    def generate_from(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """x = G(z) in data units."""
        return self.postprocess(self.synthesize(z, labels).view(len(z), *self.data.shape))

    def export_module(self, batch: int, context: int | None = None) -> ExportSpec:
        """G as a network z (batch, latent_dim) [, labels (batch,)] -> x in data units."""
        inputs = {"z": torch.zeros(batch, self.config.latent_dim)}
        sampling = "z ~ N(0, I); x = module(z) in data units"
        if Capability.CONDITIONAL_SAMPLE in self.capabilities:
            inputs["labels"] = torch.arange(batch) % self.data.num_classes
            sampling = f"z ~ N(0, I), labels in 0..{self.data.num_classes - 1}; x = module(z, labels) in data units"
        return ExportSpec(ExportModule(self, self.generate_from), inputs, "x", sampling, noise=("z",))
