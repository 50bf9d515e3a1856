"""genzoo: every major family of generative model behind one API.

    >>> import genzoo
    >>> run = genzoo.train("vae", "digits", budget="60s")
    >>> model = genzoo.load(run)
    >>> images = model.sample(16, seed=0)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import Any

from genzoo.contract import (
    Batch,
    Capability,
    DataInfo,
    DataKind,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
)
from genzoo.data import Dataset, load_dataset
from genzoo.editing import edit
from genzoo.errors import ConfigError, DataError, GenzooError, NonFiniteError, RunDirError
from genzoo.eval import compare_sets, evaluate
from genzoo.registry import build_model, model_class, model_names, register
from genzoo.runs import load, read_config
from genzoo.training import TrainConfig, train


def create(name: str, data: str | Dataset | DataInfo, **hparams: Any) -> GenerativeModel:
    """A fresh model ``name`` for ``data`` (a data spec, a Dataset or a DataInfo) with hyperparameters."""
    info = data if isinstance(data, DataInfo) else (data if isinstance(data, Dataset) else load_dataset(data)).info
    return build_model(name, info, hparams)


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its family, accepted data kinds and capabilities."""
    out = []
    for name in model_names():
        cls = model_class(name)
        out.append({"name": name, "family": cls.family, "data": sorted(k.value for k in cls.data_kinds),
                    "capabilities": sorted(c.value for c in cls.base_capabilities),
                    "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""})
    return out


def load_pretrained(name: str, **options: Any) -> GenerativeModel:
    """A pretrained Hugging Face causal LM (hub id or local folder) behind the genzoo API (the 'llm' extra)."""
    from genzoo.models.transformer.hf import load_pretrained as load_hf

    return load_hf(name, **options)


__all__ = [
    "Batch", "Capability", "ConfigError", "DataError", "DataInfo", "DataKind", "Dataset", "GenerativeModel",
    "GenzooError", "LogLikelihood", "ModelConfig", "NonFiniteError", "Optimizers", "RunDirError", "TrainConfig",
    "__version__", "build_model", "compare_sets", "create", "edit", "evaluate", "list_models", "load", "load_dataset",
    "load_pretrained",
    "model_class", "model_names", "read_config", "register", "train",
]
