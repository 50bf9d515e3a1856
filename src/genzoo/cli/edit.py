"""`genzoo edit RUN --image in.png --mask mask.png --out out.png`: inpainting, outpainting and image-to-image;
`genzoo edit RUN --image small.png --upscale 4 --out big.png`: super-resolution.

The model's sampling options (``--sampler``, ``--steps``, ``--guidance`` ...) are flags generated from its
``SampleOptions`` (:mod:`genzoo.cli.options`); the editing flags written here are the command's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
import typer

from genzoo.cli.app import app, console
from genzoo.cli.options import ModelOptionsCommand, model_options
from genzoo.contract import Capability
from genzoo.editing import edit as edit_image
from genzoo.editing import read_image
from genzoo.errors import GenzooError
from genzoo.io import save_png
from genzoo.runs import load


class EditCommand(ModelOptionsCommand):
    """`genzoo edit`: the model is RUN; its sampling options become flags."""

    panel: ClassVar[str] = "Sampling options of model '{name}'"


@app.command(cls=EditCommand)
def edit(
    run: Path = typer.Argument(..., help="Run directory of an image model that can inpaint (e.g. ddpm)."),
    image: Path = typer.Option(..., "--image", "-i", help="Input image (PNG/JPEG); resized to the model's size."),
    mask: Path = typer.Option(None, "--mask", "-m", help="Mask image of the same size: white/non-zero = generate, "
                              "black = keep. Without a mask, --strength does image-to-image."),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG (written at the model's size)."),
    strength: float = typer.Option(None, "--strength", help="Noise level to start from, in (0, 1]: small keeps "
                                   "more of the input (image-to-image, or partial regeneration under a mask)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same result."),
    resample: int = typer.Option(None, "--resample", min=1, help="Inpainting: RePaint resampling rounds per step."),
    label: int = typer.Option(None, "--class", help="Class label (class-conditional models)."),
    checkpoint: Literal["best", "last"] = typer.Option("best", "--checkpoint", help="best (by validation) or last."),
    upscale: int = typer.Option(None, "--upscale", min=2, help="Super-resolution models (sr3): upscale --image by "
                                "this factor, the model's (the image is resized to the model's low resolution)."),
) -> None:
    """Inpaint/outpaint the white region of a mask, translate an image (SDEdit) with --strength, or upscale it
    with --upscale (super-resolution models).

    The model's own sampling options (sampler, steps, guidance ...): genzoo edit RUN --help lists RUN's.
    """
    if out.suffix.lower() != ".png":
        raise GenzooError(f"--out must be a .png file, got '{out}'")
    if upscale is not None and (mask is not None or strength is not None):
        raise GenzooError("--upscale super-resolves the whole image: leave out --mask and --strength")
    options = model_options()  # validated while parsing, before this load
    options.update({k: v for k, v in {"resample": resample, "labels": label}.items() if v is not None})
    model = load(run, checkpoint=checkpoint)
    if upscale is not None:
        _upscale(model, image, out, upscale, seed, options)
        return
    result = edit_image(model, image, mask, strength=strength, seed=seed, **options)
    save_png(out, (result[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
    what = "inpainted" if mask is not None else "image-to-image" + (f" (strength {strength})" if strength else "")
    console.print(f"{what} -> [bold]{out}[/] ({result.shape[-1]}x{result.shape[-2]})")


def _upscale(model: Any, image: Path, out: Path, factor: int, seed: int, options: dict[str, Any]) -> None:
    """Super-resolve ``image`` (resized to the model's low resolution when it is not) by ``factor``."""
    model.require(Capability.SUPER_RESOLVE)
    if set(options) & {"resample", "labels"}:
        raise GenzooError("--upscale takes no --resample or --class")
    channels, height, width = model.data.shape
    if factor != model.upscale_factor:
        raise GenzooError(f"this {model.name} run upscales by {model.upscale_factor} ({width // model.upscale_factor}"
                          f"x{height // model.upscale_factor} -> {width}x{height}), not by {factor}")
    low = read_image(image, channels)[None]
    size = (height // factor, width // factor)
    if tuple(low.shape[-2:]) != size:
        console.print(f"resizing {image} from {low.shape[-1]}x{low.shape[-2]} to the model's {size[1]}x{size[0]}")
        low = F.interpolate(low, size=size, mode="area")
    result = model.upscale(low, seed=seed, **options)
    save_png(out, (result[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
    console.print(f"upscaled x{factor} -> [bold]{out}[/] ({width}x{height})")
