"""Data specs: one string names a dataset on the CLI and in Python (``digits``, ``mnist:DIR``, ``toy:moons`` ...).

A loader module registers its prefix with :func:`register_loader`; :func:`load_dataset` dispatches on it. A spec
without a registered prefix is read as a path to an image folder.

Options follow a ``#``, comma-separated ``key=value`` pairs: ``text:input.txt#context=128,tokenizer=bpe``. They are
parsed once, in :func:`load_dataset`, into the typed :class:`DataOptions` every loader receives; a loader says which
of them its users may write after ``#`` (``register_loader(..., options=...)``), so ``digits#context=5`` is a
clear error instead of an ignored option. Code can pass :class:`DataOptions` too (fine-tuning reads new text with
the starting model's tokenizer and context): those are defaults, and what the user wrote after ``#`` wins.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import Tensor

from genzoo.contract import DataInfo
from genzoo.data.base import Dataset, TensorDataset
from genzoo.errors import DataError
from genzoo.tokenizer import BPE_MIN_VOCAB, is_named_tokenizer

#: the options of text data (``text:`` and ``jsonl:``), as written after ``#``
TEXT_OPTIONS = ("context", "tokenizer", "vocab_size", "field")
#: the options of image data, as written after ``#`` (a bare word sets a yes/no option: ``digits#binarize``)
IMAGE_OPTIONS = ("binarize",)
#: options every loader accepts after ``#`` (``digits#dedup``, ``text:a.txt#dedup=true``)
ANY_OPTIONS = ("dedup",)
_INTEGERS = ("image_size", "context", "vocab_size", "n")
#: what ``Batch.cond`` holds for captioned images (``scenes:``, ``captions:``)
CAPTION_FORMS = ("embedding", "tokens", "none")


class DataOptions(BaseModel):
    """Options that apply to some loaders, typed and checked (every problem is a :class:`DataError` naming it).

    ``image_size`` resizes images to a square of that side (``--image-size``); ``binarize`` (``digits#binarize``)
    thresholds images at 1/2; ``dedup`` (``digits#dedup``, any data) removes duplicate examples before training
    (:mod:`genzoo.data.hygiene`). The others are text options, written after ``#`` in a ``text:``/``jsonl:`` spec:
    ``context``, ``tokenizer``, ``vocab_size`` and ``field``. ``input`` and ``target`` name the JSON fields of a
    ``pairs:FILE.jsonl`` spec (source and target text). ``n`` is how many ``scenes:`` to draw; ``caption`` what a
    captioned dataset (``scenes:``, ``captions:``) puts in ``Batch.cond`` (see :mod:`genzoo.data.captions`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    image_size: int | None = Field(None, description="resize images to a square of this side (--image-size)")
    binarize: bool = Field(False, description="images: threshold at 1/2, giving binary data (2 levels)")
    dedup: bool = Field(False, description="any data: drop exact and near-duplicate examples (those `genzoo data "
                        "check` counts) before training; each kept example stays in its split")
    context: int = Field(64, description="text: tokens in one example, the model's context (at least 2)")
    tokenizer: str = Field("char", description="text: char, bpe, byte, hf:NAME, or a tokenizer.json / run to reuse")
    vocab_size: int = Field(512, description=f"text: tokens of tokenizer=bpe (at least {BPE_MIN_VOCAB}, the bytes)")
    field: str = Field("text", description="jsonl: the JSON field holding the text")
    input: str = Field("input", description="pairs: the JSON field holding the source text")
    target: str = Field("target", description="pairs: the JSON field holding the target text")
    n: int | None = Field(None, description="scenes: how many scenes to draw (default 5000), cut 80/10/10")
    caption: str = Field("embedding", description="captioned images: Batch.cond is the caption's 'embedding' "
                         "(sentence encoder, [n, 384] float), its word 'tokens' ([n, L] ids, padded) or 'none'")

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, values: Any) -> Any:
        if isinstance(values, dict):
            unknown = sorted(set(values) - set(cls.model_fields))
            if unknown:
                raise DataError(f"unknown data option '{unknown[0]}' (known: {', '.join(cls.model_fields)})")
        return values

    @field_validator(*_INTEGERS, mode="before")
    @classmethod
    def _integer(cls, value: Any, info: Any) -> Any:
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        try:
            return int(str(value).strip())
        except ValueError:
            raise DataError(f"{_option_name(info.field_name)} must be an integer, got '{value}'") from None

    @field_validator("binarize", "dedup", mode="before")
    @classmethod
    def _yes_no(cls, value: Any, info: Any) -> Any:
        text = str(value).strip().lower()
        if isinstance(value, bool) or text in ("true", "1", "yes", "false", "0", "no"):
            return value if isinstance(value, bool) else text in ("true", "1", "yes")
        raise DataError(f"{_option_name(info.field_name)} must be true or false, got '{value}'")

    @field_validator("caption", mode="before")
    @classmethod
    def _caption_form(cls, value: Any) -> Any:
        if value not in CAPTION_FORMS:
            raise DataError(f"data option caption must be one of {', '.join(CAPTION_FORMS)}, got '{value}'")
        return value

    @model_validator(mode="after")
    def _ranges(self) -> DataOptions:
        if self.image_size is not None and self.image_size < 1:
            raise DataError(f"image size must be at least 1, got {self.image_size}")
        if self.context < 2:
            raise DataError(f"{_option_name('context')} must be at least 2, got {self.context}")
        if self.tokenizer == "bpe" and self.vocab_size < BPE_MIN_VOCAB:
            raise DataError(f"{_option_name('vocab_size')} must be at least {BPE_MIN_VOCAB} for tokenizer=bpe, got "
                            f"{self.vocab_size} (byte-level BPE starts from one token per byte)")
        if self.n is not None and self.n < 3:
            raise DataError(f"data option n must be at least 3 (train/validation/test), got {self.n}")
        if not self.tokenizer:
            raise DataError(f"{_option_name('tokenizer')} is empty (use char, bpe, byte, hf:NAME or a path)")
        return self

    def merged(self, **values: Any) -> DataOptions:
        """These options with ``values`` applied (validated again)."""
        return DataOptions(**{**self.model_dump(exclude_unset=True), **values})


def _option_name(key: str) -> str:
    return f"text spec option {key}" if key in TEXT_OPTIONS else f"data option {key}"


Loader = Callable[[str | None, DataOptions], Dataset]


@dataclass(frozen=True)
class _Registered:
    load: Loader
    help: str
    #: options a user may write after ``#`` for this loader
    options: tuple[str, ...] = ()
    #: the option a bare word after ``#`` sets (jsonl: ``#body`` is ``field=body``)
    bare: str | None = None
    #: whether the argument after ``prefix:`` is a file or folder (``toy:NAME`` is not)
    path_arg: bool = True


_LOADERS: dict[str, _Registered] = {}
_loaders_imported = False


def register_loader(prefix: str, help_text: str, *, options: tuple[str, ...] = (), bare: str | None = None,
                    path_arg: bool = True) -> Callable[[Loader], Loader]:
    """Decorator: ``@register_loader("csv", "csv:FILE  numeric columns as vectors")``.

    The loader is called as ``load(arg, options)``: ``arg`` is what follows ``prefix:`` without the ``#`` part
    (None when there is no colon), ``options`` the typed :class:`DataOptions`. ``options`` here names the
    :class:`DataOptions` fields users may set after ``#`` (none by default), ``bare`` the one a bare word sets, and
    ``path_arg=False`` says the argument is a name, not a path (so :func:`absolute_spec` leaves it alone)."""

    def deco(fn: Loader) -> Loader:
        _LOADERS[prefix] = _Registered(fn, help_text, tuple(options), bare, path_arg)
        return fn

    return deco


def _ensure_loaders() -> None:
    """Import every module of :mod:`genzoo.data` once: their ``@register_loader`` decorators run, so a new kind of
    data is one new file."""
    global _loaders_imported
    if _loaders_imported:
        return
    package = importlib.import_module("genzoo.data")  # found at run time: this module is part of that package
    for info in pkgutil.iter_modules(package.__path__, prefix="genzoo.data."):
        importlib.import_module(info.name)
    _loaders_imported = True


def spec_help() -> list[str]:
    """One line per accepted spec form, for ``--help`` texts and error messages."""
    _ensure_loaders()
    return [entry.help for entry in _LOADERS.values()]


# ----- parsing ------------------------------------------------------------------------------------------------------
def _exists(path: str) -> bool:
    return bool(path) and Path(path).expanduser().exists()


def split_fragment(spec: str) -> tuple[str, str | None]:
    """``SPEC#options`` -> (``SPEC``, ``options``), or (spec, None) without a ``#``. A ``#`` that belongs to the name of
    an existing file or folder (``folder:my#1``) is part of the path, not the start of options."""
    if "#" not in spec:
        return spec, None
    _, sep, arg = spec.partition(":")
    if _exists(spec) or (sep and _exists(arg)):
        return spec, None
    body, _, fragment = spec.rpartition("#")
    return body, fragment


def _locate(body: str) -> tuple[str | None, str | None]:
    """(loader prefix, argument) of a spec without its options; prefix None when it names nothing."""
    prefix, sep, arg = body.partition(":")
    if prefix in _LOADERS:
        return prefix, arg if sep else None
    if _exists(body):
        return "folder", body
    return None, None


def parse_fragment(fragment: str, prefix: str, spec: str) -> dict[str, str]:
    """The ``key=value`` pairs after ``#``, checked against the options loader ``prefix`` accepts (values stay text:
    :class:`DataOptions` converts and checks them)."""
    entry = _LOADERS[prefix]
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in fragment.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        accepted = (*entry.options, *ANY_OPTIONS)
        if not entry.options and key not in ANY_OPTIONS:
            raise DataError(f"data spec '{spec}': {prefix} data takes no #options (got '{key}'); options after # "
                            "are for text data (text:FILE#context=64,tokenizer=bpe) and images (digits#binarize)")
        known = ", ".join(accepted)
        what = "text spec option" if set(entry.options) & set(TEXT_OPTIONS) else "data spec option"
        if not sep:
            if key in accepted and DataOptions.model_fields[key].annotation is bool:
                value = "true"
            elif entry.bare is None:
                raise DataError(f"{what} '{item}' is not key=value (known keys: {known})")
            else:
                key, value = entry.bare, item
        if key not in accepted:
            raise DataError(f"unknown {what} '{key}' (known: {known})")
        values[key] = value.strip()
    return values


def load_dataset(spec: str, image_size: int | None = None, options: DataOptions | None = None) -> Dataset:
    """Load the dataset a spec names. Raises :class:`DataError` naming the spec/file and the problem.

    ``options`` (and ``image_size``) given by code are defaults: the options the spec itself sets after ``#`` win.
    ``dataset.info.spec`` is ``spec`` exactly as given."""
    _ensure_loaders()
    if not spec or not spec.strip():
        raise DataError("empty data spec; try one of: " + "; ".join(spec_help()))
    body, fragment = split_fragment(spec)
    prefix, arg = _locate(body)
    if prefix is None:
        raise DataError(f"data spec '{spec}' names nothing: no such file or folder, and not one of: "
                        + "; ".join(spec_help()))
    written = parse_fragment(fragment, prefix, spec) if fragment else {}
    base = options or DataOptions()
    if image_size is not None:
        base = base.merged(image_size=image_size)
    typed = base.merged(**written)
    dataset = _LOADERS[prefix].load(arg, typed)
    if typed.binarize:
        dataset = _binarized(dataset, spec)
    if typed.dedup:
        from genzoo.data.hygiene import deduplicated  # imported here: it imports loader modules that import this one

        dataset = deduplicated(dataset)
    return _with_spec(dataset, spec, typed.image_size)


def _binarized(dataset: Dataset, spec: str) -> Dataset:
    if not isinstance(dataset, TensorDataset):
        raise DataError(f"data spec '{spec}': this data cannot be binarized")
    return dataset.binarized()


def recorded_options(info: DataInfo) -> DataOptions | None:
    """The options a dataset was read with, as its ``DataInfo`` records them (text data: context, tokenizer, vocab
    size, field; None for other data). ``load_dataset(info.spec, options=recorded_options(info))`` reads the same
    tokens again, e.g. when a fine-tuned run (whose spec does not name the tokenizer it inherited) resumes."""
    recorded = info.extra.get("options")
    return DataOptions(**recorded) if isinstance(recorded, dict) else None


def absolute_spec(spec: str) -> str:
    """``spec`` with every relative path in it made absolute, so that it names the same data from any directory
    (what a run's ``config.json`` stores for ``--resume`` and ``eval``).

    Paths are the argument after ``prefix:`` (``text:input.txt``, ``mnist:data/mnist``), a bare folder and a
    ``tokenizer=PATH`` option naming an existing file or folder; names are left alone (``digits``, ``toy:moons``,
    ``mnist``, ``tokenizer=char|bpe|byte|hf:NAME``), as is a path that does not exist (it would not load anyway).
    """
    _ensure_loaders()
    body, fragment = split_fragment(spec)
    prefix, sep, arg = body.partition(":")
    if prefix in _LOADERS:
        if sep and _LOADERS[prefix].path_arg and _exists(arg):
            body = f"{prefix}:{_absolute(arg)}"
    elif _exists(body):
        body = _absolute(body)
    if fragment is None:
        return body
    items = fragment.split(",")
    for i, item in enumerate(items):
        key, sep, value = item.partition("=")
        if sep and key.strip() == "tokenizer" and not is_named_tokenizer(value.strip()) and _exists(value.strip()):
            items[i] = f"{key}={_absolute(value.strip())}"
    return f"{body}#{','.join(items)}"


def _absolute(path: str) -> str:
    """Absolute and normalised (``..`` removed), without resolving symbolic links."""
    return os.path.abspath(os.path.expanduser(path))


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
    extra = dict(dataset.info.extra)
    if image_size:
        extra["image_size"] = image_size
    dataset.info = replace(dataset.info, spec=spec, extra=extra)
    return dataset
