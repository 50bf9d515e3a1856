"""Training: the shared :class:`Trainer` and the :func:`train` entry point used by the API and the CLI.

:func:`train` checks everything it is given -- model, hyperparameters, trainer settings, data, and for ``--resume``
that the flags agree with the saved run -- before it creates or touches a run directory, so a refused run leaves
nothing behind and a resumed run is the run that was started.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError

from genzoo._version import __version__
from genzoo.contract import DataInfo, GenerativeModel, validation_message
from genzoo.data import Dataset, load_dataset, pair_datasets
from genzoo.data.specs import absolute_spec, recorded_options
from genzoo.errors import ConfigError, RunDirError
from genzoo.registry import build_model, make_config, model_class
from genzoo.runs import RunDir
from genzoo.training.distributed import World, launch, process_group, shared_value
from genzoo.training.logging import TRACKERS, MetricsLogger, Tracker
from genzoo.training.trainer import (
    FIXED_ON_RESUME,
    TrainConfig,
    Trainer,
    autocast_dtype,
    parse_budget,
    select_device,
)

__all__ = [
    "TRACKERS",
    "MetricsLogger",
    "Tracker",
    "TrainConfig",
    "Trainer",
    "parse_budget",
    "split_overrides",
    "train",
]


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
    path = spec.split("#", 1)[0]
    slug = re.sub(r"[^A-Za-z0-9]+", "-", Path(path).name if "/" in path else path).strip("-")[:40] or "data"
    return Path("runs") / f"{model}-{slug}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def trainer_config(settings: dict[str, Any]) -> TrainConfig:
    """Validated trainer settings, the device and precision included (checked before any file is written)."""
    try:
        cfg = TrainConfig(**settings)
    except ValidationError as err:
        raise ConfigError(f"bad trainer setting: {validation_message(err)}") from None
    autocast_dtype(cfg.precision, select_device(cfg.device))
    return cfg


def _data_record(spec: str, image_size: int | None) -> dict[str, Any]:
    return {"spec": absolute_spec(spec), "spec_text": spec, "image_size": image_size}


def run_config(model: GenerativeModel, data: DataInfo, cfg: TrainConfig, spec: str, image_size: int | None,
               spec_b: str | None = None) -> dict[str, Any]:
    """The human-readable ``config.json`` of a run: everything needed to rebuild the model without the data."""
    record = {**_data_record(spec, image_size), "info": data.to_json()}
    if spec_b is not None:
        record["data_b"] = _data_record(spec_b, image_size)
    return {
        "genzoo_version": __version__,
        "model": model.name,
        "family": model.family,
        "hparams": model.config.model_dump(mode="json"),
        "data": record,
        "train": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "torch_version": torch.__version__,
    }


def _resume_settings(run: RunDir, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Saved trainer settings with the ``given`` ones applied: a setting that changes what the run computes is
    refused when it differs; the others (steps, budget, how often to log ...) are applied and reported."""
    saved = run.resume_settings()
    if "steps" in given or "budget" in given:  # a new target replaces the old one whole
        saved.update(steps=None, budget=None)
    changed = {}
    for key, value in given.items():
        old = saved.get(key)
        if key == "budget":
            value = parse_budget(value)
        if value == old:
            continue
        if key in FIXED_ON_RESUME:
            raise RunDirError(f"{run.path}: --resume with {key}={value!r}, but the run was trained with "
                              f"{key}={old!r}; a resumed run keeps it (start a new run with --out to change it)")
        changed[key] = [old, value]
        saved[key] = value
    return saved, changed


def _check_resumed_run(run: RunDir, model: str, hparams: dict[str, Any], data: Any, image_size: int | None) -> None:
    config = run.config
    if model != config["model"]:
        raise RunDirError(f"{run.path}: --resume of a '{config['model']}' run as model '{model}'")
    differing = sorted(k for k, v in hparams.items() if config["hparams"].get(k) != v)
    if differing:
        raise RunDirError(f"{run.path}: --resume with different hparams than the saved run: "
                          + ", ".join(f"{k}={hparams[k]!r} (saved {config['hparams'].get(k)!r})" for k in differing))
    if isinstance(data, str) and absolute_spec(data) != config["data"]["spec"]:
        raise RunDirError(f"{run.path}: --resume with data '{data}' but the run was trained on "
                          f"'{config['data'].get('spec_text', config['data']['spec'])}'")
    saved_size = config["data"].get("image_size")
    if image_size is not None and image_size != saved_size:
        raise RunDirError(f"{run.path}: --resume with image size {image_size} but the run used {saved_size}")


def train(
    model: str | None,
    data: str | Dataset | None,
    *,
    steps: int | None = None,
    budget: str | float | None = None,
    out: str | Path | None = None,
    seed: int | None = None,
    overrides: dict[str, Any] | None = None,
    resume: bool = False,
    image_size: int | None = None,
    init: str | None = None,
    lora: bool = False,
    data_b: str | Dataset | None = None,
    on_validation: Callable[[int, dict[str, float]], bool] | None = None,
    nproc: int = 1,
    **trainer_options: Any,
) -> Path:
    """Train model ``model`` on ``data`` (a data spec or a Dataset) and return the run directory.

    ``overrides`` may mix model hyperparameters and trainer settings (``batch_size``, ``ema_decay`` ...), like the
    CLI's ``--set``; ``trainer_options`` are trainer settings. ``data_b`` is the second dataset of a two-domain
    model. With ``resume=True`` the run in ``out`` continues from its ``last/`` checkpoint with its saved model,
    data and settings (``model`` and ``data`` may be None): to ``steps`` total steps or for another ``budget``;
    other settings given again must agree with the saved ones, or be ones that may change (logging, checkpoint
    frequency, device), which are recorded in ``config.json``. ``init`` (a run directory or ``hf:NAME``) starts
    from trained weights and ``lora`` trains LoRA adapters only (see :mod:`genzoo.finetune`).

    Data-parallel training: under ``torchrun --nproc-per-node N`` every process calls this and they train together
    (``batch_size`` is the global batch; process 0 writes the run); ``nproc=N`` starts N such processes here.
    ``tracker="mlflow"`` also logs the run to MLflow (see :mod:`genzoo.training.logging`).
    """
    if nproc < 1:
        raise ConfigError(f"nproc must be at least 1, got {nproc}")
    if nproc > 1:
        if on_validation is not None:
            raise ConfigError("on_validation runs in this process; it cannot follow a run in nproc > 1 processes")
        if out is None:  # every process must name the same folder
            if resume or model is None or data is None:
                raise ConfigError("train needs a model and data, or resume=True with the run directory in out")
            out = default_run_dir(model, _spec_of(data))
        launch(nproc, train, model, data, steps=steps, budget=budget, out=out, seed=seed, overrides=overrides,
               resume=resume, image_size=image_size, init=init, lora=lora, data_b=data_b, **trainer_options)
        return Path(out)
    settings = {**(overrides or {}), **trainer_options}
    with process_group(select_device(str(settings.get("device", "auto")))) as world:
        if resume:
            return _resume(model, data, steps, budget, out, seed, overrides, image_size, data_b, trainer_options,
                           on_validation, world)
        return _start(model, data, steps, budget, out, seed, overrides, image_size, init, lora, data_b,
                      trainer_options, on_validation, world)


def _start(model: str | None, data: str | Dataset | None, steps: int | None, budget: str | float | None,
           out: str | Path | None, seed: int | None, overrides: dict[str, Any] | None, image_size: int | None,
           init: str | None, lora: bool, data_b: str | Dataset | None, trainer_options: dict[str, Any],
           on_validation: Callable[[int, dict[str, float]], bool] | None, world: World) -> Path:
    if model is None or data is None:
        raise ConfigError("train needs a model and data (or resume=True with the run directory in out)")
    from genzoo.finetune import plan_training

    hparams, from_overrides = split_overrides(model, dict(overrides or {}))
    plan = plan_training(model, data, hparams, init=init, lora=lora)
    model, hparams = plan.model, plan.hparams
    if seed is not None:
        trainer_options["seed"] = seed
    settings = {**model_class(model).train_defaults, **from_overrides, **trainer_options}
    settings.update({k: v for k, v in {"steps": steps, "budget": budget}.items() if v is not None})
    cfg = trainer_config(settings)
    make_config(model, hparams)  # fail on bad hyperparameters before touching the data
    if image_size is not None and image_size < 1:
        raise ConfigError(f"image size must be at least 1, got {image_size}")
    run = RunDir(out) if out is not None else None
    if world.is_main and run is not None and run.exists():
        raise RunDirError(f"{run.path} already holds a run; pass --resume to continue it or choose --out")
    if run is not None and run.path.exists() and not run.path.is_dir():
        raise RunDirError(f"--out {run.path} is a file, not a folder")
    dataset = _load(data, image_size, plan.data_options)
    dataset = _paired(model, dataset, data_b, image_size)
    torch.manual_seed(cfg.seed)
    net = build_model(model, dataset.info, hparams, tokenizer=dataset.tokenizer)
    plan.apply(net)
    run = run or RunDir(shared_value(default_run_dir(model, dataset.info.spec), world))
    config = run_config(net, dataset.info, cfg, dataset.info.spec, image_size,
                        None if data_b is None else _spec_of(data_b))
    if init or lora:
        config["finetune"] = {"init": init, "lora": lora, "notes": plan.notes}
    with run.lock() if world.is_main else nullcontext():  # process 0 writes for all
        if world.is_main and run.exists():  # created meanwhile by another process
            raise RunDirError(f"{run.path} already holds a run; pass --resume to continue it or choose --out")
        Trainer(net, dataset, run, cfg, config, on_validation=on_validation, world=world).fit()
    return run.path


def _resume(model: str | None, data: str | Dataset | None, steps: int | None, budget: str | float | None,
            out: str | Path | None, seed: int | None, overrides: dict[str, Any] | None, image_size: int | None,
            data_b: str | Dataset | None, trainer_options: dict[str, Any],
            on_validation: Callable[[int, dict[str, float]], bool] | None, world: World) -> Path:
    if out is None:
        raise ConfigError("--resume needs --out RUN_DIR (the run to continue)")
    run = RunDir(out)
    config = run.config
    model = model or config["model"]
    hparams, from_overrides = split_overrides(model, dict(overrides or {}))
    _check_resumed_run(run, model, hparams, data, image_size)
    given = {**from_overrides, **trainer_options}
    given.update({k: v for k, v in {"steps": steps, "budget": budget, "seed": seed}.items() if v is not None})
    settings, changed = _resume_settings(run, given)
    cfg = trainer_config(settings)
    image_size = config["data"].get("image_size")
    options = recorded_options(run.data_info())  # a fine-tuned run's text is read with the tokenizer it trained with
    dataset = data if isinstance(data, Dataset) else _load(config["data"]["spec"], image_size, options)
    spec_b = (config["data"].get("data_b") or {}).get("spec")
    dataset = _paired(model, dataset, data_b if data_b is not None else spec_b, image_size)
    with run.lock() if world.is_main else nullcontext():
        net = run.build_model(tokenizer=dataset.tokenizer)
        net.load_assets(run.path)
        if changed and world.is_main:
            history = [*config.get("resumes", []), {"step": run.trainer_state("last")["step"], "changed": changed,
                                                   "time": datetime.now(UTC).isoformat(timespec="seconds")}]
            run.write_config({**config, "train": cfg.model_dump(mode="json"), "resumes": history})
        Trainer(net, dataset, run, cfg, run.config, resume=True, on_validation=on_validation, world=world).fit()
    return run.path


def _spec_of(data: str | Dataset) -> str:
    return data if isinstance(data, str) else data.info.spec


def _load(data: str | Dataset, image_size: int | None, options: Any) -> Dataset:
    if isinstance(data, Dataset):
        return data
    return load_dataset(data, image_size=image_size, options=options)


def _paired(model: str, dataset: Dataset, data_b: str | Dataset | None, image_size: int | None) -> Dataset:
    """The dataset, paired with the second domain for models that train on two."""
    domains = model_class(model).domains
    if domains == 2 and data_b is None and dataset.info.domain_b is None:  # a pair spec (pair:NAME) has both
        raise ConfigError(f"model '{model}' trains on two datasets: give the second with --data-b")
    if domains == 1 and data_b is not None:
        raise ConfigError(f"model '{model}' trains on one dataset; --data-b is for two-domain models")
    if dataset.info.domain_b is not None and data_b is not None:
        raise ConfigError(f"data '{dataset.info.spec}' already holds two domains; --data-b is for single datasets")
    return dataset if data_b is None else pair_datasets(dataset, _load(data_b, image_size, None))
