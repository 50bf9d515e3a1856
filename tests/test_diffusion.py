"""Diffusion family: forward process, samplers against an exact Gaussian denoiser, guidance, editing, bound, CLI."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli import app
from genzoo.contract import DataInfo, DataKind
from genzoo.editing import edit
from genzoo.errors import GenzooError
from genzoo.io import load_tensors
from genzoo.models.diffusion.samplers import SPACING, solve
from genzoo.models.diffusion.schedules import Schedule
from genzoo.nn.unet import UNet

SMOKE = dict(genzoo.model_class("ddpm").smoke_config)


# ----- forward process -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_forward_marginals_match_the_markov_chain(name: str) -> None:
    """x_t = alpha_t x_0 + sigma_t eps equals (in law) t + 1 single steps x <- sqrt(1 - beta) x + sqrt(beta) z."""
    schedule = Schedule.make(name, 200)
    abar = schedule.abar
    betas = 1 - abar / torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
    gen = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5], dtype=torch.float64).expand(20_000, 2)
    x = x0.clone()
    for t in range(60):
        x = (1 - betas[t]).sqrt() * x + betas[t].sqrt() * torch.randn(x.shape, generator=gen, dtype=torch.float64)
        if t in (0, 20, 59):
            alpha, sigma = schedule.alpha_sigma(t)
            assert torch.allclose(x.mean(0), alpha * x0[0], atol=0.02)
            assert torch.allclose(x.var(0), sigma**2 * torch.ones(2, dtype=x.dtype), rtol=0.05, atol=1e-4)
            direct = schedule.q_sample(x0, torch.full((len(x0),), t), torch.randn(x0.shape, generator=gen,
                                                                                  dtype=torch.float64))
            assert torch.allclose(direct.mean(0), x.mean(0), atol=0.03)
            assert torch.allclose(direct.var(0), x.var(0), rtol=0.05, atol=1e-4)
    assert (abar[1:] < abar[:-1]).all() and abar[0] > 0.99 and abar[-1] < 1e-3


@pytest.mark.parametrize("name", ["linear", "cosine"])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_prediction_targets_round_trip(name: str, prediction: str) -> None:
    schedule = Schedule.make(name, 100)
    gen = torch.Generator().manual_seed(1)
    x0, noise = torch.randn(8, 3, generator=gen), torch.randn(8, 3, generator=gen)
    t = torch.arange(0, 100, 13)[:8]
    xt = schedule.q_sample(x0, t, noise)
    target = schedule.target(x0, noise, t, prediction)  # type: ignore[arg-type]
    assert torch.allclose(schedule.predict_x0(xt, t, target, prediction), x0, atol=1e-4)  # type: ignore[arg-type]


# ----- samplers with the exact denoiser of Gaussian data ----------------------------------------------------------
MU = torch.tensor([0.5, -0.3, 0.2], dtype=torch.float64)
_A = torch.tensor([[0.8, 0.1, 0.0], [0.3, 0.5, 0.2], [-0.4, 0.2, 0.3]], dtype=torch.float64)
SIGMA = _A @ _A.T + 0.05 * torch.eye(3, dtype=torch.float64)


def gaussian_denoiser(schedule: Schedule):
    """E[x_0 | x_t] = mu + Sigma alpha (alpha^2 Sigma + sigma^2 I)^-1 (x_t - alpha mu) for x_0 ~ N(mu, Sigma)."""

    @functools.cache
    def gain(t: int) -> tuple[Tensor, Tensor]:
        a, s = schedule.alpha_sigma(t)
        return a, SIGMA @ torch.linalg.inv(a * a * SIGMA + s * s * torch.eye(3, dtype=torch.float64)) * a

    return lambda x, t: MU + (x - gain(t)[0] * MU) @ gain(t)[1].T


def _gaussian_samples(sampler: str, steps: int, seed: int, n: int = 20_000) -> Tensor:
    schedule = Schedule.make("cosine", 1000)
    gen = torch.Generator().manual_seed(seed)
    noise = lambda shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    times = schedule.timesteps(steps, spacing=SPACING[sampler])
    return solve(gaussian_denoiser(schedule), schedule, noise((n, 3)), times, sampler=sampler,  # type: ignore[arg-type]
                 noise=noise)


def _covariance_error(samples: Tensor) -> float:
    return float((torch.cov(samples.T) - SIGMA).norm() / SIGMA.norm())


@pytest.mark.parametrize(("sampler", "steps", "tolerance"),
                         [("dpm", 10, 0.1), ("dpm", 20, 0.04), ("ddim", 20, 0.2), ("ddim", 100, 0.06),
                          ("ddpm", 1000, 0.06)])
def test_samplers_reproduce_a_gaussian_with_its_exact_denoiser(sampler: str, steps: int, tolerance: float) -> None:
    n = 4000 if steps > 100 else 20_000  # long chains cost more per sample
    out = _gaussian_samples(sampler, steps, seed=2, n=n)
    assert (out.mean(0) - MU).abs().max() < 5 * math.sqrt(float(SIGMA.diagonal().max()) / n)
    assert _covariance_error(out) < tolerance, f"{sampler}@{steps}: covariance off by {_covariance_error(out):.3f}"


def test_ddim_error_shrinks_with_steps_and_dpm_beats_it() -> None:
    ddim = [_covariance_error(_gaussian_samples("ddim", steps, seed=3)) for steps in (10, 40, 160)]
    assert ddim[0] > ddim[1] > ddim[2]
    assert _covariance_error(_gaussian_samples("dpm", 10, seed=3)) < ddim[0] / 2


def test_variational_bound_is_below_and_close_to_the_exact_log_likelihood() -> None:
    """With the exact denoiser of N(mu, Sigma) data the bound is below the true log-density and nearly tight."""
    info = DataInfo(kind=DataKind.VECTOR, shape=(3,), mean=(0.0,) * 3, std=(1.0,) * 3)
    model = genzoo.create("ddpm", info, **SMOKE | {"timesteps": 1000})
    exact = gaussian_denoiser(model.schedule)
    model.denoiser = lambda labels=None, guidance=None, clip=True: lambda x, t: exact(x.double(), t).float()
    data = torch.distributions.MultivariateNormal(MU, SIGMA)
    torch.manual_seed(0)
    x = data.sample((2000,)).float()
    true = data.log_prob(x.double()).mean()
    bound = model.log_likelihood(x, steps=100)
    assert bound.kind == "lower_bound" and not bound.discrete
    gap = float(true - bound.values.double().mean())
    assert 0 < gap < 0.15, f"gap {gap:.4f} nats"
    coarse = float(true - model.log_likelihood(x, steps=10).values.double().mean())
    assert coarse > gap + 0.1  # a 10-step chain is a looser bound




# ----- network -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("side", [8, 16, 28, 32, 64])
@pytest.mark.parametrize("channels", [1, 3])
def test_unet_keeps_the_shape(side: int, channels: int) -> None:
    net = UNet((channels, side, side), width=8, channel_mult=(1, 2, 2, 2), num_res_blocks=1, attention_below=8,
               num_classes=10)
    x = torch.randn(2, channels, side, side)
    assert net(x, torch.tensor([0, 999]), torch.tensor([3, 10])).shape == x.shape


# ----- guidance and editing (an untrained model whose weights are perturbed so labels matter) --------------------
@pytest.fixture(scope="module")
def model() -> genzoo.GenerativeModel:
    torch.manual_seed(0)
    m = genzoo.create("ddpm", tiny_dataset(DataKind.IMAGE), **SMOKE)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return m.eval()


def test_guidance_zero_is_the_unconditional_model(model: genzoo.GenerativeModel) -> None:
    label = torch.tensor([7])
    unconditional = model.sample(6, seed=5, steps=8)
    guided0 = model.sample(6, seed=5, steps=8, labels=label, guidance=0.0)
    conditional = model.sample(6, seed=5, steps=8, labels=label)
    assert torch.allclose(guided0, unconditional, atol=1e-5)
    assert torch.allclose(model.sample(6, seed=5, steps=8, labels=label, guidance=1.0), conditional, atol=1e-5)
    assert (conditional - unconditional).abs().max() > 0.05
    assert model.nfe_per_sample("dpm", 8, guidance=3.0) == 16


def test_inpainting_keeps_known_pixels_exactly(model: genzoo.GenerativeModel) -> None:
    image = tiny_dataset(DataKind.IMAGE).split("val").x[:3]
    mask = torch.zeros(8, 8)
    mask[2:6, 1:5] = 1
    for sampler in ("ddpm", "ddim", "dpm"):
        out = model.inpaint(image, mask, seed=1, sampler=sampler, steps=10, resample=2)
        keep = (mask == 0).expand_as(image)
        assert torch.equal(out[keep], image[keep])
        assert not torch.equal(out[~keep], image[~keep])
    partial = model.inpaint(image, mask, seed=1, strength=0.5, steps=10)
    assert torch.equal(partial[keep], image[keep])


def test_bound_of_image_model_is_in_bits_per_dim_of_the_discrete_levels(model: genzoo.GenerativeModel) -> None:
    ll = model.log_likelihood(tiny_dataset(DataKind.IMAGE).split("val").x[:4])
    bpd = ll.bits_per_dim(model.data.dims)
    assert ll.discrete and ll.kind == "lower_bound" and torch.isfinite(bpd).all() and (bpd > 0).all()


def test_img2img_strength_controls_how_far_the_result_moves(model: genzoo.GenerativeModel) -> None:
    image = tiny_dataset(DataKind.IMAGE).split("val").x[:8]
    near = (model.img2img(image, 0.1, seed=0) - image).abs().mean()
    far = (model.img2img(image, 1.0, seed=0) - image).abs().mean()
    assert near < far


def test_bad_edit_inputs_are_clear_errors(model: genzoo.GenerativeModel) -> None:
    image = torch.rand(1, 1, 8, 8)
    with pytest.raises(GenzooError, match="empty"):
        model.inpaint(image, torch.zeros(8, 8))
    with pytest.raises(GenzooError, match="does not match"):
        model.inpaint(image, torch.ones(7, 8))
    with pytest.raises(GenzooError, match="shape"):
        model.inpaint(torch.rand(1, 3, 8, 8), torch.ones(8, 8))
    with pytest.raises(GenzooError, match="strength"):
        model.img2img(image, 1.5)


# ----- training, EMA and the CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ddpm") / "run"
    return genzoo.train("ddpm", tiny_dataset(DataKind.IMAGE), steps=4, out=out, seed=1, overrides=SMOKE, **FAST)


def test_ema_is_kept_resumed_and_used_by_default(run: Path, tmp_path: Path) -> None:
    assert (run / "last" / "ema.safetensors").exists()
    assert genzoo.load(run, checkpoint="last").provenance["weights"] == "ema"
    split = tmp_path / "split"
    genzoo.train("ddpm", tiny_dataset(DataKind.IMAGE), steps=2, out=split, seed=1, overrides=SMOKE, **FAST)
    genzoo.train("ddpm", tiny_dataset(DataKind.IMAGE), steps=4, out=split, seed=1, overrides=SMOKE, resume=True,
                 **FAST)
    whole_ema, split_ema = (load_tensors(r / "last" / "ema.safetensors") for r in (run, split))
    raw = load_tensors(run / "last" / "model.safetensors")
    assert all(torch.equal(whole_ema[k], split_ema[k]) for k in whole_ema)
    assert any(not torch.equal(whole_ema[k], raw[k]) for k in whole_ema)


def _png(path: Path, array: np.ndarray) -> Path:
    Image.fromarray(array.astype(np.uint8)).save(path)
    return path


def test_edit_cli_inpaints_a_png_and_reports_bad_inputs(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    pixels = (np.arange(64).reshape(8, 8) * 4).astype(np.uint8)
    image = _png(tmp_path / "in.png", pixels)
    mask_array = np.zeros((8, 8), np.uint8)
    mask_array[3:6, 3:6] = 255
    mask = _png(tmp_path / "mask.png", mask_array)
    out = tmp_path / "out.png"
    runner = CliRunner()
    result = runner.invoke(app, ["edit", str(run), "--image", str(image), "--mask", str(mask), "--out", str(out),
                                 "--steps", "5", "--resample", "1"])
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out))
    assert written.shape == (8, 8) and np.array_equal(written[mask_array == 0], pixels[mask_array == 0])

    result = runner.invoke(app, ["edit", str(run), "--image", str(image), "--strength", "0.3", "--out", str(out)])
    assert result.exit_code == 0, result.output

    big = _png(tmp_path / "big.png", np.zeros((16, 16), np.uint8))
    empty = _png(tmp_path / "empty.png", np.zeros((8, 8), np.uint8))
    colour = _png(tmp_path / "colour.png", np.random.default_rng(0).integers(0, 255, (8, 8, 3)))
    for args, message in [(["--image", str(big), "--mask", str(mask)], "must match"),
                          (["--image", str(image), "--mask", str(empty)], "empty"),
                          (["--image", str(colour), "--mask", str(mask)], "colour"),
                          (["--image", str(image)], "strength")]:
        result = runner.invoke(app, ["edit", str(run), *args, "--out", str(out)])
        assert result.exit_code != 0 and isinstance(result.exception, GenzooError), args
        assert message in str(result.exception), (message, str(result.exception))


def test_resized_inputs_come_out_at_the_model_size(run: Path, tmp_path: Path) -> None:
    model = genzoo.load(run)
    image = _png(tmp_path / "in.png", np.full((32, 32), 200, np.uint8))
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :4] = 255  # outpaint a strip on the left
    out = edit(model, image, _png(tmp_path / "m.png", mask), steps=4, resample=1)
    assert out.shape == (1, 1, 8, 8)
    assert torch.allclose(out[0, 0, :, 1:], torch.full((8, 7), 200 / 255))
    assert math.isfinite(float(out.sum()))
