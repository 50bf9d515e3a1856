"""``sr3`` super-resolution and the PSNR/SSIM metrics it is judged by."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genzoo
from genzoo.cli import app
from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.data import TensorDataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import save_png
from genzoo.metrics.fidelity import psnr, ssim
from genzoo.registry import build_model

TINY = {"timesteps": 50, "width": 8, "channel_mult": [1, 2], "factor": 2}


# ----- metrics ------------------------------------------------------------------------------------------------------
def _ssim_by_hand(x: np.ndarray, y: np.ndarray, side: int) -> float:
    """SSIM of two single-channel images, window by window, from the paper's definition (float64 loops)."""
    offsets = [i - (side - 1) / 2 for i in range(side)]
    g = np.array([[math.exp(-(a * a + b * b) / (2 * 1.5**2)) for b in offsets] for a in offsets])
    g /= g.sum()
    c1, c2, values = 0.01**2, 0.03**2, []
    for i in range(x.shape[0] - side + 1):
        for j in range(x.shape[1] - side + 1):
            a, b = x[i : i + side, j : j + side], y[i : i + side, j : j + side]
            ma, mb = (g * a).sum(), (g * b).sum()
            va, vb = (g * (a - ma) ** 2).sum(), (g * (b - mb) ** 2).sum()
            cov = (g * (a - ma) * (b - mb)).sum()
            values.append((2 * ma * mb + c1) * (2 * cov + c2) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize(("size", "side"), [(13, 11), (8, 7)])
def test_ssim_matches_the_definition_window_by_window(size: int, side: int) -> None:
    """11x11 Gaussian window (sigma 1.5) where it fits, the largest odd one that fits on small images."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, size, size, generator=gen)
    y = (x + 0.3 * torch.randn(2, 1, size, size, generator=gen)).clamp(0, 1)
    got = ssim(x, y)
    for k in range(2):
        assert got[k].item() == pytest.approx(_ssim_by_hand(x[k, 0].double().numpy(), y[k, 0].double().numpy(), side),
                                              abs=1e-6)


def test_ssim_known_values() -> None:
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(ssim(x, x), torch.ones(3))
    # constant images a and b: no variance, so SSIM is the luminance term (2ab + C1) / (a^2 + b^2 + C1)
    a, b = torch.full((1, 1, 12, 12), 0.25), torch.full((1, 1, 12, 12), 0.75)
    expected = (2 * 0.25 * 0.75 + 1e-4) / (0.25**2 + 0.75**2 + 1e-4)  # = 0.600064
    assert ssim(a, b).item() == pytest.approx(expected, rel=1e-6)
    # channels are averaged: one identical channel (1) and one as above
    two = ssim(torch.cat([a, a], 1), torch.cat([a, b], 1)).item()
    assert two == pytest.approx((1 + expected) / 2, rel=1e-6)


def test_psnr_known_values() -> None:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 0.8
    assert torch.allclose(psnr(x + 0.1, x), torch.full((4,), 20.0))  # MSE 0.01 -> 10 log10(1 / 0.01)
    assert torch.isinf(psnr(x, x)).all()
    with pytest.raises(GenzooError, match="of one shape"):
        psnr(x, x[:, :, :4])


# ----- the model ----------------------------------------------------------------------------------------------------
def _info(shape: tuple[int, int, int] = (1, 8, 8)) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=shape, levels=None, spec="flat")


def _flat_images(n: int, seed: int) -> torch.Tensor:
    """Images of one grey level each: the low-resolution image says everything about the high-resolution one."""
    return torch.rand(n, 1, 1, 1, generator=torch.Generator().manual_seed(seed)).expand(n, 1, 8, 8).clone()


def test_degradation_and_bicubic_baseline() -> None:
    model = build_model("sr3", _info(), TINY)
    x = torch.arange(64, dtype=torch.float32).view(1, 1, 8, 8) / 63
    low = model.downsample(x)
    assert low.shape == (1, 1, 4, 4)
    assert low[0, 0, 0, 0].item() == pytest.approx((0 + 1 + 8 + 9) / 4 / 63)  # the mean of the top-left 2x2 block
    flat = _flat_images(3, 0)
    assert torch.allclose(model.bicubic(model.downsample(flat)), flat, atol=1e-6)  # bicubic keeps a constant


@pytest.fixture(scope="module")
def trained() -> object:
    """sr3 trained for a few seconds on flat images: it must copy the level its low-resolution input gives."""
    torch.manual_seed(0)
    model = build_model("sr3", _info(), {**TINY, "lr": 3e-3})
    optim = Optimizers(model.configure_optimizers())
    for step in range(100):
        model.training_step(Batch(_flat_images(32, step)), step, optim)
    return model


def test_the_low_resolution_input_is_honoured(trained: object) -> None:
    x = _flat_images(16, seed=999)
    out = trained.upscale(trained.downsample(x), seed=0, steps=10)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert (trained.downsample(out) - trained.downsample(x)).abs().mean() < 0.05
    untrained = build_model("sr3", _info(), TINY)  # the same network before training ignores the input
    raw = untrained.upscale(untrained.downsample(x), seed=0, steps=10)
    assert (untrained.downsample(raw) - untrained.downsample(x)).abs().mean() > 0.15


def test_task_metrics_compare_with_bicubic(trained: object) -> None:
    x = _flat_images(8, seed=5) * 0.5 + torch.linspace(0, 0.4, 8).view(1, 1, 1, 8)  # not flat: bicubic errs
    metrics = trained.task_metrics(Batch(x), torch.Generator().manual_seed(0))
    bicubic = trained.bicubic(trained.downsample(x))
    assert metrics["bicubic_psnr_db"] == pytest.approx(psnr(bicubic, x).mean().item(), rel=1e-6)
    assert metrics["bicubic_ssim"] == pytest.approx(ssim(bicubic, x).mean().item(), rel=1e-6)
    assert set(metrics) == {"psnr_db", "ssim", "bicubic_psnr_db", "bicubic_ssim"}
    assert math.isfinite(metrics["psnr_db"]) and -1 <= metrics["ssim"] <= 1


def test_upscaling_is_seeded() -> None:
    model = build_model("sr3", _info(), TINY)
    low = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    a, b = model.upscale(low, seed=3, steps=3), model.upscale(low, seed=3, steps=3)
    assert torch.equal(a, b) and not torch.equal(a, model.upscale(low, seed=4, steps=3))
    assert model.cost(steps=3).nfe_per_sample == 3


def test_bad_inputs_give_one_clear_error() -> None:
    model = build_model("sr3", _info(), TINY)
    with pytest.raises(GenzooError, match=r"upscales 4x4 images .* got shape \(1, 8, 8\)"):
        model.upscale(torch.rand(1, 1, 8, 8))
    with pytest.raises(GenzooError, match=r"\[0, 1\]"):
        model.upscale(torch.full((1, 1, 4, 4), 2.0))
    with pytest.raises(ConfigError, match="factor 3 must divide"):
        build_model("sr3", _info(), {**TINY, "factor": 3})
    with pytest.raises(ConfigError, match="sampler"):
        model.upscale(torch.rand(1, 1, 4, 4), sampler="nope")
    ddpm = build_model("ddpm", _info(), {"timesteps": 10, "width": 8, "channel_mult": [1, 2]})
    with pytest.raises(GenzooError, match="cannot upscale"):
        ddpm.upscale(torch.rand(1, 1, 4, 4))


def test_cli_upscales_a_png(tmp_path: Path) -> None:
    info = _info()
    data = TensorDataset(info, *(Batch(_flat_images(32, seed)) for seed in range(3)))
    run = genzoo.train("sr3", data, steps=2, out=tmp_path / "run", overrides=TINY, progress=False, batch_size=8,
                       sample_every=10_000, eval_every=10_000, checkpoint_every=10_000, val_examples=8)
    small = tmp_path / "small.png"
    save_png(small, np.full((4, 4, 1), 128, dtype=np.uint8))
    result = CliRunner().invoke(app, ["edit", str(run), "--image", str(small), "--upscale", "2", "--steps", "2",
                                      "--out", str(tmp_path / "big.png")])
    assert result.exit_code == 0, result.output
    from PIL import Image

    assert Image.open(tmp_path / "big.png").size == (8, 8)
    wrong = CliRunner().invoke(app, ["edit", str(run), "--image", str(small), "--upscale", "4",
                                     "--out", str(tmp_path / "x.png")])
    assert wrong.exit_code != 0 and "upscales by 2" in str(wrong.output) + str(wrong.exception)
