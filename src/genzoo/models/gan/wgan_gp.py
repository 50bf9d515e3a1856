"""WGAN-GP (Gulrajani et al., 2017): a generator G trained against a 1-Lipschitz critic f.

The critic estimates the Wasserstein-1 distance by the Kantorovich-Rubinstein dual,
W(P_data, P_G) = sup_{|f|_L <= 1} E_x f(x) - E_z f(G(z)). The Lipschitz constraint is enforced softly by penalising
the critic's gradient norm on random interpolates x_hat = e x + (1 - e) G(z), e ~ U(0, 1):

    L_f = E_z f(G(z)) - E_x f(x) + lambda E_x_hat (|grad f(x_hat)|_2 - 1)^2,
    L_G = -E_z f(G(z)).

The critic takes a step every training step and G every ``n_critic``-th. The paper's n_critic = 5 with
Adam(1e-4, betas (0, 0.9)) gives G a fifth of the updates; the defaults here are n_critic = 1 and Adam(2e-4, betas
(0, 0.9)) for both, which on digits follows DCGAN's validation MMD step for step (docs/gans.md has the measurements;
``--set n_critic=5 --set lr=1e-4`` restores the paper's). ``gp_center = 0`` makes the penalty zero-centred. The
penalty is per example, so the critic must not use batch norm (it couples examples): conv critics use
group norm, MLP critics none. The generator is the DCGAN one. Validation: unbiased squared MMD between generated
and held-out examples in network units, as for DCGAN.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from pydantic import Field
from torch import Tensor

from genzoo.contract import Batch, DataInfo, Optimizers
from genzoo.models.gan.base import GAN, GANConfig
from genzoo.nn.gan import discriminator_net, generator_net
from genzoo.registry import register
from genzoo.searchspace import Choice, IntRange, LogUniform, Param


class WGANGPConfig(GANConfig):
    lr: float = Field(2e-4, gt=0, description="Adam learning rate of G and the critic (lr_g/lr_d override it)")
    betas: tuple[float, float] = Field((0.0, 0.9), description="Adam betas of G and the critic")
    gp_weight: float = Field(10.0, ge=0, description="lambda, weight of the gradient penalty")
    gp_center: float = Field(1.0, ge=0, description="gradient norm the penalty pulls towards: 1 (Gulrajani et al.) "
                             "or 0 (zero-centred, Thanh-Tung et al., 2019)")
    n_critic: int = Field(1, ge=1, description="critic steps per generator step (the paper: 5)")


def gradient_penalty(critic: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor, mix: Tensor,
                     center: float = 1.0) -> Tensor:
    """E (|grad f(x_hat)|_2 - center)^2 at x_hat = mix * real + (1 - mix) * fake; ``mix`` holds one e per example.

    Built with ``create_graph`` so that the penalty is differentiable in the critic's parameters.
    """
    e = mix.view(-1, *([1] * (real.dim() - 1)))
    x_hat = (e * real + (1 - e) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - center).square().mean()


@register
class WGANGP(GAN):
    """Wasserstein GAN with gradient penalty: a generator against a 1-Lipschitz critic."""

    name = "wgan-gp"
    scores_are_logits = False
    quick_steps = 1000
    Config = WGANGPConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(5e-5, 2e-3), "n_critic": IntRange(1, 5), "gp_weight": LogUniform(1.0, 20.0),
        "latent_dim": Choice(16, 32, 64, 128), "width": Choice(16, 32, 64),
    }
    config: WGANGPConfig

    def __init__(self, config: WGANGPConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        self.generator = generator_net(data, c.latent_dim, c.width, c.hidden, c.depth, norm="batch")
        self.critic = discriminator_net(data, c.width, c.hidden, c.depth, norm="group", norm_first=True)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return self.adam_pair(self.critic, self.config.lr, self.config.betas)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        c = self.config
        real = self.preprocess(batch.x)
        n = len(real)
        with torch.no_grad():
            fake = self.generator(self.latent(n, real.device))
        real, fake = self.augment(real), self.augment(fake)
        real_scores, fake_scores = self.critic(real), self.critic(fake)
        wasserstein = real_scores.mean() - fake_scores.mean()
        gp = gradient_penalty(self.critic, real, fake, torch.rand(n, device=real.device), c.gp_center)
        d_loss = -wasserstein + c.gp_weight * gp
        optim.step("discriminator", d_loss)
        out = {"d_loss": d_loss.item(), "wasserstein": wasserstein.item(), "gp": gp.item(),
               **self.discriminator_accuracy(real_scores, fake_scores)}
        if step % c.n_critic == 0:
            self.critic.requires_grad_(False)  # the critic is a constant in G's step
            try:
                g_loss = -self.critic(self.augment(self.generator(self.latent(n, real.device)))).mean()
                optim.step("generator", g_loss)
            finally:
                self.critic.requires_grad_(True)
            out["g_loss"] = g_loss.item()
        return out
