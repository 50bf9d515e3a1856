"""The one model contract every family implements.

A model is a ``torch.nn.Module`` subclass of :class:`GenerativeModel` that declares

* which data kinds it accepts (:class:`DataKind`) and is built for one :class:`DataInfo` (shape, levels, labels);
* its capabilities (:class:`Capability`), discoverable at run time through ``model.capabilities``;
* its hyperparameters as a typed pydantic :class:`ModelConfig` with defaults;
* its optimizers (``configure_optimizers``) and one ``training_step`` that steps them through an
  :class:`Optimizers` handle -- one optimizer (VAE), two with alternating updates (GANs) or anything else, with no
  special case in the trainer;
* sampling with an explicit seed or ``torch.Generator`` (``sample``), in *data units*: images in [0, 1],
  vectors in the data's own scale, tokens as ids;
* optionally an exact log-likelihood or a bound on it (``log_likelihood``), encode/decode and friends.

Everything a model receives and returns is in data units; the conversion to the space a network works in
(``preprocess``/``postprocess``) lives here so that likelihoods of every family are reported in one convention.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import Tensor, nn

from genzoo.errors import ConfigError, GenzooError, NonFiniteError


class DataKind(StrEnum):
    """What one example is. IMAGE: float (C, H, W) in [0, 1]; VECTOR: float (D,); TOKENS: long (T,) ids."""

    IMAGE = "image"
    VECTOR = "vector"
    TOKENS = "tokens"


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


@dataclass(frozen=True)
class DataInfo:
    """Everything a model needs to know about its data; JSON-serialisable so a run loads without the data.

    ``levels`` is the number of discrete values one pixel channel can take (2 binary, 17 for sklearn digits, 256
    for 8-bit images), ``None`` for continuous data, and the vocabulary size for tokens. Likelihoods of discrete
    data are reported as probabilities over exactly these levels. ``mean``/``std`` (vector data) are per-feature
    statistics of the training split, used to standardise inputs.
    """

    kind: DataKind
    shape: tuple[int, ...]
    levels: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    spec: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dims(self) -> int:
        """Number of scalar dimensions of one example (the D of bits/dim)."""
        return math.prod(self.shape)

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DataInfo:
        fields = dict(raw)
        fields["kind"] = DataKind(fields["kind"])
        for key in ("shape", "class_names", "mean", "std"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        return cls(**fields)


@dataclass
class Batch:
    """One minibatch in data units; ``y`` holds integer class labels when the dataset has them."""

    x: Tensor
    y: Tensor | None = None

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.x.to(device), None if self.y is None else self.y.to(device))

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


class ModelConfig(BaseModel):
    """Base of every model's hyperparameters. Unknown keys are an error, values are type-checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


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


class Optimizers:
    """What ``training_step`` uses to update parameters: ``optim.step("name", loss)``.

    Zeroes the named optimizer's gradients, back-propagates, checks loss and gradient norm are finite, clips the
    gradient norm when asked, and steps. A model with several optimizers calls ``step`` once per optimizer, in
    whatever order and frequency its algorithm needs.
    """

    def __init__(self, optimizers: dict[str, torch.optim.Optimizer], grad_clip: float | None = None) -> None:
        self.optimizers = optimizers
        self.grad_clip = grad_clip

    def step(self, name: str, loss: Tensor) -> None:
        if name not in self.optimizers:
            raise GenzooError(f"training_step stepped unknown optimizer '{name}' (have {sorted(self.optimizers)})")
        if not torch.isfinite(loss):
            raise NonFiniteError(f"loss for optimizer '{name}' is {loss.item()}")
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip else float("inf"))
        if not torch.isfinite(norm):
            raise NonFiniteError(f"gradient norm for optimizer '{name}' is {norm.item()}")
        opt.step()


class GenerativeModel(nn.Module):
    """Base class of every genzoo model. Subclasses set the class variables and implement the abstract methods."""

    name: ClassVar[str]
    family: ClassVar[str]
    Config: ClassVar[type[ModelConfig]]
    data_kinds: ClassVar[frozenset[DataKind]]
    base_capabilities: ClassVar[frozenset[Capability]] = frozenset({Capability.SAMPLE})
    #: key of ``validation_step``'s output that picks the best checkpoint (lower is better)
    validation_metric: ClassVar[str] = "val_loss"
    #: hyperparameter overrides giving the smallest sensible model (contract tests, quick demos)
    smoke_config: ClassVar[dict[str, Any]] = {}
    #: training steps on one fixed batch after which the contract tests expect ``validation_metric`` to improve
    smoke_overfit_steps: ClassVar[int] = 50
    #: names of the keyword options ``sample`` accepts (e.g. ``sampler``, ``steps``, ``guidance``)
    sample_options: ClassVar[tuple[str, ...]] = ()
    #: trainer settings this model prefers over the trainer's defaults (e.g. ``{"ema_decay": 0.999}``)
    train_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: ModelConfig, data: DataInfo) -> None:
        super().__init__()
        if data.kind not in self.data_kinds:
            kinds = ", ".join(sorted(k.value for k in self.data_kinds))
            raise ConfigError(f"model '{self.name}' accepts {kinds} data, but the data is {data.kind.value}")
        self.config = config
        self.data = data
        if data.kind is DataKind.VECTOR:
            mean = torch.tensor(data.mean or [0.0] * data.dims, dtype=torch.float32)
            std = torch.tensor(data.std or [1.0] * data.dims, dtype=torch.float32)
            self.register_buffer("data_mean", mean, persistent=False)
            self.register_buffer("data_std", std.clamp_min(1e-8), persistent=False)

    # ----- introspection -------------------------------------------------------------------------------------
    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set(self.base_capabilities)
        if not self.data.conditional:
            caps.discard(Capability.CONDITIONAL_SAMPLE)
        return frozenset(caps)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ----- data units <-> network units ------------------------------------------------------------------------
    def preprocess(self, x: Tensor) -> Tensor:
        """Data units -> network units: images [0, 1] -> [-1, 1], vectors standardised, tokens unchanged."""
        if self.data.kind is DataKind.IMAGE:
            return x * 2.0 - 1.0
        if self.data.kind is DataKind.VECTOR:
            return (x - self.data_mean) / self.data_std
        return x

    def postprocess(self, z: Tensor) -> Tensor:
        """Network units -> data units (inverse of :meth:`preprocess`; images are clamped to [0, 1])."""
        if self.data.kind is DataKind.IMAGE:
            return ((z + 1.0) / 2.0).clamp(0.0, 1.0)
        if self.data.kind is DataKind.VECTOR:
            return z * self.data_std + self.data_mean
        return z

    def preprocess_log_det(self) -> float:
        """log |d preprocess / dx| summed over one example: add to a density in network units to get data units."""
        if self.data.kind is DataKind.IMAGE:
            return self.data.dims * math.log(2.0)
        if self.data.kind is DataKind.VECTOR:
            return float(-self.data_std.log().sum())
        return 0.0

    # ----- randomness ------------------------------------------------------------------------------------------
    def randn(self, *shape: int, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise drawn on the CPU (so a seed gives the same numbers on every device)."""
        return torch.randn(*shape, generator=generator).to(self.device)

    # ----- training --------------------------------------------------------------------------------------------
    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Named optimizers; the default is one Adam over all parameters with ``config.lr``."""
        lr = getattr(self.config, "lr", 1e-3)
        return {"model": torch.optim.Adam(self.parameters(), lr=lr)}

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        """Do one training step on ``batch`` (stepping ``optim``) and return the losses to log."""
        raise NotImplementedError

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        """Metrics on one held-out batch (lower is better for ``validation_metric``). Called under no_grad."""
        raise NotImplementedError

    # ----- sampling and likelihood -----------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        n: int,
        *,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        labels: Tensor | None = None,
        **options: Any,
    ) -> Tensor:
        """Draw ``n`` samples in data units. Same seed (or generator state) -> same samples on the same CPU."""
        unknown = sorted(set(options) - set(self.sample_options))
        if unknown:
            accepted = ", ".join(self.sample_options) or "none"
            raise GenzooError(f"model '{self.name}' has no sampling option {', '.join(unknown)} (accepts: {accepted})")
        if generator is None:
            generator = torch.Generator().manual_seed(0 if seed is None else seed)
        if labels is not None:
            if Capability.CONDITIONAL_SAMPLE not in self.capabilities:
                raise GenzooError(f"model '{self.name}' was not trained with labels; it cannot sample a class")
            labels = torch.as_tensor(labels, dtype=torch.long).reshape(-1)
            labels = labels.expand(n) if labels.numel() == 1 else labels
            if int(labels.max()) >= (self.data.num_classes or 0) or int(labels.min()) < 0:
                raise GenzooError(f"class label out of range 0..{(self.data.num_classes or 1) - 1}")
            labels = labels.to(self.device)
        was_training = self.training
        self.eval()
        try:
            return self._sample(n, generator, labels, **options)
        finally:
            self.train(was_training)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, **options: Any) -> Tensor:
        raise NotImplementedError

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p(x) (or a bound) per example; only models with a likelihood capability implement it."""
        raise GenzooError(f"model '{self.name}' has no likelihood")

    # ----- persistence hooks -----------------------------------------------------------------------------------
    def save_assets(self, directory: Path) -> None:
        """Write non-tensor assets (e.g. a tokenizer) next to the weights. Never pickle."""

    def load_assets(self, directory: Path) -> None:
        """Read what :meth:`save_assets` wrote."""
