"""Model registry: a model file registers its class with ``@register``; everything else finds it here.

All modules under ``genzoo.models`` are imported on first use, so adding a model is adding one file. Model files
must import optional dependencies (e.g. ``transformers``) lazily, inside functions, so discovery never fails.
"""

from __future__ import annotations

import importlib
import pkgutil
from typing import Any

from genzoo.contract import DataInfo, GenerativeModel
from genzoo.errors import ConfigError

_MODELS: dict[str, type[GenerativeModel]] = {}
_discovered = False


def register(cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Class decorator: make a model available to ``genzoo.create``, the CLI and the contract tests."""
    for attr in ("name", "family", "Config", "data_kinds"):
        if not hasattr(cls, attr):
            raise TypeError(f"{cls.__qualname__} must define class attribute '{attr}' to be registered")
    if cls.name in _MODELS and _MODELS[cls.name] is not cls:
        raise TypeError(f"two models are registered as '{cls.name}'")
    _MODELS[cls.name] = cls
    return cls


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    pkg = importlib.import_module("genzoo.models")  # found at run time: the registry sits below the models
    for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
        importlib.import_module(info.name)
    _discovered = True


def model_names() -> list[str]:
    _discover()
    return sorted(_MODELS)


def model_class(name: str) -> type[GenerativeModel]:
    """The class of ``name``; ``base:ARG`` (e.g. ``hf:gpt2``) names a model class with a ``name_argument``."""
    _discover()
    base, sep, _ = name.partition(":")
    cls = _MODELS.get(base)
    if cls is None or (sep and not cls.name_argument):
        raise ConfigError(f"unknown model '{name}'; available: {', '.join(sorted(_MODELS))}")
    return cls


def make_config(name: str, overrides: dict[str, Any] | None = None) -> Any:
    """Typed config for model ``name`` with ``overrides`` applied; a clear error for unknown keys or bad types."""
    cls = model_class(name)
    overrides = dict(overrides or {})
    _, sep, arg = name.partition(":")
    if sep:  # hf:gpt2 -> pretrained="gpt2"
        overrides.setdefault(cls.name_argument, arg)
    unknown = sorted(set(overrides) - set(cls.Config.model_fields))
    if unknown:
        known = ", ".join(cls.Config.model_fields)
        raise ConfigError(f"model '{name}' has no hyperparameter {', '.join(unknown)}; it has: {known}")
    try:
        return cls.Config(**overrides)
    except ValueError as err:  # pydantic.ValidationError is a ValueError
        raise ConfigError(f"bad hyperparameter for '{name}': {err}") from None


def build_model(name: str, data: DataInfo, overrides: dict[str, Any] | None = None,
                tokenizer: Any = None) -> GenerativeModel:
    """Instantiate model ``name`` for ``data`` with hyperparameter ``overrides``; ``tokenizer`` is the dataset's
    (token data), handed to the model explicitly."""
    cls = model_class(name)
    model = cls(make_config(name, overrides), data)
    if tokenizer is not None:
        model.use_tokenizer(tokenizer)
    return model
