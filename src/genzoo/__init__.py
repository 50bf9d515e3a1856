"""genzoo: every major family of generative model behind one API.

    >>> import genzoo
    >>> run = genzoo.train("vae", "digits", budget="60s")
    >>> model = genzoo.load(run)
    >>> images = model.sample(16, seed=0)
"""

from __future__ import annotations

from genzoo._version import __version__
from genzoo.api import create, list_models, load_pretrained
from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
    Stage,
)
from genzoo.data import Dataset, load_dataset
from genzoo.editing import edit
from genzoo.errors import ConfigError, DataError, GenzooError, NonFiniteError, RunDirError
from genzoo.eval import compare_sets, evaluate, score
from genzoo.export import export
from genzoo.registry import build_model, model_class, model_names, register
from genzoo.retrieval import Index, build_index, rag_generate
from genzoo.runs import RunDir, load, read_config
from genzoo.selection.advise import advise
from genzoo.selection.arena import arena
from genzoo.training import TrainConfig, train
from genzoo.tuning import tune

__all__ = [
    "Batch",
    "Capability",
    "ConfigError",
    "Cost",
    "DataError",
    "DataInfo",
    "DataKind",
    "Dataset",
    "GenerativeModel",
    "GenzooError",
    "Index",
    "LogLikelihood",
    "ModelConfig",
    "NonFiniteError",
    "Optimizers",
    "RunDir",
    "RunDirError",
    "SampleOptions",
    "Stage",
    "TrainConfig",
    "__version__",
    "advise",
    "arena",
    "build_index",
    "build_model",
    "compare_sets",
    "create",
    "edit",
    "evaluate",
    "export",
    "list_models",
    "load",
    "load_dataset",
    "load_pretrained",
    "model_class",
    "model_names",
    "rag_generate",
    "read_config",
    "register",
    "score",
    "train",
    "tune",
]
