"""VQ-VAE: a vector-quantised autoencoder with a learned prior over its codes (van den Oord et al., 2017).

Stage 1, ``autoencoder``. A convolutional encoder maps an image x to a grid of h x w vectors z_e(x) in R^D (two
stride-2 halvings by default: 8x8 -> 4x4, 28x28 -> 7x7); each is replaced by its nearest codebook vector
(:mod:`genzoo.nn.quantize`: z_q = e_k, k = argmin_k ||z_e - e_k||^2, straight-through gradient, commitment loss
beta ||z_e - sg(e_k)||^2, codebook by EMA with Laplace smoothing or by the codebook loss, dead codes restarted from
encoder outputs). The decoder maps the code grid to p(x | z), a discretized logistic over the data's levels per
pixel (Salimans et al., 2017), and stage 1 minimises

    -log p(x | z_q(x)) / dims  +  quantiser loss.

Stage 2, ``prior``. The autoencoder is frozen; each training image becomes its code grid read in raster order, a
sequence of T = h w tokens over K codes, and a prior p(z) -- any registered model that accepts token data, built by
name through the registry (``prior = "gpt"`` by default) as a submodule, so both stages live in one run directory --
is trained on those sequences by its own ``training_step`` (its loss, its optimizer).

Sampling draws codes z ~ p(z) and decodes them (the logistic's location per pixel). With a deterministic encoder
and discrete codes, p(x) = sum_z p(z) p(x|z) >= p(z(x)) p(x | z(x)) for the encoder's code grid z(x): one term
of the sum, so

    log p(x) >= log p_prior(z(x)) + log p(x | z(x)),

a lower bound on the likelihood of the model that draws z from the prior and x from p(x|z), in probabilities of
the data's levels (no entropy term: q(z|x) is a point mass).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
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
    Stage,
)
from genzoo.errors import ConfigError, GenzooError
from genzoo.nn import resolution_levels
from genzoo.nn.discrete import discretized_logistic_log_prob, soft_floor
from genzoo.nn.quantize import VectorQuantizer, code_perplexity
from genzoo.registry import build_model, register

_LIKELIHOODS = frozenset({Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND})


class VQVAEConfig(ModelConfig):
    num_codes: int = Field(64, ge=2, description="K, the number of codebook vectors")
    code_dim: int = Field(16, ge=1, description="D, the dimension of a codebook vector")
    width: int = Field(32, ge=1, description="channels of the encoder and decoder convolutions")
    res_blocks: int = Field(2, ge=0, description="residual blocks at the code grid's resolution, in each of encoder "
                                                 "and decoder")
    downsample: int | None = Field(None, ge=0, description="stride-2 halvings from image to code grid; None: up to "
                                                           "two while the side stays even and >= 4")
    codebook_update: Literal["ema", "loss"] = Field("ema", description="codebook learning: 'ema' running averages "
                                                                       "(Laplace-smoothed) or 'loss' (codebook loss)")
    beta: float = Field(0.25, ge=0.0, description="weight of the commitment loss ||z_e - sg(e)||^2")
    codebook_decay: float = Field(0.99, gt=0.0, lt=1.0, description="decay g of the EMA codebook statistics")
    laplace_eps: float = Field(1e-5, gt=0.0, description="Laplace smoothing of the EMA code counts")
    restart_after: int = Field(20, ge=0, description="training steps a code may go unused before it is restarted "
                                                      "from an encoder output; 0: never")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate of the autoencoder (the prior has its own)")
    prior: str = Field("gpt", description="registered model that learns p(codes) in stage 2 (token data, samples)")
    prior_config: dict[str, Any] = Field(default_factory=lambda: {"layers": 2, "width": 64}, description=(
        "the prior's hyperparameter overrides (default: a small transformer, enough for a short code sequence)"))


class VQVAESampling(SampleOptions):
    """Options passed on to the prior's sampler; left at their defaults, the prior's own defaults apply."""

    temperature: float = Field(1.0, ge=0.0, description="temperature of the prior's code sampling (0: greedy)")
    top_k: int | None = Field(None, ge=1, description="sample each code among the prior's k most likely only")


class Residual(nn.Module):
    """x + Conv1x1(ReLU(Conv3x3(ReLU(x)))): the paper's residual block."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(width, width, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def conv_encoder(channels: int, width: int, code_dim: int, halvings: int, res_blocks: int) -> nn.Sequential:
    """(B, C, H, W) -> (B, D, H / 2^halvings, W / 2^halvings)."""
    layers: list[nn.Module] = [nn.Conv2d(channels, width, 3, padding=1)]
    for _ in range(halvings):
        layers += [nn.ReLU(), nn.Conv2d(width, width, 4, stride=2, padding=1)]
    layers += [Residual(width) for _ in range(res_blocks)]
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(width, code_dim, 1))


def conv_decoder(code_dim: int, width: int, out_channels: int, doublings: int, res_blocks: int) -> nn.Sequential:
    """(B, D, h, w) -> (B, out_channels, h 2^doublings, w 2^doublings), mirroring :func:`conv_encoder`."""
    layers: list[nn.Module] = [nn.Conv2d(code_dim, width, 3, padding=1)]
    layers += [Residual(width) for _ in range(res_blocks)]
    for _ in range(doublings):
        layers += [nn.ReLU(), nn.ConvTranspose2d(width, width, 4, stride=2, padding=1)]
    return nn.Sequential(*layers, nn.ReLU(), nn.Conv2d(width, out_channels, 3, padding=1))


#: the vqvae names the prior's optimizers ``prior.<name>`` (``prior.model``, ``prior.muon`` ...)
PRIOR = "prior."


def prior_optimizer(name: str) -> str:
    """The vqvae's name for the prior's optimizer ``name``."""
    return PRIOR + name


class PriorOptimizers:
    """The prior's view of the trainer's handle: the prior steps its optimizers under its own names, which are the
    vqvae's ``prior.<name>`` optimizers (so stage rules, accumulation and clipping stay the trainer's)."""

    stage = None  # the prior trains in one stage of its own

    def __init__(self, outer: Optimizers) -> None:
        self.outer = outer
        self.optimizers = {name.removeprefix(PRIOR): opt for name, opt in outer.optimizers.items()
                           if name.startswith(PRIOR)}

    def step(self, name: str | Sequence[str], loss: Tensor) -> None:
        names = (name,) if isinstance(name, str) else name
        self.outer.step(tuple(prior_optimizer(each) for each in names), loss)


@register
class VQVAE(GenerativeModel):
    """Vector-quantised autoencoder (stage 1) and an autoregressive prior over its code grid (stage 2)."""

    name = "vqvae"
    family = "vae"
    Config = VQVAEConfig
    SampleOptions = VQVAESampling
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.LIKELIHOOD_BOUND, Capability.ENCODE,
                                   Capability.DECODE, Capability.RECONSTRUCT})
    validation_metric = "val_rec_bpd"
    smoke_config: ClassVar[dict[str, Any]] = {"num_codes": 16, "code_dim": 4, "width": 8, "res_blocks": 1,
                                              "prior_config": {"layers": 1, "heads": 2, "width": 16}}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64}
    quick_steps = 1000

    def __init__(self, config: VQVAEConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if not data.levels or data.levels < 2:
            raise ConfigError("vqvae decodes to the data's discrete levels; this image data has none (continuous)")
        channels, height, width = data.shape
        halvings = min(2, resolution_levels(height, width)) if config.downsample is None else config.downsample
        if height % 2**halvings or width % 2**halvings:
            raise ConfigError(f"vqvae: {height}x{width} images do not halve {halvings} times (downsample)")
        self.grid = (height >> halvings, width >> halvings)
        self.encoder = conv_encoder(channels, config.width, config.code_dim, halvings, config.res_blocks)
        self.quantizer = VectorQuantizer(config.num_codes, config.code_dim, config.codebook_update, config.beta,
                                         config.codebook_decay, config.laplace_eps, config.restart_after)
        self.decoder = conv_decoder(config.code_dim, config.width, 2 * channels, halvings, config.res_blocks)
        self.prior = self._build_prior(config)
        # the prior stage steps the prior's optimizers, however many its configuration gives it
        prior_names = tuple(map(prior_optimizer, self.prior.configure_optimizers()))
        self.stages = (Stage("autoencoder", optimizers=("autoencoder",), share=0.5),
                       Stage("prior", optimizers=prior_names, share=0.5, validation_metric="val_prior"))

    def _build_prior(self, config: VQVAEConfig) -> GenerativeModel:
        """The prior over code sequences: T = h w tokens in raster order, K code values."""
        codes = DataInfo(kind=DataKind.TOKENS, shape=(math.prod(self.grid),), levels=config.num_codes,
                         spec=f"vqvae codes ({self.grid[0]}x{self.grid[1]} grid, {config.num_codes} codes)")
        try:
            prior = build_model(config.prior, codes, config.prior_config)
        except ConfigError as err:
            raise ConfigError(f"vqvae prior '{config.prior}': {err}") from None
        if Capability.SAMPLE not in prior.capabilities:
            raise ConfigError(f"vqvae prior '{config.prior}' cannot sample unconditionally")
        return prior

    @property
    def capabilities(self) -> frozenset[Capability]:
        """The likelihood bound needs the prior's log p(z)."""
        caps = set(super().capabilities)
        if not self.prior.capabilities & _LIKELIHOODS:
            caps -= _LIKELIHOODS | {Capability.ANOMALY_SCORE}
        return frozenset(caps)

    # ----- encoder, quantiser, decoder -------------------------------------------------------------------------
    def _encode(self, x: Tensor) -> Tensor:
        """z_e(x) as (B h w, D) vectors, raster order within each image."""
        z = self.encoder(self.preprocess(x))
        return z.permute(0, 2, 3, 1).reshape(-1, self.config.code_dim)

    def _decode(self, z_q: Tensor) -> Tensor:
        """(B h w, D) code vectors -> (B, 2C, H, W) logistic locations (first C channels) and log-scales."""
        grid = z_q.view(-1, *self.grid, self.config.code_dim).permute(0, 3, 1, 2)
        return self.decoder(grid)

    def log_px_given_z(self, x: Tensor, out: Tensor) -> Tensor:
        """log p(x | z) per example: a discretized logistic over the data's levels per pixel."""
        channels, levels = self.data.shape[0], self.data.levels
        k = (x * (levels - 1)).round().long()
        log_scale = soft_floor(out[:, channels:], -7.0)
        return discretized_logistic_log_prob(k, out[:, :channels], log_scale, levels).flatten(1).sum(1)

    def _bits_per_dim(self, nats: Tensor) -> float:
        """Mean nats per example -> bits per dimension."""
        return float(nats.mean()) / (self.data.dims * math.log(2.0))

    # ----- training --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Adam over encoder, codebook and decoder; the prior's own optimizers under ``prior.<name>``."""
        autoencoder = [p for name, p in self.named_parameters() if not name.startswith("prior.")]
        prior = {prior_optimizer(name): opt for name, opt in self.prior.configure_optimizers().items()}
        return {"autoencoder": torch.optim.Adam(autoencoder, lr=self.config.lr), **prior}

    def lr_schedules(self) -> dict[str, dict[str, Any]]:
        """The prior's own schedule overrides, for its optimizers here."""
        return {prior_optimizer(name): schedule for name, schedule in self.prior.lr_schedules().items()}

    def setup(self, first_batch: Batch) -> None:
        """Start every code at an encoder output of the first batch (no code starts where no data is)."""
        self.quantizer.initialise_from(self._encode(first_batch.x))

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        """Stage ``prior`` trains the prior on the frozen encoder's codes; otherwise (stage ``autoencoder``, or no
        stage when called outside the trainer) the autoencoder."""
        if optim.stage is not None and optim.stage.name == "prior":
            codes = self.encode(batch.x).flatten(1)
            losses = self.prior.training_step(Batch(codes), step, PriorOptimizers(optim))
            return {f"prior_{key}": value for key, value in losses.items()}
        z_e = self._encode(batch.x)
        quantized = self.quantizer(z_e)
        rec = -self.log_px_given_z(batch.x, self._decode(quantized.z_q))
        optim.step("autoencoder", rec.mean() / self.data.dims + quantized.loss)
        self.quantizer.update(z_e.detach(), quantized.codes)
        perplexity, _ = code_perplexity(quantized.codes, self.config.num_codes)
        return {"rec_bpd": self._bits_per_dim(rec.detach()), "vq_loss": quantized.loss.item(),
                "perplexity": perplexity}

    def _reconstruction(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per example: the code grid (B, h, w), log p(x | z(x)) and the mean squared error of the decoded image."""
        codes = self.encode(x)
        out = self._decode(self.quantizer.lookup(codes.flatten()))
        return codes, self.log_px_given_z(x, out), (self._mean_image(out) - x).pow(2).flatten(1).mean(1)

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Reconstruction (bits/dim of -log p(x|z), squared error of the decoded image), code perplexity, and the
        prior's own validation metric on the codes (``val_prior``: stage 2 keeps its best checkpoint by it)."""
        codes, log_px, sq_error = self._reconstruction(batch.x)
        prior = self.prior.validation_step(Batch(codes.flatten(1)), generator)[self.prior.validation_metric]
        return {"val_rec_bpd": self._bits_per_dim(-log_px), "val_mse": float(sq_error.mean()),
                "val_perplexity": code_perplexity(codes, self.config.num_codes)[0], "val_prior": float(prior)}

    @torch.no_grad()
    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """On the test images: reconstruction error (squared, data units; and bits/dim of -log p(x|z)), code usage
        (perplexity of the code histogram, codes used of K) and the prior's NLL per code in nats (if it has one)."""
        codes, log_px, sq_error = (torch.cat(parts) for parts in zip(
            *(self._reconstruction(x) for x in test.x.split(500)), strict=True))
        perplexity, used = code_perplexity(codes, self.config.num_codes)
        metrics = {"reconstruction_mse_error": float(sq_error.mean()),
                   "reconstruction_bits_per_dim": self._bits_per_dim(-log_px), "code_perplexity": perplexity,
                   "codes_used": float(used)}
        if self.prior.capabilities & _LIKELIHOODS:
            prior_ll = torch.cat([self.prior.log_likelihood(c.flatten(1)).values for c in codes.split(500)])
            metrics["prior_nll_per_code"] = float(-prior_ll.mean()) / math.prod(self.grid)
        return metrics

    # ----- sampling, codes, likelihood -------------------------------------------------------------------------
    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: VQVAESampling) -> Tensor:
        """z ~ p_prior (raster order), decoded."""
        return self.decode(self.prior.sample(n, generator=generator, **options.model_dump(exclude_defaults=True)))

    def cost(self, **options: Any) -> Cost:
        """The prior's network evaluations for T codes, plus one decoder pass."""
        typed = self.sample_options(**options)
        prior = self.prior.cost(**typed.model_dump(exclude_defaults=True))
        return Cost(nfe_per_sample=(prior.nfe_per_sample or 0) + 1)

    def _mean_image(self, out: Tensor) -> Tensor:
        """The logistic's location per pixel, in data units."""
        return self.postprocess(out[:, : self.data.shape[0]])

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Images -> their code grids, (B, h, w) long in 0 .. K-1."""
        return self.quantizer.nearest(self._encode(x)).view(len(x), *self.grid)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Code grids (B, h, w), or raster sequences (B, h w), of integers in 0 .. K-1 -> images."""
        if z.is_floating_point() or z.dim() < 2 or z[0].numel() != math.prod(self.grid):
            raise GenzooError(f"vqvae decodes integer code grids of shape (B, {self.grid[0]}, {self.grid[1]}), got "
                              f"{z.dtype} {tuple(z.shape)}")
        if z.min() < 0 or z.max() >= self.config.num_codes:
            raise GenzooError(f"codes must be in 0 .. {self.config.num_codes - 1}")
        return self._mean_image(self._decode(self.quantizer.lookup(z.flatten().to(self.device))))

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p_prior(z(x)) + log p(x | z(x)) <= log p(x): one term of the sum over code grids."""
        self.require(Capability.LIKELIHOOD_BOUND)
        x = x.to(self.device)
        codes = self.encode(x)
        prior = self.prior.log_likelihood(codes.flatten(1))
        if prior.kind not in ("exact", "lower_bound"):
            raise GenzooError(f"vqvae prior '{self.config.prior}' gives an {prior.kind} of log p(z): no lower bound")
        rec = self.log_px_given_z(x, self._decode(self.quantizer.lookup(codes.flatten())))
        return LogLikelihood(rec + prior.values, "lower_bound", discrete=True,
                             method="log p(z(x)) + log p(x|z(x)), deterministic encoder")
