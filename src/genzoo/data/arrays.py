"""Array files: ``npz:FILE`` / ``npy:FILE`` (images or vectors) and ``csv:FILE`` (numeric columns = vectors).

The array's shape decides the kind: (N, D) or (N,) is VECTOR data; (N, H, W), (N, C, H, W) or (N, H, W, C) with
C in {1, 3} is IMAGE data, whose dtype decides the levels: integers in {0, 1} -> binary (2 levels), other
integers in 0..255 (e.g. uint8) -> divided by 255 (256 levels), floats in [0, 1] -> continuous (levels None).
Files are read with ``allow_pickle=False``: genzoo never unpickles a data file.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from genzoo.contract import DataInfo, DataKind
from genzoo.data.base import ReferenceDensity, TensorDataset, check_finite, split_tensors
from genzoo.data.images import resize_images
from genzoo.data.specs import IMAGE_OPTIONS, DataOptions, register_loader
from genzoo.errors import DataError

#: most classes a label array may have (class ids 0..MAX_CLASSES-1); more is almost surely not a class label
MAX_CLASSES = 1000


def existing_file(arg: str | None, prefix: str) -> Path:
    """The file a ``prefix:FILE`` spec names, or a DataError."""
    if not arg:
        raise DataError(f"'{prefix}:' needs a file path after the colon, e.g. '{prefix}:data.{prefix}'")
    path = Path(arg).expanduser()
    if not path.exists():
        raise DataError(f"{prefix}:{arg}: no such file")
    if not path.is_file():
        raise DataError(f"{prefix}:{arg}: is a folder, not a file")
    return path


def vector_dataset(x: Tensor, y: Tensor | None, source: str,
                   reference: ReferenceDensity | None = None) -> TensorDataset:
    """(N, D) float vectors -> dataset with per-feature mean/std of the train split (a constant feature gets
    std 1, so standardising never divides by zero)."""
    check_finite(x, source)
    train, val, test = split_tensors(x, y)
    mean = train.x.mean(0)
    std = train.x.std(0, correction=0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    num_classes = None if y is None else int(y.max()) + 1
    info = DataInfo(kind=DataKind.VECTOR, shape=(x.shape[1],), levels=None, num_classes=num_classes,
                    class_names=None if y is None else tuple(str(i) for i in range(num_classes)),
                    mean=tuple(mean.tolist()), std=tuple(std.tolist()))
    return TensorDataset(info, train, val, test, reference=reference)


def _labels(y: np.ndarray, n: int, source: str) -> Tensor:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{source}: labels 'y' must have shape ({n},) to match the data, got {y.shape}")
    if y.dtype.kind not in "biuf" or (y.dtype.kind == "f" and not np.array_equal(y, np.round(y))):
        raise DataError(f"{source}: labels 'y' must be integer class ids, got dtype {y.dtype}")
    if n and y.min() < 0:
        raise DataError(f"{source}: labels 'y' must be >= 0, found {y.min()}")
    if n and y.max() >= MAX_CLASSES:
        raise DataError(f"{source}: labels 'y' go up to {y.max():g}; class ids must be 0..K-1 with at most "
                        f"{MAX_CLASSES} classes")
    missing = sorted(set(range(int(y.max()) + 1)) - {int(v) for v in np.unique(y)}) if n else []
    if missing:
        raise DataError(f"{source}: labels 'y' skip class id(s) {', '.join(map(str, missing[:5]))}: class ids must "
                        f"be 0..K-1 with every class present (renumber them)")
    return torch.from_numpy(y.astype(np.int64))


def image_tensor(x: np.ndarray, source: str) -> tuple[Tensor, int | None]:
    """(N, H, W) / (N, C, H, W) / (N, H, W, C) -> float (N, C, H, W) in [0, 1] and its number of levels."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.shape[1] not in (1, 3):
        if x.shape[3] not in (1, 3):
            raise DataError(f"{source}: 4-D array of shape {x.shape} needs 1 or 3 channels in axis 1 (N, C, H, W) "
                            f"or axis 3 (N, H, W, C)")
        x = x.transpose(0, 3, 1, 2)
    if x.dtype.kind == "f":
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        check_finite(images, source)
        lo, hi = float(images.min()), float(images.max())
        if lo < 0 or hi > 1:
            raise DataError(f"{source}: float images must lie in [0, 1], found values in [{lo:g}, {hi:g}] "
                            f"(save 8-bit images as uint8, or divide them by 255)")
        return images, None
    lo, hi = int(x.min()), int(x.max())
    if lo < 0 or hi > 255:
        raise DataError(f"{source}: integer images must lie in 0..255, found values in [{lo}, {hi}]")
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if hi <= 1:
        return images, 2
    return images / 255.0, 256


def array_dataset(x: np.ndarray, y: np.ndarray | None, source: str, options: DataOptions) -> TensorDataset:
    """Decide kind and levels from the array's shape and dtype (see the module docstring)."""
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: data must be numeric, got dtype {x.dtype}")
    if len(x) == 0 or x.size == 0:
        raise DataError(f"{source}: the array is empty (shape {x.shape})")
    labels = None if y is None else _labels(y, len(x), source)
    if x.ndim in (1, 2):
        return vector_dataset(torch.from_numpy(np.asarray(x, dtype=np.float32).reshape(len(x), -1)), labels, source)
    if x.ndim not in (3, 4):
        raise DataError(f"{source}: expected (N, D) vectors or (N, H, W) / (N, C, H, W) / (N, H, W, C) images, "
                        f"got shape {x.shape}")
    images, levels = image_tensor(x, source)
    if options.image_size:
        images, levels = resize_images(images, options.image_size, levels)
    train, val, test = split_tensors(images, labels)
    num_classes = None if labels is None else int(labels.max()) + 1
    info = DataInfo(kind=DataKind.IMAGE, shape=tuple(images.shape[1:]), levels=levels, num_classes=num_classes,
                    class_names=None if labels is None else tuple(str(i) for i in range(num_classes)))
    return TensorDataset(info, train, val, test)


def read_numpy(path: Path, prefix: str) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Data and optional labels from an .npy or .npz file (whichever it really is), never unpickling."""
    try:
        with open(path, "rb") as handle:
            loaded = np.load(handle, allow_pickle=False)
            if isinstance(loaded, np.ndarray):
                return loaded, None, str(path)
            with loaded:
                if not loaded.files:
                    raise DataError(f"{path}: the archive holds no arrays")
                key = "x" if "x" in loaded.files else loaded.files[0]
                y = loaded["y"] if "y" in loaded.files and key != "y" else None
                return loaded[key], y, f"{path}['{key}']"
    except ValueError as err:
        if "pickle" in str(err):
            raise DataError(f"{path}: holds pickled Python objects (e.g. an object array); genzoo never unpickles "
                            f"data files: save plain numeric arrays") from None
        raise DataError(f"{path}: not a readable {prefix} file ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DataError(f"{path}: not a readable {prefix} file ({err})") from None


@register_loader("npz", "npz:FILE  array 'x' (or the first array) as images or vectors; optional labels 'y'",
                 options=IMAGE_OPTIONS)
def load_npz(arg: str | None, options: DataOptions) -> TensorDataset:
    x, y, source = read_numpy(existing_file(arg, "npz"), "npz")
    return array_dataset(x, y, source, options)


@register_loader("npy", "npy:FILE  one array: (N, D) vectors or (N, H, W[, C]) / (N, C, H, W) images",
                 options=IMAGE_OPTIONS)
def load_npy(arg: str | None, options: DataOptions) -> TensorDataset:
    x, y, source = read_numpy(existing_file(arg, "npy"), "npy")
    return array_dataset(x, y, source, options)


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:
        return None


@register_loader("csv", "csv:FILE  numeric columns as vectors (header row optional; , ; or tab separated)")
def load_csv(arg: str | None, options: DataOptions) -> TensorDataset:
    """Every cell must be a finite number; the first row is a header when none of its cells is a number."""
    path = existing_file(arg, "csv")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read as UTF-8 text ({err})") from None
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(text[:8192], delimiters=",;\t")
    except csv.Error:  # one column, or nothing to tell from: plain commas
        dialect = csv.excel
    reader = csv.reader(io.StringIO(text), dialect)
    rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: the file is empty")
    header = None
    if all(_number(cell) is None for cell in rows[0][1]):
        header, rows = rows[0][1], rows[1:]
    if not rows:
        raise DataError(f"{path}: has a header but no data rows")
    width = len(header) if header else len(rows[0][1])
    values = np.empty((len(rows), width), dtype=np.float64)
    for i, (line, row) in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: line {line} has {len(row)} cells, expected {width}")
        for j, cell in enumerate(row):
            where = f"{path}: line {line}, column {j + 1}" + (f" ('{header[j]}')" if header else "")
            if not cell.strip():
                raise DataError(f"{where}: empty cell (missing value)")
            number = _number(cell)
            if number is None:
                raise DataError(f"{where}: non-numeric cell '{cell}'")
            if not math.isfinite(number):
                raise DataError(f"{where}: NaN/Inf value '{cell}'")
            values[i, j] = number
    return vector_dataset(torch.from_numpy(values.astype(np.float32)), None, str(path))


def read_array_examples(path: Path, *, finite: bool = True) -> Tensor:
    """Every example of an .npz/.npy file in data units (vectors (N, D), images (N, C, H, W) in [0, 1]), through
    the loader's checks but not split into train/validation/test: a set to score, not to train on.

    With ``finite=False`` (a generated set) examples holding NaN/Inf values are kept, as NaN, so that the metrics
    can drop and count them instead of refusing the file.
    """
    x, _, source = read_numpy(path, path.suffix[1:])
    if x.dtype.kind not in "biuf" or x.ndim not in (1, 2, 3, 4) or not x.size:
        array_dataset(x, None, source, DataOptions())  # raises the loader's own message
    bad = ~np.isfinite(x.reshape(len(x), -1)).all(1)
    if finite:
        check_finite(torch.from_numpy(x), source)
    # the range checks see finite placeholders; the NaN goes back in after
    clean = np.where(bad.reshape((-1,) + (1,) * (x.ndim - 1)), 0, x)
    out = (torch.from_numpy(np.asarray(clean, dtype=np.float32).reshape(len(x), -1)) if x.ndim <= 2
           else image_tensor(clean, source)[0])
    out[torch.from_numpy(bad)] = float("nan")
    return out
