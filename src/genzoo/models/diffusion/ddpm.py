"""Denoising diffusion probabilistic model (Ho et al., 2020) with the improvements that matter on a CPU budget.

Forward process: x_t = alpha_t x_0 + sigma_t eps over T discrete steps (``schedules``). A network f(x_t, t, y)
(a U-Net for images, a residual MLP for vectors) predicts eps or v = alpha_t eps - sigma_t x_0 and is trained
with the "simple" loss E_{t, eps} ||f(x_t, t, y) - target||^2, t uniform. Every sampler (``samplers``: ``dpm``,
the default, ``ddim`` and ``ancestral``, alias ``ddpm``; chosen with the :class:`DDPMSampleOptions`) sees it
through the denoiser D(x_t, t) = x^_0, clipped to [-1, 1] for images.

Conditioning and classifier-free guidance (Ho & Salimans, 2021): the condition is a class label y, or a
caption's sentence embedding c on captioned data (``scenes:``, ``captions:``; added to the time embedding, adaLN).
During training the condition is replaced by the null one (label ``num_classes``, the zero vector) with
probability ``label_dropout``, so one network learns p(x | y) and p(x). At sampling,
f~ = f(x, t, null) + w (f(x, t, y) - f(x, t, null)): w = 0 is the unconditional model, w = 1 the conditional one,
w > 1 trades diversity for fidelity to the class or prompt (two network evaluations per step). A prompt is
embedded at sample time by the encoder the run's data recorded (``sample(n, prompt="a red circle ...")``).
``task_metrics`` on ``scenes:`` data: caption accuracy of one image per held-out caption, judged by the scenes
checker (:mod:`genzoo.data.scenes`).

Editing: inpainting/outpainting keeps the known pixels by re-imposing their forward sample after every step
(RePaint, with optional resampling: the ``Known`` and ``Resample`` callbacks of the sampling loop) and copies them
exactly into the result; image-to-image (SDEdit, Meng et al., 2022) noises the input to step strength * (T - 1)
and denoises from there.

Denoiser networks: a U-Net (``denoiser=unet``, the default) or a diffusion transformer (``denoiser=dit``:
patches, adaLN-zero conditioning on t and y; ``genzoo.nn.dit``) for images, a residual MLP for vectors.

Likelihood (``likelihood``; :mod:`genzoo.models.diffusion.likelihood`): the variational bound over all T steps of
the model the ancestral sampler draws from, with a discrete decoder for the data's levels read where the noise is
a third of a level's half-bin, and a stratified importance-sampled estimate of its sum over t with its standard
error (a lower bound on log P(x)); or the probability-flow ODE log-likelihood (Heun, Hutchinson's trace, Gaussian
dequantization through the same decoder): an estimate.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, ClassVar, Literal, cast

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from torch import Tensor

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
from genzoo.data.captions import encode_prompts
from genzoo.data.scenes import caption_accuracy
from genzoo.data.specs import load_dataset, recorded_options
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.diffusion.likelihood import Estimate, ode_log_likelihood, variational_bound
from genzoo.models.diffusion.samplers import (
    Ancestral,
    Callback,
    Denoiser,
    Known,
    Resample,
    Sampler,
    SamplerName,
    denoiser_calls,
    make_sampler,
    sample_loop,
    sampler_class,
)
from genzoo.models.diffusion.schedules import Prediction, Schedule, ScheduleName
from genzoo.nn.dit import DiT
from genzoo.nn.unet import ResidualMLP, UNet
from genzoo.registry import register
from genzoo.searchspace import Choice, LogUniform, Param, Uniform

#: held-out captions ``task_metrics`` draws an image for, at most, and how many at a time
CAPTION_EVAL_MAX = 256
CAPTION_EVAL_BATCH = 128


def caption_dim(data: DataInfo, model: str) -> int | None:
    """Width of the caption embeddings the data conditions on (None: no captions); token captions are refused."""
    record = data.extra.get("caption")
    if not isinstance(record, dict) or record.get("form") in (None, "none"):
        return None
    if record["form"] != "embedding":
        raise ConfigError(f"model '{model}' conditions on caption embeddings, not {record['form']}: load the data "
                          "with #caption=embedding (the default)")
    return int(record["dim"])


class UNetDiffusionConfig(ModelConfig):
    """The forward process and the U-Net denoiser: shared by the diffusion models of this family."""

    timesteps: int = Field(1000, ge=2, description="T, steps of the forward process")
    schedule: ScheduleName = Field("cosine", description="noise schedule: cosine (Nichol & Dhariwal) or linear "
                                   "(Ho et al.)")
    prediction: Prediction = Field("v", description="what the network predicts: eps, or v = alpha eps - sigma x_0")
    width: int = Field(32, ge=4, description="U-Net: base channels")
    channel_mult: list[int] = Field(default_factory=lambda: [1, 2, 2], min_length=1,
                                    description="U-Net: channels per resolution level, in units of width")
    num_res_blocks: int = Field(1, ge=1, description="U-Net: residual blocks per level")
    attention_below: int = Field(8, ge=0, description="U-Net: self-attention at levels whose larger side is at "
                                 "most this")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="U-Net: dropout in the residual blocks")


class DDPMConfig(UNetDiffusionConfig):
    # sized for small images (bench/diffusers_baseline.py): 24 base channels and attention only at 4x4 and in the
    # middle block train 1.7x faster than 32 channels with attention at 8x8, and reach a lower FD in equal time
    width: int = Field(24, ge=4, description="U-Net: base channels")
    attention_below: int = Field(4, ge=0, description="U-Net: self-attention at levels whose larger side is at most "
                                 "this (and always in the middle block)")
    denoiser: Literal["unet", "dit"] = Field("unet", description="image denoiser: unet, or dit (a diffusion "
                                             "transformer); vector data always uses the residual MLP")
    patch: int = Field(2, ge=1, description="DiT: patch side in pixels (must divide the image sides)")
    dit_width: int = Field(96, ge=4, description="DiT: token width (a multiple of 4 and of dit_heads)")
    dit_depth: int = Field(4, ge=1, description="DiT: transformer blocks")
    dit_heads: int = Field(4, ge=1, description="DiT: attention heads")
    mlp_width: int = Field(256, ge=1, description="vector data: residual MLP width")
    mlp_depth: int = Field(3, ge=1, description="vector data: residual MLP blocks")
    conditional: bool = Field(True, description="learn p(x | y) when the data has labels, p(x | caption) when it "
                              "has caption embeddings")
    label_dropout: float = Field(0.1, ge=0.0, le=1.0, description="classifier-free guidance: probability that a "
                                 "training label or caption is replaced by the null one")
    eval_guidance: float = Field(3.0, ge=0.0, description="guidance scale of the images genzoo eval draws to "
                                 "measure caption accuracy (captioned scenes data)")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")
    likelihood: Literal["bound", "ode"] = Field("bound", description="what log_likelihood (and genzoo eval) "
                                                "reports: bound (the variational bound over all T steps) or ode "
                                                "(the probability-flow ODE estimate)")
    bound_steps: int = Field(100, ge=1, description="bound: network calls per example estimating the sum over "
                             "the T steps (two per stratum of t)")
    ode_steps: int = Field(40, ge=1, description="ode: Heun steps (two network calls and vector-Jacobian "
                           "products each)")
    ode_probes: int = Field(1, ge=1, description="ode: Hutchinson probes of the divergence per example")


class DDPMSampleOptions(SampleOptions):
    """How ``ddpm`` samples (``model.sample(n, **options)``, ``genzoo sample RUN --sampler dpm --steps 20``)."""

    sampler: SamplerName = Field("dpm", description="dpm (DPM-Solver++ 2M, 20 steps), ddim (50 steps) or ancestral "
                                 "(alias ddpm; every step of the schedule). Editing defaults: ancestral on 100 "
                                 "steps to inpaint, dpm for image-to-image")
    steps: int | None = Field(None, ge=1, description="Network-evaluation steps over the full noise range "
                              "(default: the sampler's own)")
    eta: float | None = Field(None, ge=0, allow_inf_nan=False, description="Noise of the ddim (default 0: "
                              "deterministic) and ancestral (default 1) samplers; not for dpm")
    guidance: float | None = Field(None, allow_inf_nan=False, description="Classifier-free guidance scale w "
                                   "(needs a class label or a prompt; 0 = unconditional, 1 = conditional, > 1 "
                                   "follows the class or prompt more closely; doubles the network evaluations)")

    @field_validator("eta")
    @classmethod
    def _eta_applies(cls, eta: float | None, info: ValidationInfo) -> float | None:
        if "sampler" in info.data:  # else the sampler itself is the error
            try:
                make_sampler(info.data["sampler"], eta)
            except GenzooError as err:
                raise ValueError(str(err)) from None
        return eta


@register
class DDPM(GenerativeModel):
    """Diffusion model: samplers ``dpm`` (DPM-Solver++ 2M, the default), ``ddim`` and ``ancestral`` (alias ``ddpm``),
    classifier-free guidance, inpainting (RePaint), image-to-image (SDEdit) and a variational bound."""

    name = "ddpm"
    quick_steps = 400
    family = "diffusion"
    Config = DDPMConfig
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(1e-4, 3e-3), "width": Choice(16, 32, 48), "dropout": Uniform(0.0, 0.2),
        "schedule": Choice("cosine", "linear"), "prediction": Choice("eps", "v"),
    }
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE, Capability.LIKELIHOOD_BOUND,
                                   Capability.INPAINT, Capability.IMG2IMG, Capability.TEXT_TO_IMAGE})
    smoke_config: ClassVar[dict[str, Any]] = {"timesteps": 50, "width": 8, "channel_mult": [1, 2], "mlp_width": 32,
                                              "mlp_depth": 1, "bound_steps": 5}
    smoke_overfit_steps: ClassVar[int] = 30
    smoke_sample_options: ClassVar[dict[str, Any]] = {"steps": 4}
    SampleOptions = DDPMSampleOptions
    train_defaults: ClassVar[dict[str, Any]] = {"ema_decay": 0.999, "batch_size": 128, "warmup_steps": 100}
    config: DDPMConfig

    def __init__(self, config: DDPMConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        self.schedule = Schedule.make(config.schedule, config.timesteps)
        self.num_classes = data.num_classes if config.conditional and data.conditional else None
        self.cond_dim = caption_dim(data, self.name) if config.conditional else None
        self.net = self._network(config, data.kind, self.diffusion_shape)

    @property
    def diffusion_shape(self) -> tuple[int, ...]:
        """The shape of one example in the space the diffusion runs in: the data's own (``ldm``: its latents')."""
        return self.data.shape

    def to_diffusion(self, x: Tensor) -> Tensor:
        """Data units -> the space the diffusion runs in (network units; ``ldm``: scaled latents)."""
        return self.preprocess(x)

    def from_diffusion(self, z: Tensor) -> Tensor:
        """The diffusion's space -> data units (inverse of :meth:`to_diffusion`)."""
        return self.postprocess(z)

    @property
    def clips_x0(self) -> bool:
        """Whether x^_0 is clipped to [-1, 1]: images in network units lie there (latents do not)."""
        return self.data.kind is DataKind.IMAGE

    def _network(self, config: DDPMConfig, kind: DataKind, shape: tuple[int, ...]) -> torch.nn.Module:
        """The denoising network f(x_t, t, y, c): ``config.denoiser`` for images, a residual MLP for vectors."""
        if kind is not DataKind.IMAGE:
            if config.denoiser != "unet":
                raise ConfigError(f"the {config.denoiser} denoiser is for images; vector data uses the residual MLP")
            return ResidualMLP(math.prod(shape), config.mlp_width, config.mlp_depth, self.num_classes, self.cond_dim)
        if config.denoiser == "dit":
            return DiT(shape, config.patch, config.dit_width, config.dit_depth, config.dit_heads,
                       num_classes=self.num_classes, cond_dim=self.cond_dim)
        return UNet(shape, config.width, tuple(config.channel_mult), config.num_res_blocks,
                    config.attention_below, config.dropout, self.num_classes, self.cond_dim)

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set(super().capabilities)
        if self.num_classes is None:
            caps.discard(Capability.CONDITIONAL_SAMPLE)
        if self.cond_dim is None:
            caps.discard(Capability.TEXT_TO_IMAGE)
        if self.data.kind is not DataKind.IMAGE:
            caps -= {Capability.INPAINT, Capability.IMG2IMG}
        return frozenset(caps)

    # ----- network ---------------------------------------------------------------------------------------------
    def _labels(self, y: Tensor | None, n: int) -> Tensor | None:
        """Labels for the network: the given ones, or the null label ``num_classes`` (unconditional)."""
        if self.num_classes is None:
            return None
        if y is None:
            return torch.full((n,), self.num_classes, dtype=torch.long, device=self.device)
        return y.to(self.device)

    def _captions(self, c: Tensor | None, n: int) -> Tensor | None:
        """Caption embeddings for the network: the given ones, or zeros (no caption)."""
        if self.cond_dim is None:
            return None
        if c is None:
            return torch.zeros(n, self.cond_dim, device=self.device)
        return c.to(self.device, torch.float32)

    def _dropped(self, y: Tensor | None, c: Tensor | None, n: int) -> tuple[Tensor | None, Tensor | None]:
        """Classifier-free guidance training: each example's label and caption become the null ones with
        probability ``label_dropout``."""
        if self.config.label_dropout == 0 or (y is None and c is None):
            return y, c
        drop = torch.rand(n, device=self.device) < self.config.label_dropout
        if y is not None:
            y = torch.where(drop, torch.full_like(y, cast(int, self.num_classes)), y)
        if c is not None:
            c = c * (~drop)[:, None]
        return y, c

    def _condition(self, batch: Batch) -> tuple[Tensor | None, Tensor | None]:
        """The batch's labels and caption embeddings that this model reads."""
        return batch.y if self.num_classes is not None else None, batch.cond if self.cond_dim is not None else None

    def _loss(self, x0: Tensor, t: Tensor, noise: Tensor, y: Tensor | None, c: Tensor | None) -> Tensor:
        """The simple loss at steps t of x0 in network units."""
        xt = self.schedule.q_sample(x0, t, noise)
        target = self.schedule.target(x0, noise, t, self.config.prediction)
        return F.mse_loss(self.net(xt, t, self._labels(y, len(x0)), self._captions(c, len(x0))), target)

    def denoiser(self, labels: Tensor | None = None, guidance: float | None = None, clip: bool = True,
                 cond: Tensor | None = None) -> Denoiser:
        """D(x_t, t) -> x^_0 for the samplers, given class labels or caption embeddings ``cond``, with
        classifier-free guidance when ``guidance`` is given."""
        conditioned = (self.num_classes is not None and labels is not None) or (
            self.cond_dim is not None and cond is not None)
        if guidance is not None and not conditioned:
            raise GenzooError("guidance needs a condition: a class label of a class-conditional model (--class 7) or "
                              "a prompt of a caption-conditioned one (--prompt 'a red circle')")

        def denoise(x: Tensor, t: int) -> Tensor:
            n = len(x)
            steps = torch.full((n,), t, dtype=torch.long, device=x.device)
            y, c = self._labels(labels, n), self._captions(cond, n)
            if guidance is None:
                out = self.net(x, steps, y, c)
            else:
                null_y, null_c = self._labels(None, n), self._captions(None, n)
                both = lambda a, b: None if a is None else torch.cat([a, b])  # noqa: E731
                with_cond, without = self.net(torch.cat([x, x]), torch.cat([steps, steps]), both(y, null_y),
                                              both(c, null_c)).chunk(2)
                out = without + guidance * (with_cond - without)
            x0 = self.schedule.predict_x0(x, steps, out, self.config.prediction)
            return x0.clamp(-1.0, 1.0) if clip and self.clips_x0 else x0

        return denoise

    def _x0_hat(self, labels: Tensor | None) -> Callable[[Tensor, Tensor], Tensor]:
        """(x_t, per-example steps t) -> x^_0, unclipped, for the likelihoods (x_t in any float dtype)."""

        def x0_hat(x: Tensor, t: Tensor) -> Tensor:
            x = x.float()
            out = self.net(x, t, self._labels(labels, len(x)), self._captions(None, len(x)))
            return self.schedule.predict_x0(x, t, out, self.config.prediction)

        return x0_hat

    # ----- training ----------------------------------------------------------------------------------------------
    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        x0 = self.to_diffusion(batch.x)
        n = len(x0)
        t = torch.randint(0, self.schedule.steps, (n,), device=x0.device)
        noise = torch.randn_like(x0)
        y, c = self._dropped(*self._condition(batch), n)
        loss = self._loss(x0, t, noise, y, c)
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        x0 = self.to_diffusion(batch.x)
        t = torch.randint(0, self.schedule.steps, (len(x0),), generator=generator).to(self.device)
        noise = self.randn(*x0.shape, generator=generator)
        return {"val_loss": self._loss(x0, t, noise, *self._condition(batch)).item()}

    # ----- sampling ------------------------------------------------------------------------------------------------
    def _sampler(self, options: DDPMSampleOptions, strength: float = 1.0) -> Sampler:
        """The sampler object of ``options`` with its grid set on this model's schedule."""
        sampler = make_sampler(options.sampler, options.eta)
        sampler.set_timesteps(self.schedule, options.steps, strength)
        return sampler

    def cost(self, **options: Any) -> Cost:
        """Network evaluations per sample of ``sample(n, **options)``: one per grid point (fewer than ``steps``
        when the dpm log-SNR grid merges points), two with guidance. Editing: :meth:`edit_cost`."""
        return self._cost(self.sample_options(**options))

    def edit_cost(self, masked: bool = False, strength: float = 1.0, *, resample: int = 5, **options: Any) -> Cost:
        """Network evaluations per image of ``edit(image, mask, strength, resample=resample, **options)`` with
        ``edit``'s defaults; ``masked``: whether a mask is given (then every step but the last is taken
        ``resample`` times). ``img2img(x, s, **options)`` costs ``edit_cost(False, s, sampler="dpm", **options)``."""
        callbacks: list[Callback] = [Resample(resample)] if masked else []
        return self._cost(self._edit_options(**options), strength, callbacks)

    def _cost(self, options: DDPMSampleOptions, strength: float = 1.0, callbacks: list[Callback] | None = None) -> Cost:
        calls = denoiser_calls(self._sampler(options, strength), callbacks or [])
        return Cost(nfe_per_sample=calls * (2 if options.guidance is not None else 1))

    def _run(self, x0: Tensor | None, n: int, generator: torch.Generator, denoiser: Denoiser,
             options: DDPMSampleOptions, strength: float = 1.0, callbacks: list[Callback] | None = None) -> Tensor:
        """Sample with ``denoiser`` from pure noise (``x0`` None) or from ``x0`` (network units) noised to
        ``strength``."""
        sampler = self._sampler(options, strength)
        noise = self.randn(n, *self.diffusion_shape, generator=generator)
        start = torch.full((n,), sampler.timesteps[0], dtype=torch.long, device=self.device)
        x = noise if x0 is None else self.schedule.q_sample(x0, start, noise)
        out = sample_loop(denoiser, sampler, x, lambda shape: self.randn(*shape, generator=generator), callbacks or [])
        return self.from_diffusion(out)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None,
                options: DDPMSampleOptions) -> Tensor:
        return self._run(None, n, generator, self.denoiser(labels, options.guidance), options)

    def _sample_prompted(self, n: int, generator: torch.Generator, prompts: list[str],
                         options: DDPMSampleOptions) -> Tensor:
        """Images of the prompts, embedded by the encoder the training data used."""
        return self._captioned(encode_prompts(self.data, prompts), generator, options)

    def _captioned(self, cond: Tensor, generator: torch.Generator, options: DDPMSampleOptions) -> Tensor:
        """One image per caption embedding (row of ``cond``)."""
        return self._run(None, len(cond), generator, self.denoiser(None, options.guidance, cond=cond), options)

    # ----- caption accuracy --------------------------------------------------------------------------------------
    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """On ``scenes:`` data: one image per held-out caption (the first ``len(test)``, at most
        :data:`CAPTION_EVAL_MAX`) at guidance ``eval_guidance``, and the share whose drawn colours, shapes, sizes,
        count, relation and all of them match the caption (:func:`genzoo.data.scenes.caption_accuracy`)."""
        if self.cond_dim is None or "scenes" not in self.data.extra:
            return {}
        held_out = load_dataset(self.data.spec, options=recorded_options(self.data))
        k = min(len(test), CAPTION_EVAL_MAX)
        cond, texts = held_out.split("test").cond[:k], held_out.captions["test"][:k]
        options = cast(DDPMSampleOptions, self.sample_options(guidance=self.config.eval_guidance))
        with eval_mode(self):
            images = torch.cat([self._captioned(part, generator, options) for part in cond.split(CAPTION_EVAL_BATCH)])
        return caption_accuracy(images, texts)

    # ----- editing -------------------------------------------------------------------------------------------------
    def _edit_options(self, sampler: str = "ddpm", steps: int | None = None, **options: Any) -> DDPMSampleOptions:
        """Validated sampling options of an edit: ancestral sampling on 100 steps unless told."""
        typed = cast(DDPMSampleOptions, self.sample_options(sampler=sampler, steps=steps, **options))
        if typed.steps is None and sampler_class(typed.sampler) is Ancestral:
            typed = typed.model_copy(update={"steps": 100})
        return typed

    @torch.no_grad()
    def edit(self, image: Tensor, mask: Tensor | None = None, strength: float = 1.0, *, seed: int | None = None,
             generator: torch.Generator | None = None, labels: Tensor | None = None, sampler: str = "ddpm",
             steps: int | None = None, eta: float | None = None, guidance: float | None = None,
             resample: int = 5) -> Tensor:
        """Regenerate the pixels where ``mask`` is non-zero (all pixels if no mask), starting from ``image``
        noised to ``strength`` (1 = from pure noise). Pixels where the mask is 0 are returned unchanged.
        Defaults: RePaint-style ancestral sampling, 100 steps, each redone ``resample`` times."""
        options = self._edit_options(sampler=sampler, steps=steps, eta=eta, guidance=guidance)
        rounds = Resample(resample)
        image, fill = self.edit_inputs(image, mask)
        if not 0.0 < strength <= 1.0:
            raise GenzooError(f"strength must be in (0, 1], got {strength}")
        known = None if fill is None else Known(self.preprocess(image), (~fill).float())
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        labels = self.check_labels(labels, len(image))
        callbacks: list[Callback] = [] if known is None else [known, rounds]
        with eval_mode(self):
            out = self._run(self.preprocess(image), len(image), generator, self.denoiser(labels, options.guidance),
                            options, strength, callbacks)
        return out if known is None else torch.where(known.keep.bool(), image, out)

    def inpaint(self, x: Tensor, mask: Tensor, **options: Any) -> Tensor:
        """Fill the non-zero region of ``mask`` (inpainting, or outpainting for a border mask); see :meth:`edit`."""
        return self.edit(x, mask, **options)

    def img2img(self, x: Tensor, strength: float = 0.5, **options: Any) -> Tensor:
        """SDEdit: noise ``x`` to ``strength`` and denoise (dpm, 20 steps unless told); see :meth:`edit`."""
        options.setdefault("sampler", "dpm")
        options.setdefault("steps", None)
        return self.edit(x, None, strength, **options)

    # ----- likelihood ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None, *, method: Literal["bound", "ode"] | None = None,
                       seed: int = 0) -> LogLikelihood:
        """log P(x) in nats per example (``likelihood``): ``bound``, the variational bound over all T steps, or
        ``ode``, the probability-flow ODE estimate (see :mod:`genzoo.models.diffusion.likelihood`). Image values
        are snapped to the data's levels and reported as probabilities of them; vectors as densities in data
        units. ``method`` says how the Monte Carlo estimate was made, with its standard error."""
        method = method or self.config.likelihood
        with eval_mode(self):
            estimate, discrete = self.likelihood_estimate(x, labels, method, seed)
        error = f"Monte Carlo standard error of the mean {estimate.stderr():.3g} nats"
        if method == "ode" and self.config.ode_probes == 1:
            error = "no standard error from one probe (ode_probes >= 2 gives one)"
        if method == "bound":
            strata = max(1, self.config.bound_steps // 2)
            return LogLikelihood(estimate.values.float(), "lower_bound", discrete,
                                 f"variational bound over all {self.schedule.steps} steps of the ancestral sampler, "
                                 f"{2 * strata} stratified draws of t per example; {error}")
        return LogLikelihood(estimate.values.float(), "estimate", discrete,
                             f"probability-flow ODE, {self.config.ode_steps} Heun steps, Hutchinson trace with "
                             f"{self.config.ode_probes} Rademacher probe(s), Gaussian dequantization at the decoder "
                             f"step; {error}")

    def likelihood_estimate(self, x: Tensor, labels: Tensor | None, method: Literal["bound", "ode"],
                            seed: int = 0) -> tuple[Estimate, bool]:
        """The per-example estimates behind :meth:`log_likelihood` with their Monte Carlo variances (in data
        units), and whether they are probabilities of discrete levels."""
        generator = torch.Generator().manual_seed(seed)
        levels = self.data.levels if self.data.kind is DataKind.IMAGE else None
        x = x.to(self.device)
        if levels:  # snap to the data's levels so the value is for the discrete value
            x = (x * (levels - 1)).round() / (levels - 1)
        x0 = self.preprocess(x).double()
        x0_hat = self._x0_hat(self.check_labels(labels, len(x)) if labels is not None else None)
        if method == "bound":
            estimate = variational_bound(x0, x0_hat, self.schedule, levels, max(1, self.config.bound_steps // 2),
                                         generator)
        elif method == "ode":
            estimate = ode_log_likelihood(x0, x0_hat, self.schedule, levels, self.config.ode_steps,
                                          self.config.ode_probes, generator)
        else:
            raise GenzooError(f"unknown likelihood method '{method}' (use bound or ode)")
        if not levels:
            estimate.values = estimate.values + self.preprocess_log_det()
        return estimate, bool(levels)
