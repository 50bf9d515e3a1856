"""Training: the shared :class:`Trainer` and the :func:`train` entry point used by the API and the CLI."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

import genzoo
from genzoo.contract import DataInfo, GenerativeModel
from genzoo.data import Dataset, load_dataset
from genzoo.errors import ConfigError
from genzoo.registry import build_model, make_config, model_class
from genzoo.training.trainer import TrainConfig, Trainer, parse_budget

__all__ = ["TrainConfig", "Trainer", "parse_budget", "split_overrides", "train"]


def split_overrides(model: str, overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Route ``--set key=value`` pairs to the model's hyperparameters or the trainer's settings."""
    model_keys = set(model_class(model).Config.model_fields)
    train_keys = set(TrainConfig.model_fields)
    hparams, trainer = {}, {}
    for key, value in overrides.items():
        if key in model_keys:
            hparams[key] = value
        elif key in train_keys:
            trainer[key] = value
        else:
            raise ConfigError(f"'{key}' is neither a hyperparameter of '{model}' "
                              f"({', '.join(sorted(model_keys))}) nor a trainer setting "
                              f"({', '.join(sorted(train_keys))})")
    return hparams, trainer


def default_run_dir(model: str, spec: str) -> Path:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(spec).name if "/" in spec else spec).strip("-")[:40] or "data"
    return Path("runs") / f"{model}-{slug}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def run_config(model: GenerativeModel, data: DataInfo, cfg: TrainConfig) -> dict[str, Any]:
    """The human-readable ``config.json`` of a run: everything needed to rebuild the model without the data."""
    return {
        "genzoo_version": genzoo.__version__,
        "model": model.name,
        "family": model.family,
        "hparams": model.config.model_dump(mode="json"),
        "data": {"spec": data.spec, "image_size": data.extra.get("image_size"), "info": data.to_json()},
        "train": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "torch_version": torch.__version__,
    }


def train(
    model: str,
    data: str | Dataset,
    *,
    steps: int | None = None,
    budget: str | float | None = None,
    out: str | Path | None = None,
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    image_size: int | None = None,
    init: str | None = None,
    lora: bool = False,
    **trainer_options: Any,
) -> Path:
    """Train model ``model`` on ``data`` (a data spec or a Dataset) and return the run directory.

    ``overrides`` may mix model hyperparameters and trainer settings (``batch_size``, ``ema_decay`` ...), like the
    CLI's ``--set``; ``trainer_options`` are trainer settings. With ``resume=True`` the run in ``out`` continues
    from its ``last/`` checkpoint to ``steps`` total steps (or for another ``budget``). ``init`` (a run directory or
    ``hf:NAME``) starts from trained weights and ``lora`` trains LoRA adapters only (see :mod:`genzoo.finetune`).
    """
    from genzoo.finetune import plan_training

    hparams, from_overrides = split_overrides(model, dict(overrides or {}))
    plan = plan_training(model, data, hparams, init=init, lora=lora)
    model, data, hparams = plan.model, plan.data, plan.hparams
    cls = model_class(model)
    settings = {**cls.train_defaults, **from_overrides, **trainer_options, "seed": seed}
    settings.update({k: v for k, v in {"steps": steps, "budget": budget}.items() if v is not None})
    try:
        cfg = TrainConfig(**settings)
    except ValueError as err:
        raise ConfigError(f"bad trainer setting: {err}") from None
    make_config(model, hparams)  # fail on bad hyperparameters before touching the data
    dataset = data if isinstance(data, Dataset) else load_dataset(data, image_size=image_size)
    torch.manual_seed(seed)
    net = build_model(model, dataset.info, hparams)
    plan.apply(net)
    run_dir = Path(out) if out is not None else default_run_dir(model, dataset.info.spec)
    config = run_config(net, dataset.info, cfg)
    if init or lora:
        config["finetune"] = {"init": init, "lora": lora, "notes": plan.notes}
    trainer = Trainer(net, dataset, run_dir, cfg, config, resume=resume)
    trainer.fit()
    return run_dir
