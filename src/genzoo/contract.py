"""The one model contract every family implements.

A model is a ``torch.nn.Module`` subclass of :class:`GenerativeModel` that declares

* which data kinds it accepts (:class:`DataKind`), how many datasets it trains on (``domains``: 2 for unpaired
  translation), and is built for one :class:`DataInfo` (shape, levels, labels);
* its capabilities (:class:`Capability`), each backed by a method of this base class that the model overrides
  (:data:`CAPABILITY_METHODS`; a contract test checks that flags and methods agree for every registered model);
* its hyperparameters as a typed pydantic :class:`ModelConfig`, and its sampling options as another
  (:class:`SampleOptions`: types, defaults, ranges and help text, which the CLI and the server read);
* its optimizers (``configure_optimizers``), optional training ``stages`` and one ``training_step`` that steps them
  through an :class:`Optimizers` handle -- one optimizer (VAE), two with alternating updates (GANs) or anything
  else, with no special case in the trainer; ``setup(first_batch)`` runs once before the first step (data-dependent
  initialisation) and ``ema_targets()`` says which parts the trainer averages;
* sampling with an explicit seed or ``torch.Generator`` (``sample``), in *data units*: images in [0, 1],
  vectors in the data's own scale, tokens as ids; its cost per sample (``cost``);
* where it has them, an exact log-likelihood or a bound on it (``log_likelihood``), encode/decode and friends.

Everything a model receives and returns is in data units; the conversion to the space a network works in
(``preprocess``/``postprocess``) is the data kind's (:mod:`genzoo.kinds`) so that likelihoods of every family are
reported in one convention.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from genzoo.errors import ConfigError, GenzooError, NonFiniteError
from genzoo.kinds import DataInfo, DataKind
from genzoo.searchspace import Param, check_space, default_space

__all__ = [
    "CAPABILITY_METHODS", "Batch", "Capability", "Cost", "DataInfo", "DataKind", "ExportModule", "ExportSpec",
    "GenerativeModel", "LogLikelihood",
    "ModelConfig", "Optimizers", "SampleOptions", "Stage", "eval_mode", "parse_override", "validation_message",
]


class Capability(StrEnum):
    """Things a model can do beyond training. Query with ``cap in model.capabilities``."""

    SAMPLE = "sample"  # unconditional samples
    CONDITIONAL_SAMPLE = "conditional_sample"  # samples given a class label
    EXACT_LIKELIHOOD = "exact_likelihood"  # log p(x) exactly
    LIKELIHOOD_BOUND = "likelihood_bound"  # a bound on log p(x) (ELBO, variational bound)
    ENCODE = "encode"  # x -> latent
    DECODE = "decode"  # latent -> x
    RECONSTRUCT = "reconstruct"  # x -> x'
    INTERPOLATE = "interpolate"  # latent interpolation between two examples
    INPAINT = "inpaint"  # fill masked pixels
    IMG2IMG = "img2img"  # translate / edit an image
    GENERATE_TEXT = "generate_text"  # prompt -> continuation
    CHAT = "chat"  # messages -> answer through a chat template
    ANOMALY_SCORE = "anomaly_score"  # x -> how unusual each example is
    TEXT_TO_IMAGE = "text_to_image"  # samples given a text prompt (a caption)
    CAPTION = "caption"  # images -> text describing them
    SUPER_RESOLVE = "super_resolve"  # low-resolution images -> high-resolution ones


#: the method of :class:`GenerativeModel` behind each capability: a model declaring the capability overrides it
CAPABILITY_METHODS: dict[Capability, str] = {
    Capability.SAMPLE: "_sample",
    Capability.CONDITIONAL_SAMPLE: "_sample",
    Capability.EXACT_LIKELIHOOD: "log_likelihood",
    Capability.LIKELIHOOD_BOUND: "log_likelihood",
    Capability.ENCODE: "encode",
    Capability.DECODE: "decode",
    Capability.RECONSTRUCT: "reconstruct",
    Capability.INTERPOLATE: "interpolate",
    Capability.INPAINT: "inpaint",
    Capability.IMG2IMG: "img2img",
    Capability.GENERATE_TEXT: "generate",
    Capability.CHAT: "chat",
    Capability.ANOMALY_SCORE: "score",
    Capability.TEXT_TO_IMAGE: "_sample_prompted",
    Capability.CAPTION: "caption",
    Capability.SUPER_RESOLVE: "upscale",
}
_LIKELIHOODS = frozenset({Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND})


@dataclass
class Batch:
    """One minibatch in data units.

    ``y`` holds integer class labels when the dataset has them; ``x_b`` examples of a second domain (unpaired, for
    two-domain models); ``mask`` a per-example mask (1 = generate) and ``cond`` a conditioning tensor (an embedding,
    a low-resolution image), when a dataset provides them.
    """

    x: Tensor
    y: Tensor | None = None
    x_b: Tensor | None = None
    mask: Tensor | None = None
    cond: Tensor | None = None

    def map(self, fn: Any) -> Batch:
        """A batch with ``fn`` applied to every tensor that is present."""
        return Batch(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                        for f in fields(self)})

    def to(self, device: torch.device | str) -> Batch:
        return self.map(lambda t: t.to(device))

    def __getitem__(self, index: slice | Tensor) -> Batch:
        """The examples at ``index`` of every per-example tensor (``x_b`` is another domain: sliced alike)."""
        return self.map(lambda t: t[index])

    def __len__(self) -> int:
        return len(self.x)


LikelihoodKind = Literal["exact", "lower_bound", "upper_bound", "estimate"]


@dataclass
class LogLikelihood:
    """log p(x) per example, in nats, in data units.

    ``kind`` says how ``values`` relate to the true log-likelihood (an ELBO is a ``lower_bound``). ``discrete`` is
    True when ``values`` are log-probabilities of the data's discrete levels (``DataInfo.levels``) and False for
    log-densities of continuous data.
    """

    values: Tensor
    kind: LikelihoodKind
    discrete: bool
    method: str

    def bits_per_dim(self, dims: int) -> Tensor:
        """Negative log-likelihood in bits per dimension, per example."""
        return -self.values / (dims * math.log(2.0))


@dataclass(frozen=True)
class Cost:
    """What one sample costs: network evaluations and, where known, forward FLOPs (``None`` = unknown)."""

    nfe_per_sample: int | None = None
    flops_per_sample: float | None = None
    #: training FLOPs (forward + backward) per example, where the model knows them
    train_flops_per_example: float | None = None


@dataclass(frozen=True)
class Stage:
    """One phase of training (e.g. a VQ-VAE, then its prior): which optimizers it steps, its share of the steps
    (or of the time budget), and the validation metric that picks its best checkpoint (None: the model's)."""

    name: str
    optimizers: tuple[str, ...] | None = None
    share: float = 1.0
    validation_metric: str | None = None


class ExportModule(nn.Module):
    """``fn`` (a method of ``model``) as a module's ``forward``: the part of a model an exporter traces. The weights
    stay the model's (``model`` is a submodule), so a quantized model exports its quantized layers."""

    def __init__(self, model: nn.Module, fn: Callable[..., Tensor]) -> None:
        super().__init__()
        self.model = model
        self.fn = fn

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.fn(*inputs)


@dataclass
class ExportSpec:
    """What ``genzoo export`` builds from a model: ``module`` maps ``inputs`` (example tensors of the fixed shapes,
    by name, in the order ``forward`` takes them) to one tensor named ``output``.

    ``noise`` names the inputs that take standard normal noise when sampling (the exported sampler draws them from a
    seeded generator, the same numbers as ``model.sample``); ``sampling`` says in one line how to sample with the
    module (it goes into the artefact's sidecar for users of the file without genzoo)."""

    module: nn.Module
    inputs: dict[str, Tensor]
    output: str
    sampling: str
    noise: tuple[str, ...] = ()


class ModelConfig(BaseModel):
    """Base of every model's hyperparameters. Unknown keys are an error, values are type-checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SampleOptions(BaseModel):
    """Base of every model's sampling options (``model.sample(n, **options)``); declare fields with ``Field(default,
    ge=..., description=...)`` so the CLI, ``--help`` and the server's JSON Schema can say what they are."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


def validation_message(err: ValidationError) -> str:
    """A pydantic error as one line: ``field: problem; field: problem``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'value'}: {e['msg']}" for e in err.errors())


def parse_override(text: str) -> tuple[str, Any]:
    """Parse one ``key=value`` from the CLI; the value is read as JSON when it is JSON (numbers, lists, true)."""
    if "=" not in text:
        raise ConfigError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


@contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """Put ``module`` in eval mode for the block and restore its previous mode after, whatever happens."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


class Optimizers:
    """What ``training_step`` uses to update parameters: ``optim.step("name", loss)``.

    Zeroes the named optimizer's gradients, back-propagates, checks loss and gradient norm are finite, clips the
    gradient norm when asked, and steps. A model with several optimizers calls ``step`` once per optimizer, in
    whatever order and frequency its algorithm needs (a GAN's generator and discriminator); one loss can also update
    through several optimizers at once, ``optim.step(("model", "muon"), loss)`` (parameters split by update rule).

    The trainer sets three things here: ``accumulate`` (k micro-batches per update: gradients of k calls add up,
    each loss scaled by 1/k, and the optimizer steps on the last), ``stage`` (the optimizers the current training
    stage may step) and ``scaler`` (fp16 loss scaling on GPUs). :meth:`reduce_gradients` is where data-parallel
    training averages gradients across processes before clipping.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float | None = None,
                 scaler: Any = None) -> None:
        self.optimizers = optimizers
        self.grad_clip = grad_clip
        self.scaler = scaler
        self.accumulate = 1
        self.micro = 0  # index of the current micro-batch in 0 .. accumulate - 1
        self.stage: Stage | None = None

    def step(self, name: str | Sequence[str], loss: Tensor) -> None:
        """Back-propagate ``loss`` and step optimizer ``name``; with several names, one update split among them
        (e.g. Muon for hidden matrices and AdamW for the rest): one backward pass, their gradients clipped
        together, then each steps."""
        names = (name,) if isinstance(name, str) else tuple(name)
        for each in names:
            if each not in self.optimizers:
                raise GenzooError(f"training_step stepped unknown optimizer '{each}' (have {sorted(self.optimizers)})")
            if self.stage is not None and self.stage.optimizers is not None and each not in self.stage.optimizers:
                raise GenzooError(f"training stage '{self.stage.name}' does not train optimizer '{each}'")
        label = "', '".join(names)
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss for optimizer '{label}' is {loss.item()}")
        opts = [self.optimizers[each] for each in names]
        if self.micro == 0:
            for opt in opts:
                opt.zero_grad(set_to_none=True)
        scaled = loss / self.accumulate if self.accumulate > 1 else loss
        # the trainer's autocast covers the forward pass; backward runs in the dtypes the forward chose
        with torch.autocast(loss.device.type, enabled=False):
            (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        if self.micro == self.accumulate - 1:
            self._apply(label, opts)

    def _apply(self, label: str, opts: list[torch.optim.Optimizer]) -> None:
        self.reduce_gradients([p for opt in opts for group in opt.param_groups for p in group["params"]])
        params = [p for opt in opts for group in opt.param_groups for p in group["params"] if p.grad is not None]
        if self.scaler is not None:
            for opt in opts:
                self.scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf"))
        if not torch.isfinite(norm) and self.scaler is None:  # with a scaler, an overflow only skips the step
            raise NonFiniteError(f"gradient norm for optimizer '{label}' is {norm.item()}")
        for opt in opts:
            if self.scaler is not None:
                self.scaler.step(opt)
            else:
                opt.step()
        if self.scaler is not None:
            self.scaler.update()

    def reduce_gradients(self, params: list[Tensor]) -> None:
        """Average the gradients of ``params`` (some may have none) over data-parallel processes. One process has
        nothing to average; the trainer's data-parallel handle (:mod:`genzoo.training.distributed`) overrides this."""


class GenerativeModel(nn.Module):
    """Base class of every genzoo model. Subclasses set the class variables and override the methods of their
    capabilities (:data:`CAPABILITY_METHODS`); the others raise a clear error naming the missing capability."""

    name: ClassVar[str]
    family: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    data_kinds: ClassVar[frozenset[DataKind]]
    #: sampling options ``sample`` accepts (a pydantic model; none by default)
    SampleOptions: ClassVar[type[SampleOptions]] = SampleOptions
    base_capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SAMPLE})
    #: datasets the model trains on: 1, or 2 for models between two domains (``--data A --data-b B``)
    domains: ClassVar[int] = 1
    #: ``base:ARG`` as a model name (``hf:gpt2``) sets this hyperparameter to ARG; None: no argument
    name_argument: ClassVar[str | None] = None
    #: key of ``validation_step``'s output that picks the best checkpoint (lower is better)
    validation_metric: ClassVar[str] = "val_loss"
    #: training phases in order; empty: one stage stepping every optimizer
    stages: ClassVar[tuple[Stage, ...]] = ()
    #: whether ``_sample`` / ``validation_step`` need autograd (Langevin dynamics); else they run under no_grad
    sampling_needs_grad: ClassVar[bool] = False
    validation_needs_grad: ClassVar[bool] = False
    #: hyperparameter overrides giving the smallest sensible model (contract tests, quick demos)
    smoke_config: ClassVar[dict[str, Any]] = {}
    #: training steps on one fixed batch after which the contract tests expect ``validation_metric`` to improve
    smoke_overfit_steps: ClassVar[int] = 50
    #: trainer settings this model prefers over the trainer's defaults (e.g. ``{"ema_decay": 0.999}``)
    train_defaults: ClassVar[dict[str, Any]] = {}
    #: sampling/editing options that keep the contract tests fast (e.g. fewer sampler steps)
    smoke_sample_options: ClassVar[dict[str, Any]] = {}
    #: a data spec to smoke-test this model on when a generic small dataset of its data kind does not fit it (a
    #: two-domain pair such as ``pair:digits-thick``, input-output pairs such as ``task:reverse``); None: any data of
    #: an accepted kind will do
    smoke_data: ClassVar[str | None] = None
    #: training steps that give recognisable samples of the built-in digits quickly (tens of seconds on two quiet
    #: CPU cores): ``genzoo demo`` and quick arenas train by steps, so a busy machine gives the same results, only
    #: later; None: not calibrated, quick runs use time
    quick_steps: ClassVar[int | None] = None
    #: fitted in one call on the whole training split (:meth:`fit_whole_data`, e.g. a scikit-learn mixture) instead
    #: of by training steps
    fits_whole_data: ClassVar[bool] = False
    #: what :meth:`score` returns (a column name in ``genzoo score``'s CSV)
    score_name: ClassVar[str] = "nll_nats"
    #: what ``genzoo tune`` searches: {Config field: LogUniform | Uniform | IntRange | Choice} (see
    #: :mod:`genzoo.searchspace`; checked against the Config when the class is defined); empty: the learning rate
    #: within a decade of its default (:meth:`tuning_space`)
    search_space: ClassVar[dict[str, Param]] = {}
    #: text models: ``generate`` returns what follows the prompt (True: printed after it) or a whole answer of its
    #: own (an encoder-decoder's answer, a filled-in prompt)
    continues_prompt: ClassVar[bool] = True

    def __init__(self, config: ModelConfig, data: DataInfo) -> None:
        super().__init__()
        if data.kind not in self.data_kinds:
            kinds = ", ".join(sorted(k.value for k in self.data_kinds))
            raise ConfigError(f"model '{self.name}' accepts {kinds} data, but the data is {data.kind.value}")
        if (data.domain_b is not None) != (self.domains == 2):
            raise ConfigError(f"model '{self.name}' trains on two datasets: give the second with --data-b"
                              if self.domains == 2 else
                              f"model '{self.name}' trains on one dataset; --data-b is for two-domain models")
        self.config = config
        self.data = data
        self._stat_names = []
        for key, value in data.handler.buffers(data).items():
            self.register_buffer(key, value, persistent=False)
            self._stat_names.append(key)
        #: where the weights come from: run directory, checkpoint, step, raw or EMA weights
        self.provenance: dict[str, Any] = {"run": None, "checkpoint": None, "step": None, "weights": "initial"}
        #: the text tokenizer of token data (:class:`genzoo.tokenizer.Tokenizer`), handed over by the dataset
        self.tokenizer: Any = None

    # ----- introspection -------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        """What this instance can do: the declared capabilities, less those its data rules out; a model with a
        likelihood can also score anomalies (``score`` = negative log-likelihood)."""
        caps = set(self.base_capabilities)
        if not self.data.conditional:
            caps.discard(Capability.CONDITIONAL_SAMPLE)
        if caps & _LIKELIHOODS:
            caps.add(Capability.ANOMALY_SCORE)
        return frozenset(caps)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        config = getattr(cls, "Config", None)
        if cls.search_space and config is not None:  # a name or range the Config refuses fails at import
            check_space(cls.search_space, config, getattr(cls, "name", cls.__name__))

    @classmethod
    def tuning_space(cls) -> dict[str, Param]:
        """The hyperparameter search space of ``genzoo tune``: the declared :attr:`search_space`, or the
        learning rate ``lr`` within a decade of its default (empty when the Config has no ``lr``)."""
        space = cls.search_space or default_space(cls.Config)
        check_space(space, cls.Config, cls.name)
        return space

    @classmethod
    def from_pretrained(cls, name: str, **options: Any) -> GenerativeModel:
        """A pretrained model named ``name`` (``genzoo.load("NAME:ARG")`` for models with a ``name_argument``)."""
        raise GenzooError(f"model '{cls.name}' has no pretrained weights to load")

    @classmethod
    def data_options(cls, config: ModelConfig) -> dict[str, Any]:
        """Data options the model needs its data read with, as defaults under the user's own (e.g. a pretrained
        model's tokenizer: ``{"tokenizer": "hf:gpt2"}``). Default: none."""
        return {}

    @classmethod
    def sample_options_schema(cls) -> dict[str, Any]:
        """The JSON Schema of :attr:`SampleOptions` (what a server publishes for this model)."""
        return cls.SampleOptions.model_json_schema()

    @property
    def device(self) -> torch.device:
        """Where the weights are (the buffers for a model without parameters, e.g. a fitted mixture)."""
        tensor = next(self.parameters(), None)
        if tensor is None:
            tensor = next(self.buffers(), None)
        return torch.device("cpu") if tensor is None else tensor.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def require(self, capability: Capability) -> None:
        """Raise a clear error unless this model has ``capability``."""
        if capability not in self.capabilities:
            raise GenzooError(f"model '{self.name}' cannot {capability.value.replace('_', ' ')} "
                              f"(its capabilities: {', '.join(sorted(c.value for c in self.capabilities))})")

    def use_tokenizer(self, tokenizer: Any) -> None:
        """Take the dataset's text tokenizer (token data); models that read text check it fits here."""
        self.tokenizer = tokenizer

    # ----- data units <-> network units ------------------------------------------------------------------------
    def _stats(self) -> dict[str, Tensor]:
        return {key: getattr(self, key) for key in self._stat_names}

    def preprocess(self, x: Tensor) -> Tensor:
        """Data units -> network units: images [0, 1] -> [-1, 1], vectors standardised, tokens unchanged."""
        return self.data.handler.preprocess(x, self._stats())

    def postprocess(self, z: Tensor) -> Tensor:
        """Network units -> data units (inverse of :meth:`preprocess`; images are clamped to [0, 1])."""
        return self.data.handler.postprocess(z, self._stats())

    def preprocess_log_det(self) -> float:
        """log |d preprocess / dx| summed over one example: add to a density in network units to get data units."""
        return self.data.handler.log_det(self.data, self._stats())

    # ----- randomness ------------------------------------------------------------------------------------------
    def randn(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise drawn on the CPU (so a seed gives the same numbers on every device)."""
        return torch.randn(*shape, generator=generator).to(self.device)

    # ----- training --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; the default is one Adam over all parameters with ``config.lr``."""
        lr = getattr(self.config, "lr", 1e-3)
        return {"model": torch.optim.Adam(self.parameters(), lr=lr)}

    def lr_schedules(self) -> dict[str, dict[str, Any]]:
        """Per-optimizer overrides of the trainer's ``lr_schedule``/``warmup_steps`` (e.g. a GAN's discriminator
        without warm-up): ``{"discriminator": {"warmup_steps": 0}}``. Default: the trainer's for all."""
        return {}

    def setup(self, first_batch: Batch) -> None:
        """Called once, before the first training step and before the EMA copy is made, with the first training
        batch (data-dependent initialisation such as ActNorm). Its effect must live in the weights or buffers: it
        is saved with them and not run again on resume."""

    def ema_targets(self) -> list[nn.Module]:
        """The submodules whose parameters the trainer averages when it keeps an EMA (default: the whole model;
        a GAN averages its generator only)."""
        return [self]

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        """Do one training step on ``batch`` (stepping ``optim``) and return the losses to log.

        With several ``stages``, ``optim.stage`` says which one is running."""
        raise NotImplementedError

    def fit_whole_data(self, train: Batch, val: Batch, generator: torch.Generator) -> dict[str, float]:
        """Fit on every training example in one call (models declaring ``fits_whole_data``); ``val`` is the whole
        validation split, for choices made by held-out likelihood. Returns the metrics to log. The trainer counts
        the fit as one step and does not call :meth:`training_step`."""
        raise GenzooError(f"model '{self.name}' trains by steps, not in one fit")

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Metrics on one held-out batch (lower is better for ``validation_metric``). Called under no_grad unless
        ``validation_needs_grad``."""
        raise NotImplementedError

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """Metrics of what this model does beyond sampling, on the held-out test split: a seq2seq model's exact
        match, a translation error against a known mapping, a VQ-VAE's code perplexity, a masked model's
        pseudo-log-likelihood. ``genzoo eval`` records them under the model row's ``task``, apart from the
        likelihood columns (a pseudo-likelihood is not a likelihood). Names say the direction (``_error``, ``_accuracy``
        ...). Default: none."""
        return {}

    # ----- sampling --------------------------------------------------------------------------------------------
    @classmethod
    def sample_options(cls, **options: Any) -> SampleOptions:
        """Validated sampling options; a clear one-line error for unknown names, wrong types or out-of-range values."""
        try:
            return cls.SampleOptions(**options)
        except ValidationError as err:
            accepted = ", ".join(cls.SampleOptions.model_fields) or "none"
            raise ConfigError(f"bad sampling option for '{cls.name}': {validation_message(err)} "
                              f"(accepts: {accepted})") from None

    def check_labels(self, labels: Tensor | None, n: int) -> Tensor | None:
        """Class labels as a (n,) long tensor on the model's device, checked against the trained classes."""
        if labels is None:
            return None
        if Capability.CONDITIONAL_SAMPLE not in self.capabilities:
            raise GenzooError(f"model '{self.name}' was not trained with labels; it cannot sample a class")
        labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        labels = labels.expand(n) if labels.numel() == 1 else labels
        if len(labels) != n:
            raise GenzooError(f"got {len(labels)} class labels for {n} samples")
        if int(labels.max()) >= (self.data.num_classes or 0) or int(labels.min()) < 0:
            raise GenzooError(f"class label out of range 0..{(self.data.num_classes or 1) - 1}")
        return labels.to(self.device)

    def edit_inputs(self, image: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """Images to edit as (N, C, H, W) in [0, 1] on the model's device, and the mask as a boolean (N, C, H, W)
        'generate' map (non-zero = generate); one clear error for a wrong shape, range or an empty mask."""
        if self.data.kind is not DataKind.IMAGE:
            raise GenzooError(f"model '{self.name}' does not make images; nothing to edit")
        image = torch.as_tensor(image, dtype=torch.float32)
        image = image.unsqueeze(0) if image.dim() == len(self.data.shape) else image
        if tuple(image.shape[1:]) != tuple(self.data.shape):
            raise GenzooError(f"image has shape {tuple(image.shape[1:])}, the model expects {tuple(self.data.shape)} "
                              "(channels, height, width)")
        if image.min() < 0 or image.max() > 1:
            raise GenzooError("image values must be in [0, 1]")
        image = image.to(self.device)
        if mask is None:
            return image, None
        try:
            fill = torch.broadcast_to(torch.as_tensor(mask).to(self.device) != 0, image.shape)
        except RuntimeError:
            raise GenzooError(f"mask of shape {tuple(torch.as_tensor(mask).shape)} does not match image of shape "
                              f"{tuple(image.shape)}") from None
        if not fill.any():
            raise GenzooError("the mask is empty: no non-zero (white) pixel marks anything to generate")
        return image, fill

    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        prompt: str | list[str] | None = None,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` samples in data units. Same seed (or generator state) -> same samples on the same CPU.

        ``prompt``: what to draw (models with ``TEXT_TO_IMAGE``): one text for all ``n`` samples or one per sample.
        ``options`` are the model's :attr:`SampleOptions` (``genzoo sample RUN --help`` lists them)."""
        if n < 1:
            raise GenzooError(f"the number of samples must be at least 1, got {n}")
        typed = self.sample_options(**options)
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        labels = self.check_labels(labels, n)
        prompts = self.check_prompts(prompt, n)
        with eval_mode(self), torch.set_grad_enabled(self.sampling_needs_grad):
            if prompts is not None:
                return self._sample_prompted(n, generator, prompts, typed)
            return self._sample(n, generator, labels, typed)

    def check_prompts(self, prompt: str | list[str] | None, n: int) -> list[str] | None:
        """One prompt per sample (a single text repeats), checked against the model's ability to follow one."""
        if prompt is None:
            return None
        if Capability.TEXT_TO_IMAGE not in self.capabilities:
            raise GenzooError(f"model '{self.name}' cannot draw from a text prompt (only a model trained on captioned "
                              "data can, e.g. ldm or ddpm on scenes:)")
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n or not all(isinstance(p, str) and p.strip() for p in prompts):
            raise GenzooError(f"need one non-empty prompt or {n} of them, got {len(prompts)}")
        return prompts

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        """Draw ``n`` samples with the validated ``options`` (an instance of :attr:`SampleOptions`)."""
        raise GenzooError(f"model '{self.name}' cannot sample")

    def _sample_prompted(self, n: int, generator: torch.Generator, prompts: list[str], options: Any) -> Tensor:
        """Draw one sample per prompt with the validated ``options`` (``TEXT_TO_IMAGE``)."""
        raise GenzooError(f"model '{self.name}' cannot draw from a text prompt")

    def cost(self, **options: Any) -> Cost:
        """Network evaluations (and FLOPs, where known) per sample with these sampling options.

        The default measures it: the most forward calls any top-level module makes while drawing two samples.
        Models whose cost follows from their options (diffusion steps, sequence length) override it."""
        self.sample_options(**options)
        counts: dict[int, int] = {}
        hooks = [m.register_forward_hook(lambda mod, *_: counts.__setitem__(id(mod), counts.get(id(mod), 0) + 1))
                 for m in [self, *self.children()]]
        try:
            labels = torch.zeros(2, dtype=torch.long) if Capability.SAMPLE not in self.capabilities else None
            self.sample(2, seed=0, labels=labels, **options)
        finally:
            for hook in hooks:
                hook.remove()
        return Cost(nfe_per_sample=max(counts.values()) if counts else None)

    # ----- capabilities beyond sampling: each raises unless the model overrides it --------------------------------
    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p(x) (or a bound, see ``LogLikelihood.kind``) per example, in data units."""
        raise GenzooError(f"model '{self.name}' has no likelihood")

    def score(self, x: Tensor) -> Tensor:
        """Per-example anomaly score (higher = more unusual): the negative log-likelihood in nats by default;
        models with an energy or free energy override it and say what it is in :attr:`score_name`."""
        self.require(Capability.ANOMALY_SCORE)
        with eval_mode(self), torch.no_grad():
            return -self.log_likelihood(x.to(self.device)).values

    def encode(self, x: Tensor) -> Tensor:
        """Examples -> latent codes (B, ...)."""
        raise GenzooError(f"model '{self.name}' cannot encode")

    def decode(self, z: Tensor) -> Tensor:
        """Latent codes -> examples in data units."""
        raise GenzooError(f"model '{self.name}' cannot decode")

    def reconstruct(self, x: Tensor) -> Tensor:
        """Examples -> their reconstructions in data units."""
        raise GenzooError(f"model '{self.name}' cannot reconstruct")

    def interpolate(self, a: Tensor, b: Tensor, n: int = 8) -> Tensor:
        """``n`` examples on the path from example ``a`` to example ``b`` in latent space: (n, *shape)."""
        raise GenzooError(f"model '{self.name}' cannot interpolate")

    def inpaint(self, x: Tensor, mask: Tensor, **options: Any) -> Tensor:
        """Regenerate the pixels where ``mask`` is non-zero, keeping the others exactly."""
        raise GenzooError(f"model '{self.name}' cannot inpaint")

    def img2img(self, x: Tensor, strength: float = 0.5, **options: Any) -> Tensor:
        """Translate or edit images; ``strength`` in (0, 1] says how far from the input the result may go."""
        raise GenzooError(f"model '{self.name}' cannot do image-to-image")

    def generate(self, prompt: str = "", **generation: Any) -> str | list[str]:
        """Complete a text prompt (generation options: :class:`genzoo.generation.GenerationConfig`)."""
        raise GenzooError(f"model '{self.name}' does not generate text")

    @classmethod
    def generation_options(cls, **options: Any) -> Any:
        """The validated options of :meth:`generate` (a clear error for a bad one, before any work)."""
        raise GenzooError(f"model '{cls.name}' does not generate text")

    def chat(self, messages: list[dict[str, str]], **generation: Any) -> str | list[str]:
        """Answer a conversation ``[{"role": "user", "content": ...}]`` through the model's chat template."""
        raise GenzooError(f"model '{self.name}' has no chat template")

    def caption(self, images: Tensor, **generation: Any) -> list[str]:
        """One caption per image of (N, C, H, W) ``images`` in [0, 1] (generation options as for ``generate``)."""
        raise GenzooError(f"model '{self.name}' cannot caption images")

    def upscale(self, x_low: Tensor, **options: Any) -> Tensor:
        """(N, C, H, W) images at the model's data shape from (N, C, H / f, W / f) low-resolution ones in [0, 1]
        (f = ``self.upscale_factor``, ``self.downsample(x)`` the model's degradation of high-resolution images);
        ``options`` are the model's sampling options and ``seed``/``generator``."""
        raise GenzooError(f"model '{self.name}' cannot upscale images")

    # ----- export ---------------------------------------------------------------------------------------------
    def export_module(self, batch: int, context: int | None = None) -> ExportSpec:
        """The fixed-shape network that samples (a generator, a decoder, a flow's inverse, next-token logits) for
        ``batch`` examples at a time; ``context``: the positions a token model reads (None: its longest).
        Default: the model has no such network (``genzoo export`` says so)."""
        raise GenzooError(f"model '{self.name}' cannot be exported: its sampler is not one fixed-shape network "
                          "(exportable: GAN generators, VAE decoders, flows' inverses, gpt's next-token logits)")

    # ----- persistence hooks -----------------------------------------------------------------------------------
    def save_assets(self, directory: Path) -> None:
        """Write non-tensor assets (e.g. a tokenizer) next to the weights. Never pickle."""

    def load_assets(self, directory: Path) -> None:
        """Read what :meth:`save_assets` wrote."""

    def with_provenance(self, **where: Any) -> GenerativeModel:
        """Record where the weights come from (run, checkpoint, step, weights) and return the model."""
        self.provenance = {**self.provenance, **where}
        return self

