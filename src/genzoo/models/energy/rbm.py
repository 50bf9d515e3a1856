"""Bernoulli restricted Boltzmann machine (Smolensky, 1986; Hinton, 2002), trained by contrastive divergence
(CD-k) or persistent contrastive divergence (Tieleman, 2008), with an annealed-importance-sampling estimate of its
log-likelihood (Salakhutdinov & Murray, 2008).

Binary visible units v (D) and hidden units h (H) with energy and free energy

    E(v, h) = -b^T v - c^T h - v^T W h,
    F(v) = -log sum_h exp(-E(v, h)) = -b^T v - sum_j softplus(c_j + (v^T W)_j),

so p(v) = exp(-F(v)) / Z. The conditionals factorise: p(h_j = 1 | v) = sigmoid(c_j + (v^T W)_j) and
p(v_i = 1 | h) = sigmoid(b_i + (W h)_i), which block Gibbs sampling alternates.

Training: the log-likelihood gradient is -dF(x+)/dtheta + E_p[dF(v)/dtheta]; CD-k estimates the second term at x-,
k Gibbs steps from the data (or, persistent, from chains kept across steps). The loss F(x+) - F(x-) with x- detached
has exactly this gradient, so the optimizer (SGD with momentum and weight decay) steps it like any other loss.

On data with more than two levels (8x8 digits: 17) the pixel intensities are read as Bernoulli probabilities: each
training step draws a binary image from them, and samples are binary images (0 and 1 are on every level grid).

The likelihood estimate. AIS anneals from a base-rate RBM p_A(v) = prod_i sigmoid(a_i)^v_i (1 - sigmoid(a_i))^(1-v_i)
(a = logits of the training pixel marginals, W = 0) to the model along the geometric path

    p*_k(v) = exp(-(1 - beta_k) F_A(v) - beta_k F(v)),    F_A(v) = -a^T v,    0 = beta_0 < ... < beta_K = 1,

with a Gibbs transition at each beta_k. M runs give importance weights w whose mean is an unbiased estimate of
Z / Z_A, with log Z_A = sum_i softplus(a_i); log p(v) = -F(v) - log Z_hat is therefore an *estimate* (log of an
unbiased estimate: on average it underestimates log Z, so it overestimates log p a little). It is only defined for
binary data, where the model's p(v) is the probability of the data's levels.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar

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
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
)
from genzoo.errors import GenzooError
from genzoo.registry import register


class RBMConfig(ModelConfig):
    hidden: int = Field(128, ge=1, description="number of binary hidden units H")
    k: int = Field(1, ge=1, description="Gibbs steps per negative sample (CD-k / PCD-k)")
    persistent: bool = Field(False, description="persistent CD: negative chains continue across training steps")
    chains: int = Field(100, ge=1, description="persistent chains (with persistent=true)")
    lr: float = Field(0.05, gt=0, description="SGD learning rate")
    momentum: float = Field(0.5, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0, description="L2 weight decay")
    ais_runs: int = Field(100, ge=1, description="AIS runs M for the log-likelihood estimate")
    ais_betas: int = Field(1000, ge=1, description="AIS intermediate distributions K (inverse temperatures)")


class RBMSampleOptions(SampleOptions):
    gibbs_steps: int = Field(1000, ge=1, description="block Gibbs steps from the base-rate distribution")


def bernoulli(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """A binary draw with P(1) = p, from ``generator`` (None: the global one) on the CPU."""
    return (torch.rand(p.shape, generator=generator).to(p.device) < p).to(p.dtype)


@register
class RBM(GenerativeModel):
    """Bernoulli-Bernoulli RBM: CD-k or PCD training, Gibbs sampling, free energy score, AIS log-likelihood."""

    name = "rbm"
    quick_steps = 5000
    family = "energy"
    Config = RBMConfig
    SampleOptions = RBMSampleOptions
    data_kinds = frozenset({DataKind.IMAGE})
    # the closest flag to an AIS estimate; removed on non-binary data (see ``capabilities``)
    base_capabilities = frozenset({Capability.SAMPLE, Capability.LIKELIHOOD_BOUND, Capability.ANOMALY_SCORE})
    validation_metric = "val_npll"
    score_name: ClassVar[str] = "free_energy"
    smoke_config: ClassVar[dict[str, Any]] = {"hidden": 16, "chains": 16, "ais_runs": 8, "ais_betas": 50}
    smoke_sample_options: ClassVar[dict[str, Any]] = {"gibbs_steps": 10}

    config: RBMConfig

    def __init__(self, config: RBMConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        d = data.dims
        self.weight = nn.Parameter(0.01 * torch.randn(d, config.hidden))
        self.visible_bias = nn.Parameter(torch.zeros(d))
        self.hidden_bias = nn.Parameter(torch.zeros(config.hidden))
        # logits of the training pixel marginals: the AIS base-rate model and the Gibbs sampler's start
        self.register_buffer("base_logits", torch.zeros(d))
        self.register_buffer("persistent_chains", torch.zeros(config.chains, d))

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The AIS likelihood is a probability of binary images: only on binary data."""
        caps = super().capabilities
        return caps if self.data.levels == 2 else caps - {Capability.LIKELIHOOD_BOUND}

    # ----- the model -------------------------------------------------------------------------------------------
    def free_energy(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """F(v) per example of flat visibles (B, D); with ``beta``, the free energy of the RBM whose parameters are all
        scaled by beta: -beta b^T v - sum_j softplus(beta (c_j + (v^T W)_j))."""
        return -beta * (v @ self.visible_bias) - F.softplus(beta * (v @ self.weight + self.hidden_bias)).sum(1)

    def hidden_probs(self, v: Tensor, beta: float = 1.0) -> Tensor:
        """p(h = 1 | v) = sigmoid(beta (c + v^T W))."""
        return torch.sigmoid(beta * (v @ self.weight + self.hidden_bias))

    def visible_probs(self, h: Tensor, beta: float = 1.0) -> Tensor:
        """p(v = 1 | h) at inverse temperature beta on the AIS path: sigmoid((1 - beta) a + beta (b + W h))."""
        return torch.sigmoid((1.0 - beta) * self.base_logits + beta * (h @ self.weight.T + self.visible_bias))

    def gibbs(self, v: Tensor, steps: int, generator: torch.Generator | None = None, beta: float = 1.0) -> Tensor:
        """``steps`` block Gibbs sweeps v -> h -> v at inverse temperature ``beta``."""
        for _ in range(steps):
            h = bernoulli(self.hidden_probs(v, beta), generator)
            v = bernoulli(self.visible_probs(h, beta), generator)
        return v

    def _flat(self, x: Tensor) -> Tensor:
        return x.reshape(len(x), -1).to(self.device)

    # ----- training --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.config
        return {"model": torch.optim.SGD(self.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)}

    @torch.no_grad()
    def setup(self, first_batch: Batch) -> None:
        """Visible biases and the base-rate model at the (smoothed) pixel marginals; persistent chains drawn from it."""
        x = self._flat(first_batch.x)
        p = (x.sum(0) + 1.0) / (len(x) + 2.0)
        self.base_logits.copy_(p.log() - (-p).log1p())
        self.visible_bias.copy_(self.base_logits)
        self.persistent_chains.copy_(bernoulli(torch.sigmoid(self.base_logits).expand_as(self.persistent_chains)))

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        cfg = self.config
        positive = bernoulli(self._flat(batch.x))  # intensities as probabilities; binary data stays binary
        with torch.no_grad():
            start = self.persistent_chains if cfg.persistent else positive
            negative = self.gibbs(start, cfg.k)
            if cfg.persistent:
                self.persistent_chains.copy_(negative)
        loss = self.free_energy(positive).mean() - self.free_energy(negative).mean()
        optim.step("model", loss)
        return {"loss": loss.item()}

    @torch.no_grad()
    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Negative pseudo-log-likelihood in bits per dimension of the (binarised) held-out batch."""
        v = bernoulli(self._flat(batch.x), generator)
        return {"val_npll": float(-self.pseudo_log_likelihood(v).mean()) / (self.data.dims * math.log(2))}

    def pseudo_log_likelihood(self, v: Tensor) -> Tensor:
        """sum_i log p(v_i | v_-i) = sum_i log sigmoid(F(v with v_i flipped) - F(v)), exactly (D flips)."""
        d = v.shape[1]
        flipped = v.unsqueeze(1).repeat(1, d, 1)
        diagonal = torch.arange(d, device=v.device)
        flipped[:, diagonal, diagonal] = 1.0 - flipped[:, diagonal, diagonal]
        gap = self.free_energy(flipped.reshape(-1, d)).view(len(v), d) - self.free_energy(v).unsqueeze(1)
        return F.logsigmoid(gap).sum(1)

    # ----- sampling, score, likelihood -------------------------------------------------------------------------
    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: RBMSampleOptions) -> Tensor:
        """Binary images: ``gibbs_steps`` block Gibbs sweeps from the base-rate distribution."""
        start = bernoulli(torch.sigmoid(self.base_logits).expand(n, -1), generator)
        return self.gibbs(start, options.gibbs_steps, generator).view(n, *self.data.shape)

    def cost(self, **options: Any) -> Cost:
        """One sweep is two matrix products with W (D x H multiply-adds each) per sample."""
        steps = self.sample_options(**options).gibbs_steps
        return Cost(nfe_per_sample=steps, flops_per_sample=steps * 4.0 * self.weight.numel())

    def score(self, x: Tensor) -> Tensor:
        """The free energy F(x) per example (of the intensities on non-binary data): -log p(x) - log Z."""
        with eval_mode(self), torch.no_grad():
            return self.free_energy(self._flat(x))

    @torch.no_grad()
    def log_partition(self, runs: int, betas: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """AIS estimate of log Z with ``runs`` chains and ``betas`` steps beta_k = k / K: (log Z_hat, log weights)."""
        schedule = torch.linspace(0.0, 1.0, betas + 1).tolist()
        base = torch.sigmoid(self.base_logits).expand(runs, -1)
        v = bernoulli(base, generator)
        log_w = torch.zeros(runs, device=v.device)
        for previous, beta in itertools.pairwise(schedule):
            log_w += self._path_energy(v, previous) - self._path_energy(v, beta)
            v = self.gibbs(v, 1, generator, beta)
        log_z_base = F.softplus(self.base_logits).sum() + self.config.hidden * math.log(2.0)
        return log_z_base + torch.logsumexp(log_w, 0) - math.log(runs), log_w

    def _path_energy(self, v: Tensor, beta: float) -> Tensor:
        """-log p*_beta(v) = -(1 - beta) a^T v + F_beta(v): the energy of the path's distribution at ``beta``."""
        return -(1.0 - beta) * (v @ self.base_logits) + self.free_energy(v, beta)

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p(x) = -F(x) - log Z_hat with the AIS estimate of log Z (fixed seed 0); binary data only."""
        if self.data.levels != 2:
            raise GenzooError(f"rbm: the AIS likelihood is of binary images; this data has {self.data.levels} "
                              "levels (binarize it, e.g. digits#binarize)")
        cfg = self.config
        log_z, _ = self.log_partition(cfg.ais_runs, cfg.ais_betas, torch.Generator().manual_seed(0))
        return LogLikelihood(-self.free_energy(self._flat(x)) - log_z, "estimate", discrete=True,
                             method=f"AIS, {cfg.ais_runs} runs, {cfg.ais_betas} temperatures")
