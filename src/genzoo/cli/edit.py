"""`genzoo edit RUN --image in.png --mask mask.png --out out.png`: inpainting, outpainting and image-to-image."""

from __future__ import annotations

from pathlib import Path

import typer

import genzoo
from genzoo.cli.app import app, console
from genzoo.editing import edit as edit_image
from genzoo.errors import GenzooError
from genzoo.io import save_png


@app.command()
def edit(
    run: Path = typer.Argument(..., help="Run directory of an image model that can inpaint (e.g. ddpm)."),
    image: Path = typer.Option(..., "--image", "-i", help="Input image (PNG/JPEG); resized to the model's size."),
    mask: Path = typer.Option(None, "--mask", "-m", help="Mask image of the same size: white/non-zero = generate, "
                              "black = keep. Without a mask, --strength does image-to-image."),
    out: Path = typer.Option(..., "--out", "-o", help="Output PNG (written at the model's size)."),
    strength: float = typer.Option(None, "--strength", help="Noise level to start from, in (0, 1]: small keeps "
                                   "more of the input (image-to-image, or partial regeneration under a mask)."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same result."),
    sampler: str = typer.Option(None, "--sampler", help="ddpm, ddim or dpm (inpainting default: ddpm)."),
    steps: int = typer.Option(None, "--steps", help="Sampling steps for the full noise range."),
    eta: float = typer.Option(None, "--eta", help="DDIM eta (0 = deterministic)."),
    resample: int = typer.Option(None, "--resample", help="Inpainting: RePaint resampling rounds per step."),
    label: int = typer.Option(None, "--class", help="Class label (class-conditional models)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale (with --class)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (by validation) or last."),
) -> None:
    """Inpaint/outpaint the white region of a mask, or translate an image (SDEdit) with --strength."""
    if out.suffix.lower() != ".png":
        raise GenzooError(f"--out must be a .png file, got '{out}'")
    model = genzoo.load(run, checkpoint=checkpoint)  # type: ignore[arg-type]
    options = {k: v for k, v in {"sampler": sampler, "steps": steps, "eta": eta, "resample": resample,
                                 "guidance": guidance, "labels": label}.items() if v is not None}
    result = edit_image(model, image, mask, strength=strength, seed=seed, **options)
    save_png(out, (result[0].permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8"))
    what = "inpainted" if mask is not None else f"image-to-image (strength {strength})"
    console.print(f"{what} -> [bold]{out}[/] ({result.shape[-1]}x{result.shape[-2]})")
