"""Data kinds: what one example is, and every conversion that depends on it, in one handler per kind.

A :class:`DataInfo` describes a dataset (kind, shape, discrete levels, classes, statistics) and is all a model needs
to be rebuilt without the data. A :class:`KindHandler` holds what differs between kinds: data units <-> network
units (``preprocess``/``postprocess`` and the log-determinant that carries densities across), the preview the
trainer writes while training, and how samples are saved. Adding a data kind is adding one handler to
:data:`HANDLERS`; nothing else dispatches on the kind.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from genzoo.errors import GenzooError
from genzoo.io import atomic_write_text, save_array, save_image_grid, save_scatter

#: seed of the previews written while training (the same picture at every step, so progress is comparable)
PREVIEW_SEED = 1234


class DataKind(StrEnum):
    """What one example is. IMAGE: float (C, H, W) in [0, 1]; VECTOR: float (D,); TOKENS: long (T,) ids."""

    IMAGE = "image"
    VECTOR = "vector"
    TOKENS = "tokens"


@dataclass(frozen=True)
class DataInfo:
    """Everything a model needs to know about its data; JSON-serialisable so a run loads without the data.

    ``levels`` is the number of discrete values one pixel channel can take (2 binary, 17 for sklearn digits, 256
    for 8-bit images), ``None`` for continuous data, and the vocabulary size for tokens. Likelihoods of discrete
    data are reported as probabilities over exactly these levels. ``mean``/``std`` (vector data) are per-feature
    statistics of the training split, used to standardise inputs. ``domain_b`` describes the second dataset of a
    two-domain model (unpaired translation); ``spec`` is the data spec the dataset was loaded from.
    """

    kind: DataKind
    shape: tuple[int, ...]
    levels: int | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    spec: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    domain_b: DataInfo | None = None

    @property
    def dims(self) -> int:
        """Number of scalar dimensions of one example (the D of bits/dim)."""
        return math.prod(self.shape)

    @property
    def conditional(self) -> bool:
        return bool(self.num_classes)

    @property
    def handler(self) -> KindHandler:
        return HANDLERS[self.kind]

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["kind"] = self.kind.value
        out["domain_b"] = None if self.domain_b is None else self.domain_b.to_json()
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> DataInfo:
        fields = dict(raw)
        fields["kind"] = DataKind(fields["kind"])
        for key in ("shape", "class_names", "mean", "std"):
            if fields.get(key) is not None:
                fields[key] = tuple(fields[key])
        if fields.get("domain_b") is not None:
            fields["domain_b"] = cls.from_json(fields["domain_b"])
        return cls(**fields)


class Previewable(Protocol):
    """What a preview needs from a model (see :class:`genzoo.contract.GenerativeModel`)."""

    name: str
    capabilities: frozenset[Any]

    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor: ...

    def generate(self, prompt: str = "", **options: Any) -> Any: ...

    def img2img(self, x: Tensor, **options: Any) -> Tensor: ...

    def upscale(self, x_low: Tensor, **options: Any) -> Tensor: ...

    def downsample(self, x: Tensor) -> Tensor: ...

    def caption(self, images: Tensor, **options: Any) -> list[str]: ...


class KindHandler:
    """Conversions of one data kind. ``stats`` are the tensors of :meth:`buffers`, kept on the model's device."""

    kind: DataKind
    #: file suffix of the trainer's preview ("" = no preview for this kind)
    preview_suffix = ".png"

    def buffers(self, info: DataInfo) -> dict[str, Tensor]:
        """Constant tensors the conversions need (registered on the model as non-persistent buffers)."""
        return {}

    def preprocess(self, x: Tensor, stats: dict[str, Tensor]) -> Tensor:
        """Data units -> network units."""
        return x

    def postprocess(self, z: Tensor, stats: dict[str, Tensor]) -> Tensor:
        """Network units -> data units (inverse of :meth:`preprocess`)."""
        return z

    def log_det(self, info: DataInfo, stats: dict[str, Tensor]) -> float:
        """log |d preprocess / dx| summed over one example: add to a density in network units to get data units."""
        return 0.0

    def preview(self, model: Previewable, reference: Tensor | None, path: Path) -> Path:
        """Write a picture (or text) of what ``model`` generates now to ``path`` (or, where the kind has no picture
        for it, to ``path`` with another suffix); return the file written."""
        raise NotImplementedError

    def save(self, path: Path, samples: Tensor) -> Path:
        """Save samples by file type: ``.npy`` always (raw arrays in data units); other types per kind."""
        if path.suffix == ".npy":
            return save_array(path, samples)
        raise GenzooError(f"cannot write {self.kind.value} samples to '{path.name}': use {self.save_types()}")

    def save_types(self) -> str:
        return ".npy"


class ImageHandler(KindHandler):
    """Images in [0, 1] <-> [-1, 1]; previews and ``.png`` files are image grids."""

    kind = DataKind.IMAGE

    def preprocess(self, x: Tensor, stats: dict[str, Tensor]) -> Tensor:
        return x * 2.0 - 1.0

    def postprocess(self, z: Tensor, stats: dict[str, Tensor]) -> Tensor:
        return ((z + 1.0) / 2.0).clamp(0.0, 1.0)

    def log_det(self, info: DataInfo, stats: dict[str, Tensor]) -> float:
        return info.dims * math.log(2.0)

    def preview(self, model: Previewable, reference: Tensor | None, path: Path) -> Path:
        caps = model.capabilities
        if "sample" not in caps and reference is not None:
            if "caption" in caps:  # a captioner: the captions of held-out images, one per line
                atomic_write_text(path.with_suffix(".txt"), "\n".join(model.caption(reference[:16])) + "\n")
                return path.with_suffix(".txt")
            # a translator or super-resolver has no sampler: rows of held-out inputs, each above a row of what the
            # model makes of them (translations; upscalings of their low-resolution versions)
            row = min(8, len(reference))
            inputs = reference[: min(32, len(reference)) // row * row]
            if "img2img" in caps or "super_resolve" in caps:
                made = model.img2img(inputs) if "img2img" in caps else model.upscale(model.downsample(inputs))
                rows = [t.unflatten(0, (-1, row)) for t in (inputs, made.cpu())]
                save_image_grid(path, torch.stack(rows, 1).flatten(0, 2), nrow=row)
                return path
        samples = model.sample(64, generator=torch.Generator().manual_seed(PREVIEW_SEED)).cpu()
        save_image_grid(path, samples, nrow=8)
        return path

    def save(self, path: Path, samples: Tensor) -> Path:
        if path.suffix == ".png":
            save_image_grid(path, samples)
            return path
        return super().save(path, samples)

    def save_types(self) -> str:
        return ".png (a grid) or .npy"


class VectorHandler(KindHandler):
    """Vectors standardised by the training split's per-feature mean and std; 2-D+ previews are scatter plots."""

    kind = DataKind.VECTOR

    def buffers(self, info: DataInfo) -> dict[str, Tensor]:
        mean = torch.tensor(info.mean or [0.0] * info.dims, dtype=torch.float32)
        std = torch.tensor(info.std or [1.0] * info.dims, dtype=torch.float32)
        return {"data_mean": mean, "data_std": std.clamp_min(1e-8)}

    def preprocess(self, x: Tensor, stats: dict[str, Tensor]) -> Tensor:
        return (x - stats["data_mean"]) / stats["data_std"]

    def postprocess(self, z: Tensor, stats: dict[str, Tensor]) -> Tensor:
        return z * stats["data_std"] + stats["data_mean"]

    def log_det(self, info: DataInfo, stats: dict[str, Tensor]) -> float:
        return float(-stats["data_std"].log().sum())

    def preview(self, model: Previewable, reference: Tensor | None, path: Path) -> Path:
        samples = model.sample(1000, generator=torch.Generator().manual_seed(PREVIEW_SEED)).cpu()
        if samples.shape[1] < 2:
            return save_array(path.with_suffix(".npy"), samples)
        save_scatter(path, samples[:, :2], None if reference is None else reference[:, :2], title=path.stem)
        return path

    def save(self, path: Path, samples: Tensor) -> Path:
        if path.suffix == ".png" and samples.shape[1] >= 2:
            save_scatter(path, samples[:, :2], title=path.stem)
            return path
        return super().save(path, samples)

    def save_types(self) -> str:
        return ".png (a scatter plot of the first two dimensions, for 2+ dimensions) or .npy"


class TokenHandler(KindHandler):
    """Token ids stay ids; a text model's preview is a completion of the empty prompt."""

    kind = DataKind.TOKENS
    preview_suffix = ".txt"

    def preview(self, model: Previewable, reference: Tensor | None, path: Path) -> Path:
        if "generate_text" not in model.capabilities:
            generator = torch.Generator().manual_seed(PREVIEW_SEED)
            return save_array(path.with_suffix(".npy"), model.sample(8, generator=generator).cpu())
        text = model.generate("", max_new_tokens=300, temperature=0.8, seed=PREVIEW_SEED)
        atomic_write_text(path, text if isinstance(text, str) else text[0])
        return path


HANDLERS: dict[DataKind, KindHandler] = {h.kind: h for h in (ImageHandler(), VectorHandler(), TokenHandler())}
