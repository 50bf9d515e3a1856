"""Editing images with a trained model: inpainting/outpainting from a mask, image-to-image from a strength.

Mask convention of common inpainting tools: white (any non-zero) pixels are generated, black pixels are kept.
Images and masks are resized to the model's size (any mask coverage of an output pixel marks it for
generation). Works with any model that declares :attr:`Capability.INPAINT` (``model.inpaint(image, mask, ...)``)
or :attr:`Capability.IMG2IMG` (``model.img2img(image, strength, ...)``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from genzoo.contract import Capability, DataKind, GenerativeModel
from genzoo.errors import DataError, GenzooError
from genzoo.runs import load

_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


def _open(path: Path) -> Any:
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise DataError(f"{path}: cannot read image ({err})") from None
    return img


def read_image(path: str | Path, channels: int) -> Tensor:
    """(C, H, W) float in [0, 1] from an image file; an error when it has the wrong number of channels."""
    path = Path(path)
    img = _open(path)
    if img.mode in _GREY_MODES:
        array = np.asarray(img.convert("L"))[None]
    else:
        array = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
        if channels == 1 and (array == array[:1]).all():  # an RGB file holding a grey image
            array = array[:1]
    if len(array) != channels:
        have = "greyscale (1 channel)" if len(array) == 1 else "colour (3 channels)"
        want = "greyscale (1 channel)" if channels == 1 else "colour (3 channels)"
        raise DataError(f"{path}: the image is {have} but the model makes {want} images")
    return torch.from_numpy(array.astype(np.float32) / 255.0)


def read_mask(path: str | Path) -> Tensor:
    """(H, W) float: 1 where the mask file is non-zero (generate), 0 where it is black (keep)."""
    path = Path(path)
    return torch.from_numpy((np.asarray(_open(path).convert("L")) > 0).astype(np.float32))


def _resize(x: Tensor, size: tuple[int, int], mask: bool) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    if mask:  # area-average, then any coverage of a target pixel marks it for generation
        return (F.interpolate(x[None, None], size=size, mode="area")[0, 0] > 0).float()
    return F.interpolate(x[None], size=size, mode="bicubic", antialias=True, align_corners=False)[0].clamp(0, 1)


def edit(model: GenerativeModel | str | Path, image: Tensor | str | Path, mask: Tensor | str | Path | None = None,
         *, strength: float | None = None, **options: Any) -> Tensor:
    """Inpaint ``image`` where ``mask`` is non-zero (keeping the other pixels exactly), or, without a mask,
    translate it (with ``strength`` in (0, 1] where the model takes one: how far from the input to go). ``model`` is
    a model or a run directory; image/mask are tensors in [0, 1] or image files (resized to the model's size).
    Returns (N, C, H, W) in [0, 1]."""
    if not isinstance(model, GenerativeModel):
        model = load(model)
    model.require(Capability.INPAINT if mask is not None else Capability.IMG2IMG)  # before reading any file
    if model.data.kind is not DataKind.IMAGE:
        raise GenzooError(f"model '{model.name}' does not make images; nothing to edit")
    image, mask = _inputs(model, image, mask)
    if mask is None:  # image-to-image: the model's own default strength unless one is given
        return model.img2img(image, **({} if strength is None else {"strength": strength}), **options)
    if not torch.as_tensor(mask).any():
        raise GenzooError("the mask is empty: it has no white (non-zero) pixel marking what to generate")
    if strength is not None:
        options["strength"] = strength
    return model.inpaint(image, mask, **options)


def _inputs(model: GenerativeModel, image: Tensor | str | Path,
            mask: Tensor | str | Path | None) -> tuple[Tensor, Tensor | None]:
    """Image and mask as tensors; files are read and resized to the model's size (a mask file must match its
    image file's size, so it marks the pixels the user meant)."""
    channels, height, width = model.data.shape
    if isinstance(image, str | Path):
        image_path, image = Path(image), read_image(image, channels)
        if isinstance(mask, str | Path):
            mask_path, mask = Path(mask), read_mask(mask)
            if tuple(mask.shape) != tuple(image.shape[-2:]):
                raise DataError(f"{mask_path}: the mask is {mask.shape[1]}x{mask.shape[0]} pixels but the image "
                                f"{image_path} is {image.shape[2]}x{image.shape[1]}; they must match")
            mask = _resize(mask, (height, width), mask=True)
        image = _resize(image, (height, width), mask=False)
    elif isinstance(mask, str | Path):
        mask = _resize(read_mask(mask), (height, width), mask=True)
    return image, mask
