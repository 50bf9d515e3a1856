"""Cascades: a named virtual model that tries served models in order, cheapest first, and escalates to the next when
the answer's confidence is below the step's threshold -- a small fast model answers routine requests, a larger one
takes over when the small one is unsure.

Confidence signals (higher = more confident; a step escalates when ``value < threshold``):

* text, from the per-token log-probabilities of the answer (:class:`genzoo.generation.TokenLogprob`, the model's own
  distribution, so the signal does not move with the sampling temperature): ``mean_logprob`` = (1/T) sum_t log
  p(y_t | y_<t, x), ``min_logprob`` = min_t log p(y_t | ...), ``neg_entropy`` = -(1/T) sum_t H(p(. | y_<t, x));
* images, per image: ``likelihood`` = -anomaly score (``model.score``: log p(x) or a bound for likelihood models,
  minus the energy for energy models), ``discriminator`` = a GAN discriminator's logit D(x).

A constrained text that is not complete (``max_tokens`` ran out before the constraint's language was reached) or an
answer a step's verifier (``verify: arith:42``, :func:`genzoo.constrain.verify.verifier_from_spec`) rejects always
escalates. The last step always answers. Images escalate one by one: the images below the threshold are drawn again
by the next model.

**Calibration.** A threshold is given (``threshold``) or calibrated to a target escalation rate r
(``target_escalation``): the r-quantile of the signal on held-out inputs -- prompts (``calibration_prompts``, one per
line) for text, the step model's own samples (``calibration_samples``) for images -- so a fraction r of inputs like
them escalates. :func:`calibrate` is the same computation for Python users; ``genzoo serve-calibrate`` prints the
thresholds of a config, to pin them.

**Cost.** Each attempt's compute is estimated as 2 FLOPs per parameter per token read or written (the forward pass of
a dense network, Kaplan et al. 2020): ``flops = 2 * parameters * (prompt + completion tokens)``. A cascade reports
what it spent and what the last model alone would have spent on the same tokens, so what it saved.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from genzoo.contract import GenerativeModel, eval_mode
from genzoo.errors import ConfigError
from genzoo.generation import TokenLogprob

TextSignal = Literal["mean_logprob", "min_logprob", "neg_entropy"]
ImageSignal = Literal["likelihood", "discriminator"]
TEXT_SIGNALS: tuple[str, ...] = get_args(TextSignal)
IMAGE_SIGNALS: tuple[str, ...] = get_args(ImageSignal)


# ----- signals ------------------------------------------------------------------------------------------------------
def text_confidence(signal: str, records: Sequence[TokenLogprob]) -> float:
    """The confidence of one answer from its tokens' log-probabilities (0 for an empty answer: nothing was risked)."""
    if not records:
        return 0.0
    if signal == "mean_logprob":
        return sum(r.logprob for r in records) / len(records)
    if signal == "min_logprob":
        return min(r.logprob for r in records)
    if signal == "neg_entropy":
        return -sum(r.entropy for r in records) / len(records)
    raise ConfigError(f"unknown text signal '{signal}' (known: {', '.join(TEXT_SIGNALS)})")


def image_confidence(signal: str, model: GenerativeModel, images: torch.Tensor) -> torch.Tensor:
    """Per-image confidence of (N, C, H, W) images in data units."""
    if signal == "likelihood":
        return -model.score(images).float().cpu()
    if signal == "discriminator":
        critic = getattr(model, "discriminator", None)
        if critic is None:
            raise ConfigError(f"model '{model.name}' has no discriminator: use the 'likelihood' signal")
        with eval_mode(model), torch.no_grad():
            return critic(model.preprocess(images.to(model.device))).float().reshape(len(images), -1).mean(1).cpu()
    raise ConfigError(f"unknown image signal '{signal}' (known: {', '.join(IMAGE_SIGNALS)})")


def request_flops(model: GenerativeModel, tokens: int) -> float:
    """Forward compute of reading or writing ``tokens`` tokens: 2 FLOPs per parameter per token."""
    return 2.0 * sum(p.numel() for p in model.parameters()) * tokens


# ----- calibration --------------------------------------------------------------------------------------------------
def calibrate(values: Sequence[float], target_escalation: float) -> float:
    """The threshold under which a fraction ``target_escalation`` of held-out ``values`` fall: their quantile."""
    if not 0.0 < target_escalation < 1.0:
        raise ConfigError(f"target_escalation is a fraction in (0, 1), got {target_escalation}")
    if len(values) == 0:
        raise ConfigError("calibration needs at least one held-out value")
    return float(np.quantile(np.asarray(values, dtype=np.float64), target_escalation))


def text_signals(model: Any, prompts: Sequence[str], signal: str, **options: Any) -> list[float]:
    """The ``signal`` of ``model``'s answer to each held-out prompt (generation ``options`` as the cascade serves)."""
    return [text_confidence(signal, model.generate(p, return_details=True, **options).logprobs) for p in prompts]


def image_signals(model: GenerativeModel, signal: str, n: int, seed: int = 0) -> list[float]:
    """The ``signal`` of ``n`` of the model's own samples."""
    return image_confidence(signal, model, model.sample(n, seed=seed)).tolist()


# ----- configuration ------------------------------------------------------------------------------------------------
class CascadeStep(BaseModel):
    """One model of a cascade and when it hands over to the next."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., description="a served model's name")
    signal: str = Field("mean_logprob", description=f"confidence signal: text {', '.join(TEXT_SIGNALS)}; images "
                                                    f"{', '.join(IMAGE_SIGNALS)}")
    threshold: float | None = Field(None, allow_inf_nan=False, description="escalate when the signal is below this")
    target_escalation: float | None = Field(None, gt=0.0, lt=1.0, description="calibrate the threshold so this "
                                                                             "fraction of held-out inputs escalates")
    verify: str | None = Field(None, description="a verifier (arith:TARGET, python, z3:...): a rejected text "
                                                 "escalates")

    @model_validator(mode="after")
    def _known_signal(self) -> CascadeStep:
        if self.signal not in TEXT_SIGNALS + IMAGE_SIGNALS:
            raise ValueError(f"unknown signal '{self.signal}' (text: {', '.join(TEXT_SIGNALS)}; images: "
                             f"{', '.join(IMAGE_SIGNALS)})")
        if self.threshold is not None and self.target_escalation is not None:
            raise ValueError(f"step '{self.model}': give a threshold or a target_escalation, not both")
        return self


class CascadeConfig(BaseModel):
    """A cascade of the ``cascades`` section of the server's config."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., description="the model name clients send")
    steps: list[CascadeStep] = Field(..., min_length=2, description="models in the order they are tried")
    calibration_prompts: Path | None = Field(None, description="held-out prompts, one per line (text cascades)")
    calibration_samples: int = Field(256, ge=1, description="own samples per step model to calibrate on (images)")
    calibration_options: dict[str, Any] = Field(default_factory=dict, description="generation options of the "
                                                                                  "calibration (max_new_tokens ...)")

    @model_validator(mode="after")
    def _thresholds(self) -> CascadeConfig:
        for step in self.steps[:-1]:
            if step.threshold is None and step.target_escalation is None:
                raise ValueError(f"cascade '{self.name}': step '{step.model}' needs a threshold or a "
                                 "target_escalation (only the last step answers unconditionally)")
        return self


# ----- running ------------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one step's model answered: the answer (``result``), its confidence ``value``, why it must escalate
    regardless (``failure``: "constraint", "verify"; None) and its compute (None: unknown)."""

    result: Any
    value: float
    failure: str | None = None
    flops: float | None = None


@dataclass
class Tried:
    """One attempt of a cascade, as the response's ``escalations`` lists it."""

    model: str
    signal: str
    value: float
    threshold: float | None
    escalated: bool
    reason: str | None
    flops: float | None


class Cascade:
    """A running cascade: its config and its thresholds (calibrated once, on first use)."""

    def __init__(self, config: CascadeConfig) -> None:
        self.config = config
        self.name = config.name
        self._thresholds: list[float | None] | None = None
        self._lock = threading.Lock()

    def thresholds(self, registry: Any) -> list[float | None]:
        """Each step's threshold (None for the last), calibrating those given as a target escalation rate on the
        served models of ``registry`` (a :class:`~genzoo.serve.registry.ModelRegistry`)."""
        with self._lock:
            if self._thresholds is None:
                self._thresholds = [self._threshold(step, registry) for step in self.config.steps[:-1]] + [None]
            return self._thresholds

    def _threshold(self, step: CascadeStep, registry: Any) -> float:
        if step.threshold is not None:
            return step.threshold
        assert step.target_escalation is not None  # the config's validator
        served, model = registry.get(step.model)
        with served.lock:
            if step.signal in IMAGE_SIGNALS:
                values = image_signals(model, step.signal, self.config.calibration_samples)
            else:
                if self.config.calibration_prompts is None:
                    raise ConfigError(f"cascade '{self.name}': calibrating step '{step.model}' to a "
                                      "target_escalation needs calibration_prompts (held-out prompts, one per line)")
                values = text_signals(model, read_prompts(self.config.calibration_prompts), step.signal,
                                      **self.config.calibration_options)
        return calibrate(values, step.target_escalation)

    def run(self, registry: Any, attempt: Callable[[CascadeStep], Outcome]) -> tuple[CascadeStep, Outcome, list[Tried]]:
        """Try the steps in order until one is confident (or the last): (the answering step, its outcome, every
        attempt)."""
        tried: list[Tried] = []
        for step, threshold in zip(self.config.steps, self.thresholds(registry), strict=True):
            outcome = attempt(step)
            reason = outcome.failure or ("low_confidence" if threshold is not None and outcome.value < threshold
                                         else None)
            escalated = reason is not None and threshold is not None
            tried.append(Tried(step.model, step.signal, outcome.value, threshold, escalated, reason, outcome.flops))
            if not escalated:
                return step, outcome, tried
        raise AssertionError("the last step always answers")  # threshold None: never escalates


def cost_report(tried: list[Tried], last_only_flops: float | None) -> dict[str, float | None]:
    """What the cascade spent, what the last model alone would have spent on the same tokens, and the difference."""
    spent = None if any(t.flops is None for t in tried) else sum(t.flops or 0.0 for t in tried)
    saved = None if spent is None or last_only_flops is None else last_only_flops - spent
    return {"flops": spent, "last_model_flops": last_only_flops, "flops_saved": saved}


def escalations(tried: list[Tried]) -> list[dict[str, Any]]:
    """The attempts as the response lists them."""
    return [asdict(t) for t in tried]


def read_prompts(path: Path) -> list[str]:
    """Held-out prompts, one per line (blank lines skipped; ``\\n`` in a line stands for a newline)."""
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such file of calibration prompts")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    prompts = [line.replace("\\n", "\n") for line in lines if line.strip()]
    if not prompts:
        raise ConfigError(f"{path}: no prompts")
    return prompts
