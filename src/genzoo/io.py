"""Atomic file writes, safe tensor files and image grids.

Everything genzoo writes goes through a temporary file in the same folder followed by ``os.replace``, so a crash
mid-write leaves the previous file intact. Tensors are stored only as safetensors (no pickle, ever).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from genzoo.errors import DataError, RunDirError


def cache_dir() -> Path:
    """Root of genzoo's caches (downloads, feature networks): ``$GENZOO_CACHE`` or ``~/.cache/genzoo``."""
    return Path(os.environ.get("GENZOO_CACHE") or Path.home() / ".cache" / "genzoo").expanduser()


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: done once, at import, before any thread starts
    os.umask(mask)
    return mask


_UMASK = _read_umask()


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it is renamed onto ``path``, on error removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp (and some writers) make the file private (0600); give it the permissions any new file would get
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename (atomic on POSIX and Windows)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def strict_json(obj: Any) -> Any:
    """``obj`` with NaN and infinite floats replaced by None: JSON has no such numbers, and other tools' parsers
    reject Python's ``NaN``/``Infinity`` extension."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {key: strict_json(value) for key, value in obj.items()}
    if isinstance(obj, list | tuple):
        return [strict_json(value) for value in obj]
    return obj


def dumps_json(obj: Any, indent: int | None = 2) -> str:
    """Standard JSON text of ``obj`` (see :func:`strict_json`)."""
    return json.dumps(strict_json(obj), indent=indent, allow_nan=False)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, dumps_json(obj) + "\n")


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(f"{path}: file is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise RunDirError(f"{path}: not valid JSON ({err})") from None


def save_tensors(path: Path, tensors: dict[str, Tensor]) -> None:
    """Save a flat dict of tensors as safetensors, atomically."""
    with atomic_path(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))


def load_tensors(path: Path) -> dict[str, Tensor]:
    """Load a safetensors file; a missing or corrupt file (e.g. a pickle in disguise) is a clear RunDirError."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"{path}: file is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise RunDirError(f"{path}: not a valid safetensors file ({err})") from None


def replace_dir_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """Create directory ``target`` by filling a temporary sibling and swapping it in.

    If the process dies at any point, either the old ``target`` or (between the two renames) ``.target.old`` is
    complete; :func:`resolve_dir` finds whichever is there.
    """
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    fill(tmp)
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(tmp, target)
    shutil.rmtree(old, ignore_errors=True)


def resolve_dir(target: Path) -> Path | None:
    """``target`` if complete, else the previous version left by an interrupted :func:`replace_dir_atomically`."""
    target = Path(target)
    if target.is_dir():
        return target
    old = target.with_name(f".{target.name}.old")
    return old if old.is_dir() else None


def image_grid(images: Tensor, nrow: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, C, H, W) in [0, 1] -> one uint8 grid image (H', W', C) with ``pad`` pixels between tiles."""
    images = images.detach().float().clamp(0, 1).cpu()
    n, c, h, w = images.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    ncol = math.ceil(n / nrow)
    grid = torch.ones(c, ncol * (h + pad) + pad, nrow * (w + pad) + pad)
    for i in range(n):
        r, col = divmod(i, nrow)
        grid[:, pad + r * (h + pad) : pad + r * (h + pad) + h, pad + col * (w + pad) : pad + col * (w + pad) + w] = (
            images[i]
        )
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_png(path: Path, array: np.ndarray, scale: int = 1) -> None:
    """Save a (H, W, C) uint8 array as PNG atomically, optionally upscaled (nearest) for tiny images."""
    from PIL import Image

    img = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_image_grid(path: Path, images: Tensor, nrow: int | None = None) -> None:
    """Save images (N, C, H, W) in [0, 1] as a PNG grid; small images are upscaled so they are visible."""
    grid = image_grid(images, nrow)
    scale = max(1, 256 // max(grid.shape[0], grid.shape[1]))
    save_png(path, grid, scale=min(scale, 8))


def save_scatter(path: Path, points: Tensor, reference: Tensor | None = None, title: str = "") -> None:
    """Save 2D points (and optionally reference data in grey) as a scatter-plot PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.7", label="data")
    ax.scatter(points[:, 0].cpu(), points[:, 1].cpu(), s=2, c="tab:blue", label="samples")
    ax.set_title(title)
    ax.set_aspect("equal")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")
    plt.close(fig)


def save_array(path: Path, array: Tensor) -> Path:
    """Save a tensor as a ``.npy`` file (no pickle), atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array.detach().cpu().numpy(), allow_pickle=False)
    atomic_write_bytes(Path(path), buffer.getvalue())
    return Path(path)


def json_line_strings(line: str, where: str, keys: tuple[str, ...], hint: str = "") -> list[str]:
    """The string values of ``keys`` in one JSON-lines record (an object); one clear error naming ``where`` (file
    and line) otherwise, followed by ``hint``."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: not valid JSON ({err.msg})") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: a JSON line must be an object with {', '.join(repr(k) for k in keys)}")
    for key in keys:
        if not isinstance(record.get(key), str):
            raise DataError(f"{where}: no string field '{key}'{hint}")
    return [record[key] for key in keys]
