"""Variational autoencoder (Kingma & Welling, 2014) and beta-VAE (Higgins et al., 2017).

Encoder q(z|x) = N(mu(x), diag sigma^2(x)), prior p(z) = N(0, I), decoder p(x|z) matched to the data:

* binary data (2 levels): Bernoulli;
* discrete levels: a categorical over the L levels per dimension, or a discretized logistic
  (Salimans et al., 2017) whose bins are the L levels;
* continuous data: a Gaussian with a learned per-dimension scale.

Training maximises the beta-weighted evidence lower bound

    ELBO_beta(x) = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)),

with one reparameterised sample z = mu + sigma * eps. With beta = 1 the ELBO is a lower bound on log p(x); the
importance-weighted bound (Burda et al., 2016) with K samples,

    log p(x) >= E[log (1/K) sum_k p(x, z_k) / q(z_k|x)],

tightens it as K grows. Both are reported in data units (log-probabilities over the data's levels when discrete).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
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
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
)
from genzoo.errors import ConfigError
from genzoo.nn import ConvDecoder, ConvEncoder, mlp
from genzoo.nn.discrete import discretized_logistic_log_prob
from genzoo.registry import register
from genzoo.searchspace import Choice, LogUniform, Param, Uniform

Likelihood = Literal["auto", "bernoulli", "categorical", "logistic", "gaussian"]


class VAEConfig(ModelConfig):
    latent_dim: int = 16
    width: int = 32  # conv base channels (images) or hidden units / 4 (vectors)
    beta: float = 1.0
    likelihood: Likelihood = "auto"
    lr: float = 2e-3
    iw_samples: int = 1  # K of the importance-weighted bound reported as the likelihood (1 = plain ELBO)


class VAESampleOptions(SampleOptions):
    mode: Literal["mean", "sample"] = Field("mean", description="'mean' of p(x|z) (smooth) or a 'sample' from it")


def choose_likelihood(requested: Likelihood, data: DataInfo) -> str:
    """'auto': Bernoulli for 2 levels, categorical up to 64 levels, discretized logistic above, else Gaussian."""
    if requested != "auto":
        if requested in ("bernoulli", "categorical", "logistic") and not data.levels:
            raise ValueError(f"likelihood '{requested}' needs discrete data; this data is continuous")
        return requested
    if not data.levels or data.kind is not DataKind.IMAGE:
        return "gaussian"
    if data.levels == 2:
        return "bernoulli"
    return "categorical" if data.levels <= 64 else "logistic"


@register
class VAE(GenerativeModel):
    """Variational autoencoder with a data-matched decoder likelihood; beta > 1 gives a beta-VAE."""

    name = "vae"
    quick_steps = 500
    family = "vae"
    Config = VAEConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(3e-4, 1e-2), "latent_dim": Choice(4, 8, 16, 32), "width": Choice(16, 32, 64),
        "beta": Uniform(0.5, 2.0),
    }
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.LIKELIHOOD_BOUND, Capability.ENCODE,
                                   Capability.DECODE, Capability.RECONSTRUCT, Capability.INTERPOLATE})
    validation_metric = "val_nelbo"
    smoke_config: ClassVar[dict[str, Any]] = {"latent_dim": 4, "width": 8}
    SampleOptions = VAESampleOptions
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64}

    def __init__(self, config: VAEConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        try:
            self.likelihood = choose_likelihood(config.likelihood, data)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        out_per_dim = {"bernoulli": 1, "categorical": data.levels or 1, "logistic": 2, "gaussian": 1}[self.likelihood]
        self.out_per_dim = out_per_dim
        latent = config.latent_dim
        if data.kind is DataKind.IMAGE:
            channels = data.shape[0]
            self.encoder = ConvEncoder(data.shape, 2 * latent, width=config.width, norm="group")
            self.decoder = ConvDecoder(latent, data.shape, channels * out_per_dim, width=config.width, norm="group")
        else:
            hidden = [4 * config.width, 4 * config.width]
            self.encoder = mlp(data.dims, hidden, 2 * latent)
            self.decoder = mlp(latent, hidden[::-1], data.dims * out_per_dim)
        if self.likelihood == "gaussian":
            self.log_sigma = nn.Parameter(torch.zeros(data.dims))

    # ----- q(z|x) and p(x|z) -----------------------------------------------------------------------------------
    def posterior(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """q(z|x): mean and log-variance of the Gaussian posterior."""
        stats = self.encoder(self.preprocess(x).reshape(len(x), *self._net_shape()))
        mu, logvar = stats.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 8.0)

    def _net_shape(self) -> tuple[int, ...]:
        return self.data.shape if self.data.kind is DataKind.IMAGE else (self.data.dims,)

    def _decoder_params(self, z: Tensor) -> Tensor:
        """Decoder output reshaped to (B, D, out_per_dim)."""
        out = self.decoder(z)
        if self.data.kind is DataKind.IMAGE:
            b, _, h, w = out.shape
            channels = self.data.shape[0]
            out = out.view(b, channels, self.out_per_dim, h, w).permute(0, 1, 3, 4, 2)
        return out.reshape(len(z), self.data.dims, self.out_per_dim)

    def _levels(self, x: Tensor) -> Tensor:
        """Data in [0, 1] with L levels -> integer level index 0..L-1."""
        return (x.reshape(len(x), -1) * (self.data.levels - 1)).round().long()

    def log_px_given_z(self, x: Tensor, params: Tensor) -> Tensor:
        """log p(x|z) summed over dimensions, in data units."""
        if self.likelihood == "bernoulli":
            target = x.reshape(len(x), -1)
            return -F.binary_cross_entropy_with_logits(params[..., 0], target, reduction="none").sum(1)
        if self.likelihood == "categorical":
            return torch.gather(F.log_softmax(params, -1), 2, self._levels(x).unsqueeze(-1)).squeeze(-1).sum(1)
        if self.likelihood == "logistic":
            mean, log_scale = params[..., 0], params[..., 1].clamp_min(-7.0)
            return discretized_logistic_log_prob(self._levels(x), mean, log_scale, self.data.levels).sum(1)
        target = self.preprocess(x).reshape(len(x), -1)
        log_sigma = self.log_sigma.clamp(-7.0, 5.0)
        z_score = (target - params[..., 0]) / log_sigma.exp()
        log_density = -0.5 * z_score**2 - log_sigma - 0.5 * math.log(2 * math.pi)
        return log_density.sum(1) + self.preprocess_log_det()

    def decode(self, z: Tensor) -> Tensor:
        """The mean of p(x|z) in data units."""
        params = self._decoder_params(z)
        if self.likelihood == "bernoulli":
            mean = torch.sigmoid(params[..., 0])
        elif self.likelihood == "categorical":
            grid = torch.linspace(0, 1, self.data.levels, device=z.device)
            mean = (F.softmax(params, -1) * grid).sum(-1)
        elif self.likelihood == "logistic":
            mean = ((params[..., 0].clamp(-1, 1)) + 1) / 2
        else:
            return self.postprocess(params[..., 0]).reshape(len(z), *self.data.shape)
        return mean.reshape(len(z), *self.data.shape)

    def _draw(self, params: Tensor, generator: torch.Generator) -> Tensor:
        """A sample from p(x|z) in data units."""
        if self.likelihood == "bernoulli":
            u = torch.rand(params.shape[:2], generator=generator).to(params.device)
            return (u < torch.sigmoid(params[..., 0])).float()
        if self.likelihood == "categorical":
            probs = F.softmax(params, -1).reshape(-1, self.data.levels).cpu()
            k = torch.multinomial(probs, 1, generator=generator).view(params.shape[:2]).to(params.device)
            return k.float() / (self.data.levels - 1)
        if self.likelihood == "logistic":
            u = torch.rand(params.shape[:2], generator=generator).clamp(1e-5, 1 - 1e-5).to(params.device)
            y = params[..., 0] + params[..., 1].exp() * (u.log() - (-u).log1p())
            return ((y.clamp(-1, 1) + 1) / 2 * (self.data.levels - 1)).round() / (self.data.levels - 1)
        noise = self.randn(*params.shape[:2], generator=generator)
        return self.postprocess(params[..., 0] + self.log_sigma.exp() * noise)

    # ----- the bound -------------------------------------------------------------------------------------------
    @staticmethod
    def kl_to_prior(mu: Tensor, logvar: Tensor) -> Tensor:
        """KL(N(mu, sigma^2) || N(0, I)) = 1/2 sum(mu^2 + sigma^2 - log sigma^2 - 1)."""
        return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0).sum(1)

    def elbo_terms(self, x: Tensor, eps: Tensor) -> tuple[Tensor, Tensor]:
        """(E_q log p(x|z) with one sample, KL) per example, using the given standard-normal noise ``eps``."""
        mu, logvar = self.posterior(x)
        z = mu + (0.5 * logvar).exp() * eps
        return self.log_px_given_z(x, self._decoder_params(z)), self.kl_to_prior(mu, logvar)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        x = batch.x
        rec, kl = self.elbo_terms(x, torch.randn(len(x), self.config.latent_dim, device=x.device))
        loss = -(rec - self.config.beta * kl).mean()
        optim.step("model", loss / self.data.dims)  # per-dimension scale keeps lr meaningful across shapes
        return {"loss": loss.item(), "rec": -rec.mean().item(), "kl": kl.mean().item()}

    @torch.no_grad()
    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        x = batch.x
        rec, kl = self.elbo_terms(x, self.randn(len(x), self.config.latent_dim, generator=generator))
        nelbo = -(rec - kl).mean()  # beta = 1: a true bound whatever beta trained with
        return {"val_nelbo": float(nelbo), "val_bpd": float(nelbo) / (self.data.dims * math.log(2)),
                "val_kl": float(kl.mean())}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None, samples: int | None = None,
                       generator: torch.Generator | None = None) -> LogLikelihood:
        """Importance-weighted lower bound with K = ``samples`` (default ``iw_samples``; K = 1 is the ELBO)."""
        k = samples or self.config.iw_samples
        generator = generator or torch.Generator().manual_seed(0)
        mu, logvar = self.posterior(x)
        std = (0.5 * logvar).exp()
        log_w = []
        for _ in range(k):
            eps = self.randn(*mu.shape, generator=generator)
            z = mu + std * eps
            log_q = (-0.5 * eps.pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(1)
            log_prior = (-0.5 * z.pow(2) - 0.5 * math.log(2 * math.pi)).sum(1)
            log_w.append(self.log_px_given_z(x, self._decoder_params(z)) + log_prior - log_q)
        values = torch.logsumexp(torch.stack(log_w), 0) - math.log(k)
        method = "ELBO" if k == 1 else f"IWAE bound, K={k}"
        return LogLikelihood(values, "lower_bound", discrete=self.likelihood != "gaussian", method=method)

    # ----- generation and latent-space tools -------------------------------------------------------------------
    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: VAESampleOptions) -> Tensor:
        """z ~ N(0, I), then the decoder's mean (``mode='mean'``, default) or a draw from p(x|z) (``'sample'``)."""
        z = self.randn(n, self.config.latent_dim, generator=generator)
        if options.mode == "mean":
            return self.decode(z)
        return self._draw(self._decoder_params(z), generator).reshape(n, *self.data.shape)

    def export_module(self, batch: int, context: int | None = None) -> ExportSpec:
        """The decoder's mean: z (batch, latent_dim) -> E[x|z] in data units (``mode='mean'`` sampling)."""
        return ExportSpec(ExportModule(self, self.decode), {"z": torch.zeros(batch, self.config.latent_dim)}, "x",
                          "z ~ N(0, I); x = module(z), the mean of p(x|z), in data units", noise=("z",))

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """The posterior mean of q(z|x): (B, latent_dim)."""
        return self.posterior(x)[0]

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """decode(mean of q(z|x))."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def interpolate(self, a: Tensor, b: Tensor, n: int = 8) -> Tensor:
        """Decode ``n`` points on the straight line between the posterior means of two examples: (n, *shape)."""
        z_a, z_b = self.encode(a.unsqueeze(0)), self.encode(b.unsqueeze(0))
        t = torch.linspace(0, 1, n, device=z_a.device).unsqueeze(1)
        return self.decode((1 - t) * z_a + t * z_b)
