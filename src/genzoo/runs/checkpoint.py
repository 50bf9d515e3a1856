"""Checkpoints: model weights, EMA, optimizer state and RNG state as safetensors + JSON. Nothing is pickled.

A checkpoint directory (``last/`` or ``best/`` in a run) holds

* ``model.safetensors`` -- the raw weights and buffers (tied weights stored once);
* ``ema.safetensors`` -- the same with EMA parameters, when the run keeps an EMA;
* ``optimizers.safetensors`` + ``trainer.json`` -- optimizer tensors, their JSON-able rest, the step, the RNG
  states and the best validation value, for ``--resume`` (only in ``last/``).

Directories are swapped in atomically (:func:`genzoo.io.replace_dir_atomically`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from genzoo.errors import RunDirError
from genzoo.io import load_tensors, read_json, save_tensors, write_json


def weight_tensors(model: nn.Module) -> dict[str, Tensor]:
    """The model's state dict with tensors that share storage (tied weights) kept once, under the first name."""
    out: dict[str, Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for key, value in model.state_dict().items():
        identity = (value.data_ptr(), tuple(value.shape))
        if value.numel() and identity in seen:
            continue
        seen.add(identity)
        out[key] = value
    return out


def load_weights(model: nn.Module, path: Path) -> None:
    """Load weights saved by :func:`weight_tensors`; a file that does not match the model is a clear error."""
    tensors = load_tensors(path)
    expected = weight_tensors(model)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise RunDirError(f"{path}: weights do not match the model (missing: {missing[:5]}, "
                          f"unexpected: {unexpected[:5]})")
    for key, value in tensors.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise RunDirError(f"{path}: tensor '{key}' has shape {tuple(value.shape)}, "
                              f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(tensors, strict=False)


def optimizer_to_files(optimizers: dict[str, torch.optim.Optimizer]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Split optimizer state dicts into flat tensors (safetensors) and JSON-able values."""
    tensors: dict[str, Tensor] = {}
    meta: dict[str, Any] = {}
    for name, opt in optimizers.items():
        state = opt.state_dict()
        plain: dict[str, dict[str, Any]] = {}
        for pid, entries in state["state"].items():
            plain[str(pid)] = {}
            for key, value in entries.items():
                if isinstance(value, Tensor):
                    tensors[f"{name}/{pid}/{key}"] = value
                else:
                    plain[str(pid)][key] = value
        meta[name] = {"param_groups": state["param_groups"], "plain": plain}
    return tensors, meta


def optimizer_from_files(optimizers: dict[str, torch.optim.Optimizer], tensors: dict[str, Tensor],
                         meta: dict[str, Any]) -> None:
    if set(optimizers) != set(meta):
        raise RunDirError(f"checkpoint has state for optimizers {sorted(meta)}, the model has {sorted(optimizers)}: "
                          "the run was saved with other settings (an older genzoo's defaults?); start a new run from "
                          "its weights with --init instead of --resume")
    for name, opt in optimizers.items():
        state: dict[int, dict[str, Any]] = {}
        for pid, plain in meta[name]["plain"].items():
            state[int(pid)] = dict(plain)
        for key, value in tensors.items():
            opt_name, pid, entry = key.split("/", 2)
            if opt_name == name:
                state.setdefault(int(pid), {})[entry] = value
        try:
            opt.load_state_dict({"state": state, "param_groups": meta[name]["param_groups"]})
        except ValueError as err:
            raise RunDirError(f"checkpoint's state for optimizer '{name}' does not fit the model: {err}") from None


def rng_tensors() -> dict[str, Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = state
    return out


def restore_rng(tensors: dict[str, Tensor]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda_")]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


def write_checkpoint(directory: Path, model: nn.Module, ema_model_tensors: dict[str, Tensor] | None,
                     optimizers: dict[str, torch.optim.Optimizer] | None, trainer_state: dict[str, Any]) -> None:
    """Fill ``directory`` (a fresh temporary folder) with one checkpoint."""
    save_tensors(directory / "model.safetensors", weight_tensors(model))
    if ema_model_tensors is not None:
        save_tensors(directory / "ema.safetensors", ema_model_tensors)
    if optimizers is not None:
        opt_tensors, opt_meta = optimizer_to_files(optimizers)
        rng = {f"rng/{k}": v for k, v in rng_tensors().items()}
        save_tensors(directory / "optimizers.safetensors", {**opt_tensors, **rng})
        trainer_state = {**trainer_state, "optimizers": opt_meta}
    write_json(directory / "trainer.json", trainer_state)


def read_trainer_state(directory: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The JSON trainer state and the optimizer/RNG tensors of a ``last/`` checkpoint."""
    state = read_json(directory / "trainer.json")
    tensors = load_tensors(directory / "optimizers.safetensors")
    return state, tensors
