"""What the pixel-level autoregressive models (``pixelcnn``, ``gated-pixelcnn``, and ``made`` on images) share.

An image x with C channels and L discrete levels per value is factorised exactly in raster order, channels inside a
pixel (R -> G -> B):

    log p(x) = sum_{i, j} sum_c log p(x_{c,i,j} | x_{<(i, j)}, x_{<c, i, j}),

one network pass giving every conditional at once (masked layers, :mod:`genzoo.nn.masked`). Each conditional is an
*output head* over the L levels:

* ``categorical``: a softmax over the L levels (one logit, a Bernoulli, for binary data);
* ``logistic_mixture`` (Salimans et al., 2017): a mixture of M logistics on [-1, 1] whose mass is integrated over
  each level's bin (edge bins open to +-inf). The colour channels of a pixel are linked through the masks rather than
  PixelCNN++'s linear coefficients, so each sub-pixel has its own mixture.

Both give log-probabilities of the data's levels, so the likelihood is exact and discrete (bits/dim as in
``genzoo eval``). Sampling draws sub-pixel after sub-pixel (C*H*W network passes). Inpainting keeps the known
values and samples the unknown ones in the same order, conditioned on everything before them; ``candidates`` > 1
draws K completions and keeps the most likely completed image, so known pixels *after* a hole also count.
"""

from __future__ import annotations

import math
from typing import Any, Literal

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
from genzoo.errors import ConfigError
from genzoo.nn.discrete import discretized_logistic_log_prob, soft_floor
from genzoo.nn.masked import MaskedConv2d

Output = Literal["auto", "categorical", "logistic_mixture"]


# ----- levels and output heads over them ----------------------------------------------------------------------------
def to_levels(x: Tensor, levels: int) -> Tensor:
    """Values in [0, 1] -> level ids 0 .. L-1 (off-grid values go to the nearest level)."""
    return (x * (levels - 1)).round().long().clamp(0, levels - 1)


def from_levels(ids: Tensor, levels: int) -> Tensor:
    """Level ids -> values k / (L - 1) on the data's grid."""
    return ids.float() / (levels - 1)


class CategoricalHead:
    """p(k) = softmax(logits)_k over the L levels; binary data uses one logit a (logits [0, a]: a Bernoulli)."""

    def __init__(self, levels: int) -> None:
        self.levels = levels
        self.params = 1 if levels == 2 else levels

    def level_log_probs(self, params: Tensor) -> Tensor:
        """(B, P, ...) head parameters -> (B, L, ...) log-probabilities of every level."""
        if self.levels == 2:
            params = torch.cat([torch.zeros_like(params), params], dim=1)
        return F.log_softmax(params, dim=1)

    def log_prob(self, params: Tensor, ids: Tensor) -> Tensor:
        """log p(ids) elementwise: params (B, P, ...), ids (B, ...) -> (B, ...)."""
        return self.level_log_probs(params).gather(1, ids.unsqueeze(1)).squeeze(1)


class LogisticMixtureHead:
    """p(k) = sum_m pi_m [sigma((c_k + 1/(L-1) - mu_m) / s_m) - sigma((c_k - 1/(L-1) - mu_m) / s_m)], level centres
    c_k = 2k/(L-1) - 1 on [-1, 1], the first and last bins open to -inf and +inf. log s is soft-clamped at -7 from
    below (a spike narrower than a bin gains nothing and would overflow 1/s)."""

    def __init__(self, levels: int, mixtures: int) -> None:
        self.levels = levels
        self.params = 3 * mixtures

    def _mix(self, params: Tensor, k: Tensor) -> Tensor:
        """log p(k) for params (B, 3M, ...) and levels k broadcastable against (B, 1, ...)."""
        logits, mean, log_scale = params.chunk(3, dim=1)
        log_scale = soft_floor(log_scale, -7.0)
        log_mass = discretized_logistic_log_prob(k, mean, log_scale, self.levels)
        return torch.logsumexp(F.log_softmax(logits, 1) + log_mass, dim=1)

    def level_log_probs(self, params: Tensor) -> Tensor:
        k = torch.arange(self.levels, device=params.device).view(1, 1, -1, *[1] * (params.dim() - 2))
        return self._mix(params.unsqueeze(2), k)

    def log_prob(self, params: Tensor, ids: Tensor) -> Tensor:
        return self._mix(params, ids.unsqueeze(1))


Head = CategoricalHead | LogisticMixtureHead


def make_head(output: Output, levels: int, mixtures: int) -> Head:
    """'auto': categorical up to 8 levels (binary data: a Bernoulli), a logistic mixture above (digits' 17, 8-bit
    256): the mixture shares strength between neighbouring levels, which the categorical cannot (on digits it
    reached a lower bits/dim in fewer steps)."""
    if output == "auto":
        output = "categorical" if levels <= 8 else "logistic_mixture"
    return CategoricalHead(levels) if output == "categorical" else LogisticMixtureHead(levels, mixtures)


def draw_levels(log_probs: Tensor, temperature: float, generator: torch.Generator) -> Tensor:
    """One level per row of (B, L) log-probabilities, from p^(1/T) renormalised, drawn on the CPU."""
    probs = F.softmax(log_probs.float().cpu() / temperature, dim=1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(log_probs.device)


def adamw(module: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW with weight decay on kernels and matrices only (not on biases)."""
    decay = [p for p in module.parameters() if p.dim() >= 2]
    rest = [p for p in module.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                             lr=lr)


# ----- configuration and options shared by the pixel models ----------------------------------------------------------
class PixelConfig(ModelConfig):
    output: Output = Field("auto", description="categorical over the levels, logistic_mixture (Salimans et al., "
                           "2017), or auto (categorical up to 8 levels, logistic_mixture above)")
    mixtures: int = Field(5, ge=1, description="logistic components per sub-pixel (logistic_mixture)")
    lr: float = Field(2e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on weight matrices and kernels")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout inside the network while training")


class PixelSampling(SampleOptions):
    temperature: float = Field(1.0, gt=0, description="Sharpens (< 1) or flattens (> 1) every conditional: "
                               "levels are drawn from p^(1/T) renormalised; 1 samples the model")
    candidates: int = Field(1, ge=1, le=256, description="Draws per image; the one whose completed image has the "
                            "highest log-likelihood is kept (inpainting: lets known pixels after a hole count). "
                            "Costs K times the passes")


class PixelModel(GenerativeModel):
    """Base of ``pixelcnn`` and ``gated-pixelcnn``: a network (B, C, H, W) in [-1, 1] -> (B, P, C, H, W) head
    parameters, each sub-pixel's depending on earlier sub-pixels only. Subclasses build ``self.body`` (image ->
    (B, hidden, H, W) features with colour groups k mod C) and call :meth:`build_head`."""

    family = "autoregressive"
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.INPAINT})
    SampleOptions = PixelSampling
    validation_metric = "val_bpd"
    config: PixelConfig

    def __init__(self, config: PixelConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if not data.levels:
            raise ConfigError(f"model '{self.name}' models discrete pixel levels; this image data is continuous "
                              "(no levels). Use 8-bit, binary or digits images")
        self.levels = data.levels
        self.colors = data.shape[0]
        self.head = make_head(config.output, data.levels, config.mixtures)

    def colour_width(self, channels: int) -> int:
        """``channels`` rounded up to a multiple of C, so every colour group gets as many channels (and the halves
        of a gate keep their groups)."""
        return -(-channels // self.colors) * self.colors

    def build_output(self, channels: int) -> nn.Module:
        """ReLU, masked 1x1 (type B), ReLU, masked 1x1 to P parameters per sub-pixel (channel p*C + c: group c)."""
        c = self.colors
        return nn.Sequential(nn.ReLU(), MaskedConv2d(channels, channels, (1, 1), (0, 0), "B", c), nn.ReLU(),
                             MaskedConv2d(channels, self.head.params * c, (1, 1), (0, 0), "B", c))

    def features(self, x: Tensor) -> Tensor:
        """(B, C, H, W) in [-1, 1] -> (B, P*C, H, W): the network before the head."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) images in network units -> (B, P, C, H, W) head parameters."""
        b, c, h, w = x.shape
        return self.features(x).view(b, self.head.params, c, h, w)

    # ----- likelihood and training ---------------------------------------------------------------------------------
    def _params_of(self, ids: Tensor) -> Tensor:
        """Head parameters for images given as level ids (the network reads them on the grid, in [-1, 1])."""
        return self(self.preprocess(from_levels(ids, self.levels)))

    def _log_prob_ids(self, ids: Tensor) -> Tensor:
        return self.head.log_prob(self._params_of(ids), ids).flatten(1).sum(1)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) per example in nats over the data's levels (off-grid values count as their nearest level)."""
        return self._log_prob_ids(to_levels(x, self.levels))

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = -self.log_prob(batch.x).mean() / self.data.dims  # nats per dimension
        optim.step("model", loss)
        return {"loss": loss.item(), "bpd": loss.item() / math.log(2.0)}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_bpd": -self.log_prob(batch.x).mean().item() / (self.data.dims * math.log(2.0))}

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        with eval_mode(self):
            values = self.log_prob(x.to(self.device))
        return LogLikelihood(values, "exact", discrete=True, method=f"autoregressive over pixels ({self.name})")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": adamw(self, self.config.lr, self.config.weight_decay)}

    # ----- sampling and inpainting ---------------------------------------------------------------------------------
    def _fill(self, ids: Tensor, fill: Tensor, generator: torch.Generator, temperature: float) -> Tensor:
        """Draw the sub-pixels where ``fill`` is True in raster order (channels inner), each from its conditional
        given everything before it; positions no image fills cost no pass."""
        ids = ids.clone()
        _, channels, height, width = ids.shape
        for i in range(height):
            for j in range(width):
                for c in range(channels):
                    todo = fill[:, c, i, j]
                    if not todo.any():
                        continue
                    params = self._params_of(ids)[:, :, c, i, j]
                    drawn = draw_levels(self.head.level_log_probs(params), temperature, generator)
                    ids[:, c, i, j] = torch.where(todo, drawn, ids[:, c, i, j])
        return ids

    def _complete(self, image: Tensor, fill: Tensor, generator: torch.Generator, options: PixelSampling) -> Tensor:
        """Fill ``options.candidates`` completions per image and keep the one with the highest log p(x)."""
        k = options.candidates
        ids = self._fill(to_levels(image, self.levels).repeat_interleave(k, 0), fill.repeat_interleave(k, 0),
                         generator, options.temperature)
        if k > 1:
            best = self._log_prob_ids(ids).view(-1, k).argmax(1)
            ids = ids.view(len(image), k, *ids.shape[1:])[torch.arange(len(image)), best]
        return from_levels(ids, self.levels)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: PixelSampling) -> Tensor:
        blank = torch.zeros(n, *self.data.shape, device=self.device)
        return self._complete(blank, torch.ones_like(blank, dtype=torch.bool), generator, options)

    @torch.no_grad()
    def inpaint(self, x: Tensor, mask: Tensor, *, seed: int = 0, generator: torch.Generator | None = None,
                labels: Tensor | None = None, **options: Any) -> Tensor:
        """Sample the values where ``mask`` is non-zero given the known ones (kept exactly; off-grid known values
        condition as their nearest level). Raster order: a hole's pixels see the known pixels before them only;
        ``candidates=K`` keeps, per image, the most likely of K completions so later known pixels weigh in too."""
        typed = self.sample_options(**options)
        image, fill = self.edit_inputs(x, mask)
        self.check_labels(labels, len(image))
        generator = generator or torch.Generator().manual_seed(seed)
        with eval_mode(self):
            out = self._complete(image, fill, generator, typed)
        return torch.where(fill, out, image)

    def cost(self, **options: Any) -> Cost:
        """C*H*W passes per draw (one per sub-pixel), times ``candidates``, plus one scoring pass per candidate
        when there are several."""
        k = self.sample_options(**options).candidates
        return Cost(nfe_per_sample=k * (self.data.dims + (k > 1)))
