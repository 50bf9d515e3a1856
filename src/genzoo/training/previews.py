"""Sample previews written while training: an image grid, a 2D scatter plot, or generated text."""

from __future__ import annotations

from pathlib import Path

import torch

from genzoo.contract import DataKind, GenerativeModel
from genzoo.data.base import Dataset
from genzoo.io import atomic_write_text, save_image_grid, save_scatter

PREVIEW_SEED = 1234


def write_preview(model: GenerativeModel, dataset: Dataset, directory: Path, step: int) -> Path:
    """Write ``step-XXXXXXX.{png,txt}`` and a copy named ``latest`` into ``directory``; return the step file."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(PREVIEW_SEED)
    kind = model.data.kind
    if kind is DataKind.TOKENS and hasattr(model, "preview_text"):
        text = model.preview_text(generator)
        for name in (f"step-{step:07d}.txt", "latest.txt"):
            atomic_write_text(directory / name, text)
        return directory / f"step-{step:07d}.txt"
    if kind is DataKind.TOKENS:
        return directory
    n = 64 if kind is DataKind.IMAGE else 1000
    samples = model.sample(n, generator=generator).cpu()
    for name in (f"step-{step:07d}.png", "latest.png"):
        if kind is DataKind.IMAGE:
            save_image_grid(directory / name, samples, nrow=8)
        else:
            reference = next(dataset.batches("val", 1000)).x
            save_scatter(directory / name, samples[:, :2], reference[:, :2], title=f"{model.name} step {step}")
    return directory / f"step-{step:07d}.png"
