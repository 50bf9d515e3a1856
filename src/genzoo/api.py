"""The functions of the Python API that are not a module's own: build a model, list the models, load a
pretrained one. ``genzoo/__init__.py`` re-exports them with the rest of the API."""

from __future__ import annotations

from typing import Any

from genzoo.contract import DataInfo, GenerativeModel
from genzoo.data import Dataset, load_dataset
from genzoo.registry import build_model, model_class, model_names


def create(name: str, data: str | Dataset | DataInfo, **hparams: Any) -> GenerativeModel:
    """A fresh model ``name`` for ``data`` (a data spec, a Dataset or a DataInfo) with hyperparameters."""
    if isinstance(data, DataInfo):
        return build_model(name, data, hparams)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    return build_model(name, dataset.info, hparams, tokenizer=dataset.tokenizer)


def list_models() -> list[dict[str, Any]]:
    """Every registered model with its family, accepted data kinds, capabilities and sampling options."""
    out = []
    for name in model_names():
        cls = model_class(name)
        out.append({"name": name, "family": cls.family, "data": sorted(k.value for k in cls.data_kinds),
                    "capabilities": sorted(c.value for c in cls.base_capabilities),
                    "sample_options": sorted(cls.SampleOptions.model_fields),
                    "doc": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""})
    return out


def load_pretrained(name: str, **options: Any) -> GenerativeModel:
    """A pretrained Hugging Face causal LM (hub id or local folder) behind the genzoo API (the 'llm' extra)."""
    return model_class("hf").from_pretrained(name, **options)
