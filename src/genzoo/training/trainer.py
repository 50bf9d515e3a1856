"""The trainer shared by every family.

It knows nothing about any model: it asks the model for named optimizers, feeds it the batch of each step
(``Dataset.batch_at``, so a resumed run sees the same batches), and lets ``training_step`` decide which optimizer to
step when. Around that: ``setup(first_batch)`` once, training stages, learning-rate warm-up/decay per optimizer,
mixed precision, gradient accumulation, EMA of the model's ``ema_targets()``, validation with best-checkpoint
tracking, periodic sample previews, atomic checkpoints, exact resume, NaN/Inf and divergence detection, a time or
step budget, and a progress bar. Every file it writes goes through :class:`~genzoo.runs.RunDir`.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from genzoo._version import __version__
from genzoo.contract import GenerativeModel, Stage, eval_mode
from genzoo.data.base import Dataset
from genzoo.errors import ConfigError, NonFiniteError
from genzoo.io import atomic_write_bytes, load_tensors
from genzoo.runs import RunDir
from genzoo.runs.checkpoint import load_weights, optimizer_from_files, restore_rng
from genzoo.training.distributed import (
    DataParallelOptimizers,
    World,
    barrier,
    broadcast_model,
    broadcast_tensors,
    current_world,
    from_main,
    mean_over_processes,
    micro_batches,
    micro_seed,
    persistent_buffers,
    rank_device,
)
from genzoo.training.ema import EMA
from genzoo.training.logging import TRACKERS, MetricsLogger, ProgressBar, make_trackers


def parse_budget(value: str | float | int | None) -> float | None:
    """'90s', '10m', '1.5h', '45' (seconds) or a number of seconds -> seconds (> 0)."""
    if value is None:
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
        if not match:
            raise ConfigError(f"budget '{value}' is not a duration like 90s, 10m or 1h")
        seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if not seconds > 0:
        raise ConfigError(f"budget must be more than 0 seconds, got '{value}'")
    return seconds


Precision = Literal["auto", "fp32", "bf16", "fp16"]


class TrainConfig(BaseModel):
    """Trainer settings (hyperparameters of the model live in the model's Config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = Field(0, ge=0)
    steps: int | None = Field(None, ge=1, description="total training steps")
    budget: float | None = Field(None, description="seconds of training in this invocation")
    batch_size: int = Field(64, ge=1)
    grad_clip: float | None = Field(None, gt=0)
    grad_accum: int = Field(1, ge=1, description="micro-batches per optimizer update (batch_size must divide)")
    ema_decay: float | None = Field(None, ge=0, lt=1)
    warmup_steps: int = Field(0, ge=0)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    precision: Precision = Field("fp32", description="auto: bf16 where the hardware has it natively")
    checkpoint_every: int = Field(500, ge=1)
    sample_every: int = Field(500, ge=1)
    eval_every: int = Field(250, ge=1)
    log_every: int = Field(25, ge=1)
    val_examples: int = Field(512, ge=1)
    divergence_every: int = Field(50, ge=1, description="steps between checks that the weights stay bounded")
    max_weight_rms: float = Field(1e6, gt=0, description="root-mean-square of any weight tensor that counts as "
                                                          "diverged")
    device: str = "auto"
    progress: bool = True
    tracker: str = Field("none", description="experiment tracker besides metrics.jsonl and TensorBoard: none or "
                                             "mlflow")
    tracking_uri: str | None = Field(None, description="the tracker's store (MLflow: default MLFLOW_TRACKING_URI, "
                                                       "else sqlite:///mlflow.db in the working directory)")
    experiment: str = Field("genzoo", min_length=1, description="experiment the tracker files the run under")

    @field_validator("tracker")
    @classmethod
    def _known_tracker(cls, value: str) -> str:
        if value != "none" and value not in TRACKERS:
            raise ValueError(f"unknown tracker '{value}' (have none, {', '.join(sorted(TRACKERS))})")
        return value

    @field_validator("budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> float | None:
        return parse_budget(value)

    def target_steps(self) -> int | None:
        if self.steps is None and self.budget is None:
            return 1000
        return self.steps


#: settings that change what a run computes: a resume must keep them (the others may change and are recorded)
FIXED_ON_RESUME = ("seed", "batch_size", "grad_clip", "grad_accum", "ema_decay", "warmup_steps", "lr_schedule",
                   "precision", "val_examples")


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)") from None
    available = {"cpu": True, "cuda": torch.cuda.is_available(),
                 "mps": bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()}
    if not available.get(device.type, False):
        raise ConfigError(f"device '{name}' is not available on this machine")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether the hardware computes bf16 matmuls natively (where bf16 autocast pays off)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a training step, or None for full precision."""
    if precision == "auto":
        return torch.bfloat16 if native_bf16(device) else None
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA GPU (use bf16, or auto, on this device)")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% at ``steps``."""

    kind: str
    warmup_steps: int
    steps: int | None

    def factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.kind == "cosine" and self.steps:
            span = max(1, self.steps - self.warmup_steps)
            progress = min(1.0, max(0.0, (step - self.warmup_steps) / span))
            return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
        return warm


def stage_plan(model: GenerativeModel) -> tuple[Stage, ...]:
    stages = model.stages or (Stage("train"),)
    if any(s.share <= 0 for s in stages):
        raise ConfigError(f"model '{model.name}': every training stage needs a positive share")
    return stages


class Trainer:
    """Train ``model`` on ``dataset`` into ``run`` (created, or resumed with ``resume=True``).

    The caller holds the run's lock and has checked the settings; ``run_config`` is the run's ``config.json``.
    ``on_validation(step, metrics)`` is called after each validation; returning True stops training there (the run
    still ends with its ``last/`` checkpoint): how a hyperparameter search prunes a bad trial.

    In a data-parallel ``world`` (default: the initialised process group, see :mod:`genzoo.training.distributed`)
    ``batch_size`` is the global batch; every process computes, process 0 validates and writes.
    """

    def __init__(self, model: GenerativeModel, dataset: Dataset, run: RunDir, cfg: TrainConfig,
                 run_config: dict[str, Any], resume: bool = False,
                 on_validation: Callable[[int, dict[str, float]], bool] | None = None,
                 world: World | None = None) -> None:
        self.world = world = world or current_world()
        if cfg.lr_schedule == "cosine" and not cfg.steps:
            raise ConfigError("lr_schedule=cosine needs a step count (--steps)")
        if cfg.batch_size % (cfg.grad_accum * world.size):
            raise ConfigError(f"batch_size {cfg.batch_size} does not split into grad_accum={cfg.grad_accum} "
                              f"equal micro-batches on each of {world.size} process(es)")
        self.model, self.dataset, self.run, self.cfg = model, dataset, run, cfg
        self.device = rank_device(select_device(cfg.device), world)
        self.dtype = autocast_dtype(cfg.precision, self.device)
        self.stages = stage_plan(model)
        self.model.to(self.device)
        self.step = 0
        self.stage_index = 0
        self.best: float | None = None
        self.last_saved: int | None = None
        self.last_validated: int | None = None
        self.last_preview: int | None = None
        self.val_generator_seed = cfg.seed + 7919
        self.on_validation = on_validation
        self.stop_requested = False
        if resume:
            state, tensors, folder = self._resume()
        else:
            self._create(run_config)
        if world.parallel:  # one initialisation (and setup) everywhere: process 0's
            broadcast_model(model)
        self.optimizers = model.configure_optimizers()
        self.schedules = self._schedules()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        scaler = torch.amp.GradScaler("cuda") if self.dtype is torch.float16 else None
        self.optim = DataParallelOptimizers(self.optimizers, cfg.grad_clip, scaler, world)
        self.optim.accumulate = cfg.grad_accum
        self.ema = EMA(model, cfg.ema_decay, model.ema_targets()) if cfg.ema_decay else None
        if resume:
            self._restore(state, tensors, folder)
        self.optim.stage = self.stage
        trackers = make_trackers(run.path, cfg.tracker, cfg.tracking_uri, cfg.experiment) if world.is_main else []
        self.logger = MetricsLogger(run.path, trackers, enabled=world.is_main)
        self.logger.begin(run_config, resume)
        if resume:  # marks where this invocation's clock ("time") restarts from 0
            self.logger.log(self.step, "resume", {})

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    @property
    def validation_metric(self) -> str:
        return self.stage.validation_metric or self.model.validation_metric

    def _schedules(self) -> dict[str, LRSchedule]:
        overrides = self.model.lr_schedules()
        unknown = sorted(set(overrides) - set(self.optimizers))
        if unknown:
            raise ConfigError(f"model '{self.model.name}' schedules unknown optimizer(s) {unknown}")
        out = {}
        for name in self.optimizers:
            spec = {"lr_schedule": self.cfg.lr_schedule, "warmup_steps": self.cfg.warmup_steps,
                    **overrides.get(name, {})}
            out[name] = LRSchedule(spec["lr_schedule"], spec["warmup_steps"], self.cfg.steps)
        return out

    # ----- run directory ---------------------------------------------------------------------------------------
    def _create(self, run_config: dict[str, Any]) -> None:
        if self.world.is_main:
            self.run.write_config(run_config)
            self.model.save_assets(self.run.path)
        first = self.dataset.batch_at(0, self.cfg.batch_size, self.cfg.seed).to(self.device)
        with torch.no_grad():
            self.model.setup(first)

    def _resume(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
        """Weights and counters of ``last/``; the optimizer, EMA and RNG state follow in :meth:`_restore`, once the
        optimizers and the EMA exist."""
        state, tensors, folder = self.run.resume_state()
        load_weights(self.model, folder / "model.safetensors")
        self.step, self.best, self.last_saved = state["step"], state.get("best"), state["step"]
        self.last_validated = self.last_preview = state["step"]
        self.stage_index = min(int(state.get("stage", 0)), len(self.stages) - 1)
        if self.world.is_main:
            self.run.truncate_metrics(self.step)
        return state, tensors, folder

    def _restore(self, state: dict[str, Any], tensors: dict[str, torch.Tensor], folder: Path) -> None:
        optimizer_from_files(self.optimizers, {k: v for k, v in tensors.items() if not k.startswith("rng/")},
                             state["optimizers"])
        if self.ema is not None:
            self.ema.load_model_tensors(load_tensors(folder / "ema.safetensors"))
        restore_rng({k[4:]: v for k, v in tensors.items() if k.startswith("rng/")})

    def _save(self, name: str) -> None:
        if name == "last":
            self.last_saved = self.step
        if not self.world.is_main:
            return
        ema_tensors = self.ema.model_tensors() if self.ema is not None else None
        is_last = name == "last"
        state = {"step": self.step, "best": self.best, "stage": self.stage_index,
                 "saved": datetime.now(UTC).isoformat(timespec="seconds"), "genzoo_version": __version__}
        self.run.save_checkpoint(name, self.model, ema_tensors, self.optimizers if is_last else None, state)

    # ----- one step --------------------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        factors = {}
        for name, opt in self.optimizers.items():
            factors[name] = self.schedules[name].factor(self.step)
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factors[name]
        return next(iter(factors.values()))

    def _train_step(self) -> dict[str, float]:
        """One update on the global batch of this step: this process's micro-batches (all of them in a single
        process), each drawing its randomness from its own stream, so any process layout computes the same."""
        factor = self._set_lr()
        batch = self.dataset.batch_at(self.step, self.cfg.batch_size, self.cfg.seed).to(self.device)
        self.model.train()
        k = self.cfg.grad_accum
        totals: dict[str, float] = {}
        try:
            for i, (index, part) in enumerate(micro_batches(batch, self.world, k)):
                self.optim.micro = i
                torch.manual_seed(micro_seed(self.cfg.seed, self.step, index))
                with torch.autocast(self.device.type, dtype=self.dtype) if self.dtype else nullcontext():
                    losses = self.model.training_step(part, self.step, self.optim)
                for key, value in losses.items():
                    totals[key] = totals.get(key, 0.0) + value / k
        except NonFiniteError as err:
            raise NonFiniteError(f"training stopped at step {self.step}: {err}; {self._kept()}. Try a lower "
                                 "learning rate (--set lr=...) or gradient clipping (--set grad_clip=1.0)") from None
        self.step += 1
        if self.world.parallel:
            broadcast_tensors(persistent_buffers(self.model))
        if self.ema is not None:
            self.ema.update(self.step)
        if self.step % self.cfg.divergence_every == 0:
            self._check_divergence()
        return {**totals, "lr_factor": factor}

    def _kept(self) -> str:
        return (f"the last good checkpoint (step {self.last_saved}) is kept in {self.run.path / 'last'}"
                if self.last_saved is not None else "no checkpoint had been written yet")

    def _check_divergence(self) -> None:
        """Stop when weights explode even though the losses stay finite (a GAN at a huge learning rate)."""
        for name, tensor in self.model.state_dict().items():
            if not tensor.is_floating_point() or not tensor.numel():
                continue
            rms = float(tensor.detach().float().square().mean().sqrt())
            if not math.isfinite(rms) or rms > self.cfg.max_weight_rms:
                raise NonFiniteError(f"training stopped at step {self.step}: the weights diverged ('{name}' has "
                                     f"root-mean-square {rms:.3g}, the limit is max_weight_rms="
                                     f"{self.cfg.max_weight_rms:g}); {self._kept()}. Try a lower learning rate "
                                     "(--set lr=...) or gradient clipping (--set grad_clip=1.0)")

    # ----- validation and previews -----------------------------------------------------------------------------
    def _weights_for_eval(self) -> Any:
        return self.ema.applied() if self.ema is not None else nullcontext()

    def validate(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.val_generator_seed)
        totals: dict[str, float] = {}
        count = 0
        with eval_mode(self.model), self._weights_for_eval(), torch.set_grad_enabled(
                self.model.validation_needs_grad):
            for batch in self.dataset.batches("val", self.cfg.batch_size, limit=self.cfg.val_examples):
                metrics = self.model.validation_step(batch.to(self.device), generator)
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
                count += len(batch)
        return {k: v / max(count, 1) for k, v in totals.items()}

    def _validate_and_keep_best(self) -> dict[str, float]:
        self.last_validated = self.step
        if not self.world.is_main:  # process 0 validates for all (the weights are the same everywhere)
            return {}
        metrics = self.validate()
        value = metrics.get(self.validation_metric)
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best):
            self.best = value
            self._save("best")
            metrics["best"] = 1.0
        self.logger.log(self.step, "val", metrics)
        if self.on_validation is not None and self.on_validation(self.step, metrics):
            self.stop_requested = True
        return metrics

    def _preview(self) -> None:
        self.last_preview = self.step
        if not self.world.is_main:
            return
        handler = self.model.data.handler
        directory = self.run.samples_dir
        directory.mkdir(parents=True, exist_ok=True)
        reference = next(self.dataset.batches("val", 1000)).x
        with self._weights_for_eval():
            step_file = directory / f"step-{self.step:07d}{handler.preview_suffix}"
            written = handler.preview(self.model, reference, step_file)
        atomic_write_bytes(directory / f"latest{written.suffix}", written.read_bytes())  # drawn once, kept twice
        self.logger.log_file(written, "samples")

    def _advance_stage(self, target: int | None, elapsed: float) -> None:
        """Move to the next stage when this one has had its share of the steps (or of the time budget)."""
        total = sum(s.share for s in self.stages)
        end_share = sum(s.share for s in self.stages[: self.stage_index + 1]) / total
        if self.stage_index + 1 >= len(self.stages):
            return
        done = (self.step >= round(end_share * target) if target is not None
                else self.cfg.budget is not None and elapsed >= end_share * self.cfg.budget)
        if done:
            self.stage_index += 1
            self.optim.stage = self.stage
            self.best = None  # the next stage is judged by its own validation metric
            self.logger.log(self.step, "stage", {"stage": float(self.stage_index)})

    # ----- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the step target or time budget and end with a validated ``last/`` checkpoint; the trackers
        hear how the run ended."""
        try:
            summary = self._fit_whole_data() if self.model.fits_whole_data else self._fit_steps()
        except BaseException:
            self.logger.close(failed=True)
            raise
        self.logger.close()
        barrier(self.world)  # every process returns once process 0 has written the run
        return summary

    def _keep_going(self, start: float, target: int | None) -> tuple[bool, float]:
        """Whether to take another step, and the seconds since ``start``: process 0's, so that all agree."""
        elapsed = time.perf_counter() - start
        more = not self.stop_requested and (target is None or self.step < target) and (
            self.cfg.budget is None or elapsed < self.cfg.budget)
        more_flag, elapsed = from_main([float(more), elapsed], self.world)
        return more_flag > 0, elapsed

    def _fit_steps(self) -> dict[str, Any]:
        cfg = self.cfg
        target = cfg.target_steps()
        start_step, start = self.step, time.perf_counter()
        bar = ProgressBar(cfg.progress and self.world.is_main, target, cfg.budget, self.model.name, start_step)
        running: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: a GAN's generator loss comes only every n_critic steps
        val: dict[str, float] = {}
        with bar:
            while True:
                more, elapsed = self._keep_going(start, target)
                if not more:
                    break
                self._advance_stage(target, elapsed)
                losses = self._train_step()
                for key, value in losses.items():
                    running[key] = running.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                elapsed = time.perf_counter() - start
                rate = (self.step - start_step) / max(elapsed, 1e-9)
                if self.step % cfg.log_every == 0:
                    means = mean_over_processes({k: v / counts[k] for k, v in running.items()}, self.world)
                    self.logger.log(self.step, "train", {**means, "steps_per_s": rate})
                    running, counts = {}, {}
                if self.step % cfg.eval_every == 0:
                    val = self._validate_and_keep_best()
                if self.step % cfg.sample_every == 0:
                    self._preview()
                if self.step % cfg.checkpoint_every == 0:
                    self._save("last")
                bar.update(self.step, elapsed, losses, val)
        elapsed = time.perf_counter() - start
        self._finish()
        return {"steps": self.step, "seconds": elapsed, "steps_per_s": (self.step - start_step) / max(elapsed, 1e-9),
                "best": self.best, "validation_metric": self.validation_metric, "last_val": val}

    def _fit_whole_data(self) -> dict[str, Any]:
        """One call on the whole training split (a fitted mixture): that is the run's one step; a resumed run that
        has it does nothing more. Steps and budget do not apply."""
        start = time.perf_counter()
        if self.step == 0:
            train, val = self.dataset.examples("train").to(self.device), self.dataset.examples("val").to(self.device)
            generator = torch.Generator().manual_seed(self.cfg.seed)
            with torch.no_grad():
                metrics = self.model.fit_whole_data(train, val, generator)
            self.step = 1
            self.logger.log(self.step, "train", {**metrics, "fit_seconds": time.perf_counter() - start})
        self._finish()
        elapsed = time.perf_counter() - start
        return {"steps": self.step, "seconds": elapsed, "steps_per_s": None, "best": self.best,
                "validation_metric": self.validation_metric, "last_val": {}}

    def _finish(self) -> None:
        """Every run ends validated, with a preview and a ``last/`` checkpoint of its final step."""
        self._check_divergence()
        if self.last_validated != self.step:
            self._validate_and_keep_best()
        if self.last_preview != self.step or not any(self.run.samples_dir.glob("latest.*")):
            self._preview()
        if self.last_saved != self.step:
            self._save("last")
