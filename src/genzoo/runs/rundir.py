"""The run directory, the unit of persistence, and its one owner: :class:`RunDir`.

A run directory holds

* ``config.json`` -- human-readable: model name, hyperparameters, data spec (absolute, with the text the user
  typed) and :class:`~genzoo.contract.DataInfo`, trainer settings, seed, versions, and a log of resumes;
* ``last/`` and ``best/`` -- checkpoints (:mod:`genzoo.runs.checkpoint`), swapped in atomically;
* ``metrics.jsonl`` -- one JSON object per logged step; ``samples/`` -- previews; ``eval.json`` + ``eval/``;
* ``.lock`` -- held by the process writing the run, so two processes never write one run.

Everything that reads or writes these files goes through :class:`RunDir`; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, ValidationError

from genzoo.contract import DataInfo, GenerativeModel, validation_message
from genzoo.errors import ConfigError, RunDirError
from genzoo.io import atomic_write_text, read_json, replace_dir_atomically, resolve_dir, write_json
from genzoo.registry import build_model, model_class
from genzoo.runs.checkpoint import load_weights, read_trainer_state, write_checkpoint

Which = Literal["best", "last"]
CHECKPOINTS: tuple[str, ...] = ("best", "last")


class _DataRecord(BaseModel):
    model_config = ConfigDict(extra="allow")

    spec: str
    image_size: int | None = None
    info: dict[str, Any]


class _ConfigRecord(BaseModel):
    """The fields of ``config.json`` genzoo relies on, type-checked so a hand-edited file fails clearly."""

    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    hparams: dict[str, Any]
    data: _DataRecord
    train: dict[str, Any] = {}
    seed: int = 0


class _TrainerState(BaseModel):
    model_config = ConfigDict(extra="allow")

    step: int
    best: float | None = None


def check_which(which: str) -> Which:
    if which not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got '{which}'")
    return which  # type: ignore[return-value]


class RunDir:
    """One run directory: its paths, its config, its checkpoints, its metrics and its lock."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._config: dict[str, Any] | None = None

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # ----- paths ---------------------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def samples_dir(self) -> Path:
        return self.path / "samples"

    def exists(self) -> bool:
        """Whether a run lives here (its ``config.json`` exists)."""
        return self.config_path.is_file()

    # ----- config --------------------------------------------------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        """The parsed ``config.json``; a missing folder or file, bad JSON or wrong types are one clear error."""
        if self._config is None:
            if not self.path.is_dir():
                raise RunDirError(f"{self.path}: no such run directory")
            raw = read_json(self.config_path)
            try:
                _ConfigRecord.model_validate(raw)
            except ValidationError as err:
                raise RunDirError(f"{self.config_path}: {validation_message(err)}") from None
            self._config = raw
        return self._config

    def write_config(self, config: dict[str, Any]) -> None:
        write_json(self.config_path, config)
        self._config = config

    def model_class(self) -> type[GenerativeModel]:
        return model_class(self.config["model"])

    def data_info(self) -> DataInfo:
        try:
            return DataInfo.from_json(self.config["data"]["info"])
        except (KeyError, TypeError, ValueError) as err:
            raise RunDirError(f"{self.config_path}: data.info is malformed ({err})") from None

    def resume_settings(self) -> dict[str, Any]:
        """The trainer settings the run was (last) trained with, for ``--resume``."""
        return dict(self.config.get("train") or {})

    # ----- checkpoints ---------------------------------------------------------------------------------------------
    def checkpoint(self, which: str = "best") -> Path:
        """The folder of the requested checkpoint; ``best`` falls back to ``last`` when no validation ran."""
        order = ("best", "last") if check_which(which) == "best" else ("last",)
        for name in order:
            found = resolve_dir(self.path / name)
            if found is not None:
                return found
        if not self.path.is_dir():
            raise RunDirError(f"{self.path}: no such run directory")
        raise RunDirError(f"{self.path}: no {which} checkpoint (the run has no {' or '.join(order)}/ folder)")

    def has_checkpoint(self, which: str) -> bool:
        return resolve_dir(self.path / which) is not None

    def trainer_state(self, which: str = "last") -> dict[str, Any]:
        """``trainer.json`` of a checkpoint (step, best value, optimizer metadata ...), type-checked."""
        path = self.checkpoint(which) / "trainer.json"
        state = read_json(path)
        try:
            _TrainerState.model_validate(state)
        except ValidationError as err:
            raise RunDirError(f"{path}: {validation_message(err)}") from None
        return state

    def resume_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
        """State, optimizer/RNG tensors and folder of ``last/``, for ``--resume``."""
        if not self.has_checkpoint("last"):
            raise RunDirError(f"{self.path}: nothing to resume (no last/ checkpoint)")
        folder = self.checkpoint("last")
        self.trainer_state("last")
        state, tensors = read_trainer_state(folder)
        return state, tensors, folder

    def save_checkpoint(self, name: str, model: torch.nn.Module, ema: dict[str, torch.Tensor] | None,
                        optimizers: dict[str, torch.optim.Optimizer] | None, state: dict[str, Any]) -> None:
        """Write checkpoint ``name`` atomically (the previous one stays complete until the new one is)."""
        replace_dir_atomically(self.path / name, lambda d: write_checkpoint(d, model, ema, optimizers, state))

    def build_model(self, tokenizer: Any = None) -> GenerativeModel:
        """A freshly initialised model with this run's hyperparameters and data (no weights loaded)."""
        try:
            return build_model(self.config["model"], self.data_info(), self.config["hparams"], tokenizer=tokenizer)
        except ConfigError as err:
            raise RunDirError(f"{self.config_path}: {err}") from None

    def load_model(self, which: str = "best", ema: bool = True) -> GenerativeModel:
        """A ready model (eval mode, CPU) with the weights of checkpoint ``which`` (EMA weights when kept)."""
        model = self.build_model()
        model.load_assets(self.path)
        folder = self.checkpoint(which)
        use_ema = ema and (folder / "ema.safetensors").exists()
        load_weights(model, folder / ("ema.safetensors" if use_ema else "model.safetensors"))
        name = folder.name.strip(".").split(".")[0]  # ".last.old" (an interrupted swap) is still "last"
        return model.with_provenance(run=str(self.path), checkpoint=name, step=self.trainer_state(name)["step"],
                                     weights="ema" if use_ema else "raw").eval()

    # ----- metrics -------------------------------------------------------------------------------------------------
    def metrics(self) -> list[dict[str, Any]]:
        """All records of ``metrics.jsonl`` (a torn last line from a crash is skipped)."""
        return _records(self._metrics_text())

    def _metrics_text(self) -> str:
        return self.metrics_path.read_text(encoding="utf-8") if self.metrics_path.exists() else ""

    def truncate_metrics(self, step: int) -> None:
        """Drop records after ``step`` (logged by a process that died before its next checkpoint) and a torn last
        line, so a resumed run's ``metrics.jsonl`` has no duplicate rows for the replayed steps."""
        text = self._metrics_text()
        records = _records(text)
        kept = [r for r in records if isinstance(r.get("step"), int) and r["step"] <= step]
        if len(kept) != len(records) or (text and not text.endswith("\n")):
            atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    # ----- the lock ------------------------------------------------------------------------------------------------
    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run's write lock for the block; another process holding it is a clear error."""
        self.path.mkdir(parents=True, exist_ok=True)
        path = self.path / ".lock"
        handle = open(path, "a+")  # noqa: SIM115 -- held open for the whole block
        try:
            _try_lock(handle, path)
            handle.seek(0)
            handle.truncate()
            handle.write(str(os.getpid()))
            handle.flush()
            yield
        finally:
            handle.close()  # closing releases the lock


def _records(text: str) -> list[dict[str, Any]]:
    records = []
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _try_lock(handle: Any, path: Path) -> None:
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks here; runs are not shared there
        return
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        pid = handle.read().strip() or "?"
        raise RunDirError(f"{path.parent} is being written by another genzoo process (pid {pid}); wait for it to "
                          "finish or stop it") from None


def resolve_class(source: str | Path) -> type[GenerativeModel]:
    """The model class behind a run directory or a ``NAME:ARG`` pretrained source (e.g. ``hf:gpt2``), without
    loading any weights."""
    pretrained = pretrained_class(source)
    return pretrained if pretrained is not None else RunDir(source).model_class()


def pretrained_class(source: str | Path) -> type[GenerativeModel] | None:
    """The model class of a pretrained source ``NAME:ARG`` (``hf:gpt2``), or None when ``source`` is not one."""
    text = str(source)
    base, sep, arg = text.partition(":")
    if not sep or not arg or Path(text).exists():
        return None
    try:
        cls = model_class(base)
    except ConfigError:
        return None
    return cls if cls.name_argument else None


def load(source: str | Path, checkpoint: str = "best", ema: bool = True) -> GenerativeModel:
    """A ready model (eval mode) from a run directory or a pretrained source.

    Loads ``best/`` by default (``last/`` if no validation ran) and the EMA weights when the run kept them. The
    model's ``provenance`` says which checkpoint, step and weights the numbers come from. ``NAME:ARG`` names a
    pretrained model of a model class that takes an argument: ``hf:NAME_OR_PATH`` is a Hugging Face causal LM.
    """
    check_which(checkpoint)
    pretrained = pretrained_class(source)
    if pretrained is not None:
        return pretrained.from_pretrained(str(source).partition(":")[2])
    return RunDir(source).load_model(checkpoint, ema)
