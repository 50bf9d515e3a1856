"""Data specs: one string names a dataset on the CLI and in Python (``digits``, ``mnist:DIR``, ``toy:moons`` ...).

A loader module registers its prefix with :func:`register_loader`; :func:`load_dataset` dispatches on it. A spec
without a registered prefix is read as a path to an image folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from genzoo.data.base import Dataset
from genzoo.errors import DataError


@dataclass(frozen=True)
class DataOptions:
    """Options that apply to some loaders: ``image_size`` resizes images to a square of that side."""

    image_size: int | None = None


Loader = Callable[[str | None, DataOptions], Dataset]
_LOADERS: dict[str, tuple[Loader, str]] = {}


def register_loader(prefix: str, help_text: str) -> Callable[[Loader], Loader]:
    """Decorator: ``@register_loader("csv", "csv:FILE  numeric columns as vectors")``."""

    def deco(fn: Loader) -> Loader:
        _LOADERS[prefix] = (fn, help_text)
        return fn

    return deco


def _ensure_loaders() -> None:
    # importing the modules runs their @register_loader decorators
    from genzoo.data import (  # noqa: F401
        arrays,
        images,
        text,
        toy,
    )


def spec_help() -> list[str]:
    """One line per accepted spec form, for ``--help`` texts and error messages."""
    _ensure_loaders()
    return [text for _, text in _LOADERS.values()]


def load_dataset(spec: str, image_size: int | None = None) -> Dataset:
    """Load the dataset a spec names. Raises :class:`DataError` naming the spec/file and the problem."""
    _ensure_loaders()
    if not spec or not spec.strip():
        raise DataError("empty data spec; try one of: " + "; ".join(spec_help()))
    options = DataOptions(image_size=image_size)
    prefix, sep, arg = spec.partition(":")
    if prefix in _LOADERS:
        dataset = _LOADERS[prefix][0](arg if sep else None, options)
    elif Path(spec).expanduser().exists():
        dataset = _LOADERS["folder"][0](spec, options)
    else:
        raise DataError(f"data spec '{spec}' names nothing: no such file or folder, and not one of: "
                        + "; ".join(spec_help()))
    return _with_spec(dataset, spec, image_size)


def read_examples(source: str | Path, *, finite: bool = True) -> Tensor:
    """Every example (all splits) of a data spec, an image folder or an .npz/.npy file, e.g. a set of samples to
    score with :func:`genzoo.compare_sets`. Arrays are read whole (see
    :func:`genzoo.data.arrays.read_array_examples`, which ``finite=False`` lets keep NaN/Inf examples)."""
    path = Path(source)
    if path.suffix in (".npz", ".npy") and path.is_file():
        from genzoo.data.arrays import read_array_examples

        return read_array_examples(path, finite=finite)
    dataset = load_dataset(str(source))
    return torch.cat([b.x for split in ("train", "val", "test") for b in dataset.batches(split, 4096)])


def _with_spec(dataset: Dataset, spec: str, image_size: int | None) -> Dataset:
    from dataclasses import replace

    extra = dict(dataset.info.extra)
    if image_size:
        extra["image_size"] = image_size
    dataset.info = replace(dataset.info, spec=spec, extra=extra)
    return dataset
