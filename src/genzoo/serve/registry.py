"""The models a server answers for: a name per run directory or pretrained source, loaded once (lazily or eagerly).

A name is what clients send as ``model``: the run directory's folder name by default, or ``NAME=SOURCE`` on the
command line. Names are checked against a strict pattern (letters, digits, ``._:-``), so a client can never make the
server open a path: only sources given at start-up are ever loaded. Each model has a lock: requests to one model run
one at a time (a model is not re-entrant while it holds a KV cache or a sampler's state), requests to different
models run in parallel. A *cascade* (:mod:`genzoo.serve.cascade`) is a virtual model under its own name, trying
served models in order.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from genzoo.contract import Capability, GenerativeModel
from genzoo.errors import ConfigError, GenzooError
from genzoo.runs import RunDir, load, pretrained_class, resolve_class
from genzoo.serve.cascade import Cascade, CascadeConfig

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")


class UnknownModelError(GenzooError):
    """A request named a model the server does not serve."""


@dataclass
class ServedModel:
    """One served model: its public name, where it comes from, and (once loaded) the model itself."""

    name: str
    source: str
    model: GenerativeModel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self) -> GenerativeModel:
        """The loaded model (loaded on first use; two first requests load it once)."""
        with self.lock:
            if self.model is None:
                self.model = load(self.source)
            return self.model

    @property
    def loaded(self) -> bool:
        return self.model is not None

    def describe(self) -> dict[str, object]:
        """The ``/v1/models`` entry: OpenAI's fields plus what genzoo knows about the model -- read from the run's
        config when it is not loaded yet, so listing never loads weights -- and its sampling options' JSON Schema."""
        entry: dict[str, object] = {"id": self.name, "object": "model", "created": 0, "owned_by": "genzoo",
                                    "loaded": self.loaded}
        if self.model is not None:
            cls, kind, caps = type(self.model), self.model.data.kind.value, self.model.capabilities
        else:
            cls = resolve_class(self.source)
            kind = RunDir(self.source).data_info().kind.value if pretrained_class(self.source) is None else "tokens"
            caps = cls.base_capabilities
        entry.update(family=cls.family, kind=kind, capabilities=sorted(c.value for c in caps),
                     options=cls.sample_options_schema())
        return entry


def source_name(source: str) -> tuple[str, str]:
    """(name, source) of a command-line source: ``NAME=SOURCE``, a run directory (its folder name) or ``hf:ID``."""
    name, sep, rest = source.partition("=")
    if sep and NAME_PATTERN.match(name) and (Path(rest).exists() or pretrained_class(rest) is not None):
        return name, rest
    if pretrained_class(source) is not None:
        return source, source
    return Path(source).resolve().name, source


def expand_sources(sources: list[str]) -> list[str]:
    """Command-line sources with each folder of run directories replaced by the runs in it (sorted by name)."""
    out: list[str] = []
    for source in sources:
        folder = Path(source)
        runs = sorted(p for p in folder.iterdir() if (p / "config.json").is_file()) if folder.is_dir() else []
        if runs and not (folder / "config.json").is_file():
            out.extend(str(p) for p in runs)
        else:
            out.append(source)
    return out


class ModelRegistry:
    """Served models by name."""

    def __init__(self) -> None:
        self.models: dict[str, ServedModel] = {}
        self.cascades: dict[str, Cascade] = {}

    @classmethod
    def from_sources(cls, sources: list[str], eager: bool = False) -> ModelRegistry:
        """A registry of command-line sources (run directories, ``hf:ID``, ``NAME=SOURCE``); ``eager`` loads all now."""
        registry = cls()
        for source in sources:
            registry.add(*source_name(source))
        if eager:
            for served in registry.models.values():
                served.get()
        return registry

    def add(self, name: str, source: str | GenerativeModel) -> ServedModel:
        """Serve ``source`` (a run directory, ``hf:ID`` or an already loaded model) as ``name``."""
        if not NAME_PATTERN.match(name):
            raise ConfigError(f"model name '{name}' is not allowed: use letters, digits and . _ : - (at most 128)")
        if name in self.models or name in self.cascades:
            raise ConfigError(f"two models are served as '{name}': name them apart with NAME=SOURCE")
        if isinstance(source, GenerativeModel):
            served = ServedModel(name, f"<{source.name} object>", source)
        else:
            if pretrained_class(source) is None and not Path(source).is_dir():
                raise ConfigError(f"'{source}' is neither a run directory nor a pretrained model (hf:ID)")
            served = ServedModel(name, str(source))
        self.models[name] = served
        return served

    def get(self, name: object, capability: Capability | None = None) -> tuple[ServedModel, GenerativeModel]:
        """The served entry and its loaded model for a request's ``model`` field, checked for ``capability``."""
        if not isinstance(name, str) or not NAME_PATTERN.match(name) or name not in self.models:
            shown = str(name)[:64]
            raise UnknownModelError(f"the model '{shown}' does not exist; served: {', '.join(sorted(self.models))}")
        served = self.models[name]
        model = served.get()
        if capability is not None:
            model.require(capability)
        return served, model

    def add_cascade(self, config: CascadeConfig) -> Cascade:
        """Serve ``config`` as a virtual model trying served models in order."""
        if not NAME_PATTERN.match(config.name):
            raise ConfigError(f"cascade name '{config.name}' is not allowed: use letters, digits and . _ : -")
        if config.name in self.models or config.name in self.cascades:
            raise ConfigError(f"the cascade '{config.name}' has the name of another served model")
        missing = [step.model for step in config.steps if step.model not in self.models]
        if missing:
            raise ConfigError(f"cascade '{config.name}' names models that are not served: {', '.join(missing)}")
        self.cascades[config.name] = Cascade(config)
        return self.cascades[config.name]

    def model(self, name: str) -> GenerativeModel:
        """A served model, loaded."""
        return self.get(name)[1]

    def describe_cascade(self, name: str) -> dict[str, object]:
        """The ``/v1/models`` entry of a cascade: its first model's, under the cascade's name, with its steps."""
        steps = self.cascades[name].config.steps
        entry = self.models[steps[0].model].describe()
        return {**entry, "id": name, "loaded": all(self.models[s.model].loaded for s in steps),
                "cascade": [{"model": s.model, "signal": s.signal} for s in steps]}
