"""The trainer shared by every family.

It knows nothing about any model: it asks the model for named optimizers, feeds it the batch of each step
(``Dataset.batch_at``, so a resumed run sees the same batches), and lets ``training_step`` decide which optimizer to
step when. Around that: learning-rate warm-up/decay, EMA, validation with best-checkpoint tracking, periodic
sample previews, atomic checkpoints, exact resume, NaN/Inf detection, a time or step budget, and a progress bar.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

import genzoo
from genzoo.contract import GenerativeModel, Optimizers
from genzoo.data.base import Dataset
from genzoo.errors import ConfigError, NonFiniteError, RunDirError
from genzoo.io import replace_dir_atomically, resolve_dir, write_json
from genzoo.training.checkpoint import (
    load_weights,
    optimizer_from_files,
    read_trainer_state,
    restore_rng,
    write_checkpoint,
)
from genzoo.training.ema import EMA
from genzoo.training.logging import MetricsLogger, ProgressBar
from genzoo.training.previews import write_preview


def parse_budget(value: str | float | int | None) -> float | None:
    """'90s', '10m', '1.5h', '45' (seconds) or a number of seconds -> seconds."""
    if value is None or isinstance(value, int | float):
        return None if value is None else float(value)
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([smh]?)\s*", str(value))
    if not match:
        raise ConfigError(f"budget '{value}' is not a duration like 90s, 10m or 1h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]


class TrainConfig(BaseModel):
    """Trainer settings (hyperparameters of the model live in the model's Config)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    seed: int = 0
    steps: int | None = None
    budget: float | None = None  # seconds of training in this invocation
    batch_size: int = 64
    grad_clip: float | None = None
    ema_decay: float | None = None
    warmup_steps: int = 0
    lr_schedule: Literal["constant", "cosine"] = "constant"
    checkpoint_every: int = 500
    sample_every: int = 500
    eval_every: int = 250
    log_every: int = 25
    val_examples: int = 512
    device: str = "auto"
    progress: bool = True

    @field_validator("budget", mode="before")
    @classmethod
    def _parse_budget(cls, value: Any) -> float | None:
        return parse_budget(value)

    def target_steps(self) -> int | None:
        if self.steps is None and self.budget is None:
            return 1000
        return self.steps


def select_device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine decay to 10% at ``steps``."""
    warm = min(1.0, (step + 1) / cfg.warmup_steps) if cfg.warmup_steps else 1.0
    if cfg.lr_schedule == "cosine" and cfg.steps:
        progress = min(1.0, max(0.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))
        return warm * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))
    return warm


class Trainer:
    """Train ``model`` on ``dataset`` into ``run_dir`` (created, or resumed with ``resume=True``)."""

    def __init__(self, model: GenerativeModel, dataset: Dataset, run_dir: Path, cfg: TrainConfig,
                 run_config: dict[str, Any], resume: bool = False) -> None:
        if cfg.lr_schedule == "cosine" and not cfg.steps:
            raise ConfigError("lr_schedule=cosine needs a step count (--steps)")
        self.model, self.dataset, self.run_dir, self.cfg = model, dataset, Path(run_dir), cfg
        self.device = select_device(cfg.device)
        self.model.to(self.device)
        self.optimizers = model.configure_optimizers()
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group.setdefault("initial_lr", group["lr"])
        self.optim = Optimizers(self.optimizers, cfg.grad_clip)
        self.ema = EMA(model, cfg.ema_decay) if cfg.ema_decay else None
        self.step = 0
        self.best: float | None = None
        self.last_saved: int | None = None
        self.val_generator_seed = cfg.seed + 7919
        if resume:
            self._resume(run_config)
        else:
            self._create(run_config)
        self.logger = MetricsLogger(self.run_dir)

    # ----- run directory ---------------------------------------------------------------------------------------
    def _create(self, run_config: dict[str, Any]) -> None:
        if (self.run_dir / "config.json").exists():
            raise RunDirError(f"{self.run_dir} already holds a run; pass --resume to continue it or choose --out")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_json(self.run_dir / "config.json", run_config)
        self.model.save_assets(self.run_dir)

    def _resume(self, run_config: dict[str, Any]) -> None:
        last = resolve_dir(self.run_dir / "last")
        if last is None:
            raise RunDirError(f"{self.run_dir}: nothing to resume (no last/ checkpoint)")
        saved = json.loads((self.run_dir / "config.json").read_text())
        for key in ("model", "hparams"):
            if saved.get(key) != run_config.get(key):
                raise RunDirError(f"{self.run_dir}: --resume with a different {key} than the saved run "
                                  f"({saved.get(key)} != {run_config.get(key)})")
        if saved["data"]["spec"] != run_config["data"]["spec"]:
            raise RunDirError(f"{self.run_dir}: --resume with data '{run_config['data']['spec']}' but the run "
                              f"was trained on '{saved['data']['spec']}'")
        load_weights(self.model, last / "model.safetensors")
        state, tensors = read_trainer_state(last)
        optimizer_from_files(self.optimizers, {k: v for k, v in tensors.items() if not k.startswith("rng/")},
                             state["optimizers"])
        if self.ema is not None:
            from genzoo.io import load_tensors

            self.ema.load_model_tensors(load_tensors(last / "ema.safetensors"))
        restore_rng({k[4:]: v for k, v in tensors.items() if k.startswith("rng/")})
        self.step, self.best, self.last_saved = state["step"], state.get("best"), state["step"]

    def _save(self, name: str) -> None:
        ema_tensors = self.ema.model_tensors() if self.ema is not None else None
        is_last = name == "last"
        state = {"step": self.step, "best": self.best, "saved": datetime.now(UTC).isoformat(timespec="seconds"),
                 "genzoo_version": genzoo.__version__}
        replace_dir_atomically(self.run_dir / name, lambda d: write_checkpoint(
            d, self.model, ema_tensors, self.optimizers if is_last else None, state))
        if is_last:
            self.last_saved = self.step

    # ----- one step --------------------------------------------------------------------------------------------
    def _set_lr(self) -> float:
        factor = lr_factor(self.cfg, self.step)
        for opt in self.optimizers.values():
            for group in opt.param_groups:
                group["lr"] = group["initial_lr"] * factor
        return factor

    def _train_step(self) -> dict[str, float]:
        factor = self._set_lr()
        batch = self.dataset.batch_at(self.step, self.cfg.batch_size, self.cfg.seed).to(self.device)
        self.model.train()
        try:
            losses = self.model.training_step(batch, self.step, self.optim)
        except NonFiniteError as err:
            kept = (f"the last good checkpoint (step {self.last_saved}) is kept in {self.run_dir / 'last'}"
                    if self.last_saved is not None else "no checkpoint had been written yet")
            raise NonFiniteError(f"training stopped at step {self.step}: {err}; {kept}. Try a lower learning rate "
                                 "(--set lr=...) or gradient clipping (--set grad_clip=1.0)") from None
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.step)
        return {**losses, "lr_factor": factor}

    # ----- validation and previews -----------------------------------------------------------------------------
    def _weights_for_eval(self) -> Any:
        from contextlib import nullcontext

        return self.ema.applied() if self.ema is not None else nullcontext()

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        generator = torch.Generator().manual_seed(self.val_generator_seed)
        totals: dict[str, float] = {}
        count = 0
        self.model.eval()
        with self._weights_for_eval():
            for batch in self.dataset.batches("val", self.cfg.batch_size, limit=self.cfg.val_examples):
                metrics = self.model.validation_step(batch.to(self.device), generator)
                for key, value in metrics.items():
                    totals[key] = totals.get(key, 0.0) + float(value) * len(batch)
                count += len(batch)
        self.model.train()
        return {k: v / max(count, 1) for k, v in totals.items()}

    def _validate_and_keep_best(self) -> dict[str, float]:
        metrics = self.validate()
        key = self.model.validation_metric
        value = metrics.get(key)
        if value is not None and math.isfinite(value) and (self.best is None or value < self.best):
            self.best = value
            self._save("best")
            metrics["best"] = 1.0
        self.logger.log(self.step, "val", metrics)
        return metrics

    def _preview(self) -> None:
        with self._weights_for_eval():
            write_preview(self.model, self.dataset, self.run_dir / "samples", self.step)

    # ----- the loop --------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        target = cfg.target_steps()
        start_step, start = self.step, time.perf_counter()
        bar = ProgressBar(cfg.progress, target, cfg.budget, self.model.name, start_step)
        running: dict[str, float] = {}
        counts: dict[str, int] = {}  # per key: a GAN's generator loss comes only every n_critic steps
        val: dict[str, float] = {}
        with bar:
            while (target is None or self.step < target) and (
                cfg.budget is None or time.perf_counter() - start < cfg.budget
            ):
                losses = self._train_step()
                for key, value in losses.items():
                    running[key] = running.get(key, 0.0) + value
                    counts[key] = counts.get(key, 0) + 1
                elapsed = time.perf_counter() - start
                rate = (self.step - start_step) / max(elapsed, 1e-9)
                if self.step % cfg.log_every == 0:
                    means = {k: v / counts[k] for k, v in running.items()}
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
        if self.step != self.last_saved:
            val = self._validate_and_keep_best() if self.step % cfg.eval_every else val
            self._save("last")
            self._preview()
        self.logger.close()
        return {"steps": self.step, "seconds": elapsed, "steps_per_s": (self.step - start_step) / max(elapsed, 1e-9),
                "best": self.best, "validation_metric": self.model.validation_metric, "last_val": val}
