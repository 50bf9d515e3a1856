"""Run directories: read ``config.json`` and rebuild a trained model from safetensors (never from a pickle)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from genzoo.contract import DataInfo, GenerativeModel
from genzoo.errors import RunDirError
from genzoo.io import read_json, resolve_dir
from genzoo.registry import build_model
from genzoo.training.checkpoint import load_weights


def read_config(run_dir: str | Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: no such run directory")
    config = read_json(run_dir / "config.json")
    for key in ("model", "hparams", "data"):
        if key not in config:
            raise RunDirError(f"{run_dir / 'config.json'}: missing '{key}'")
    return config


def checkpoint_dir(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best") -> Path:
    """The folder of the requested checkpoint; ``best`` falls back to ``last`` when no validation ran."""
    run_dir = Path(run_dir)
    order = ("best", "last") if checkpoint == "best" else ("last",)
    for name in order:
        found = resolve_dir(run_dir / name)
        if found is not None:
            return found
    raise RunDirError(f"{run_dir}: no {checkpoint} checkpoint (the run has no {' or '.join(order)}/ folder)")


def load(run_dir: str | Path, checkpoint: Literal["best", "last"] = "best", ema: bool = True) -> GenerativeModel:
    """A ready model (eval mode, CPU) from a run directory.

    Loads ``best/`` by default (``last/`` if no validation ran) and the EMA weights when the run kept them. The
    model's ``provenance`` attribute says which checkpoint, step and weights the numbers come from.
    ``hf:NAME_OR_PATH`` loads a pretrained Hugging Face causal LM instead (see :func:`genzoo.load_pretrained`).
    """
    if str(run_dir).startswith("hf:"):
        from genzoo.models.transformer.hf import load_pretrained

        return load_pretrained(str(run_dir)[3:])
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    info = DataInfo.from_json(config["data"]["info"])
    model = build_model(config["model"], info, config["hparams"])
    model.load_assets(run_dir)
    folder = checkpoint_dir(run_dir, checkpoint)
    use_ema = ema and (folder / "ema.safetensors").exists()
    load_weights(model, folder / ("ema.safetensors" if use_ema else "model.safetensors"))
    state = read_json(folder / "trainer.json")
    model.provenance = {"run": str(run_dir), "checkpoint": folder.name.strip(".").split(".")[0],
                        "step": state.get("step"), "weights": "ema" if use_ema else "raw"}
    return model.eval()
