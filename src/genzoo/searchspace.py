"""Typed hyperparameter search spaces, declared next to each model's Config (``GenerativeModel.search_space``).

A space maps Config field names to one of four distributions:

* ``LogUniform(low, high)``: log x uniform on [log low, log high] (learning rates, weights spanning decades);
* ``Uniform(low, high)``: x uniform on [low, high] (dropout);
* ``IntRange(low, high, log=False)``: an integer in low..high inclusive (layers, critic steps);
* ``Choice(a, b, ...)``: one of a few scalar values (widths, schedules, on/off switches).

:func:`check_space` validates a space against the Config: every name must be a field, and every end point (every
choice) must be a value the field accepts, so a typo or a range outside the field's bounds fails where it is
declared. ``suggest(trial, name)`` asks an Optuna trial for a value (duck-typed: this module does not import Optuna).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from genzoo.errors import ConfigError

__all__ = ["Choice", "IntRange", "LogUniform", "Param", "Uniform", "check_space", "default_space"]


class Param:
    """One hyperparameter's distribution."""

    def suggest(self, trial: Any, name: str) -> Any:
        """A value for ``name`` drawn by an Optuna trial."""
        raise NotImplementedError

    def extremes(self) -> tuple[Any, ...]:
        """The values that must be valid for the Config field: both end points, or every choice."""
        raise NotImplementedError

    def contains(self, value: Any) -> bool:
        raise NotImplementedError


def _ordered(low: float, high: float, what: str) -> None:
    if not low < high:
        raise ConfigError(f"{what} needs low < high, got low={low!r}, high={high!r}")


@dataclass(frozen=True)
class LogUniform(Param):
    """log x ~ U(log low, log high), for 0 < low < high."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _ordered(self.low, self.high, "LogUniform")
        if self.low <= 0:
            raise ConfigError(f"LogUniform needs low > 0, got {self.low!r}")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)

    def extremes(self) -> tuple[float, float]:
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.low <= value <= self.high


@dataclass(frozen=True)
class Uniform(Param):
    """x ~ U(low, high)."""

    low: float
    high: float

    def __post_init__(self) -> None:
        _ordered(self.low, self.high, "Uniform")

    def suggest(self, trial: Any, name: str) -> float:
        return trial.suggest_float(name, self.low, self.high)

    def extremes(self) -> tuple[float, float]:
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, float) and self.low <= value <= self.high


@dataclass(frozen=True)
class IntRange(Param):
    """An integer in low..high (both included); ``log`` samples small values as often as large ones."""

    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        _ordered(self.low, self.high, "IntRange")
        if self.log and self.low < 1:
            raise ConfigError(f"IntRange with log=True needs low >= 1, got {self.low!r}")

    def suggest(self, trial: Any, name: str) -> int:
        return trial.suggest_int(name, self.low, self.high, log=self.log)

    def extremes(self) -> tuple[int, int]:
        return (self.low, self.high)

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high


@dataclass(frozen=True, init=False)
class Choice(Param):
    """One of ``options``: scalars (str, int, float, bool or None), as Optuna stores them."""

    options: tuple[Any, ...]

    def __init__(self, *options: Any) -> None:
        if len(options) < 2:
            raise ConfigError(f"Choice needs at least two options, got {options!r}")
        if not all(o is None or isinstance(o, str | int | float | bool) for o in options):
            raise ConfigError(f"Choice options must be str, int, float, bool or None, got {options!r}")
        object.__setattr__(self, "options", tuple(options))

    def suggest(self, trial: Any, name: str) -> Any:
        return trial.suggest_categorical(name, self.options)

    def extremes(self) -> tuple[Any, ...]:
        return self.options

    def contains(self, value: Any) -> bool:
        return value in self.options


def check_space(space: dict[str, Param], config: type[BaseModel], owner: str) -> None:
    """Raise one clear ConfigError unless every name is a field of ``config`` and every extreme value is valid."""
    for name, param in space.items():
        if name not in config.model_fields:
            raise ConfigError(f"search space of '{owner}': '{name}' is not a hyperparameter "
                              f"(it has {', '.join(sorted(config.model_fields))})")
        if not isinstance(param, Param):
            raise ConfigError(f"search space of '{owner}': '{name}' must be LogUniform, Uniform, IntRange or "
                              f"Choice, got {param!r}")
        for value in param.extremes():
            try:
                config(**{name: value})
            except ValidationError as err:
                problem = "; ".join(e["msg"] for e in err.errors())
                raise ConfigError(f"search space of '{owner}': {name}={value!r} is not a valid value ({problem})"
                                  ) from None


def default_space(config: type[BaseModel]) -> dict[str, Param]:
    """The space of a model that declares none: its learning rate ``lr`` within a decade either side of the
    default (1e-5 .. 1e-2 when the default is not a number); empty without an ``lr`` field."""
    field = config.model_fields.get("lr")
    if field is None:
        return {}
    default = field.default
    if isinstance(default, int | float) and not isinstance(default, bool) and default > 0:
        return {"lr": LogUniform(default / 10, default * 10)}
    return {"lr": LogUniform(1e-5, 1e-2)}
