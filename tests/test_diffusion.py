"""Diffusion family: forward process, samplers against an exact Gaussian denoiser, guidance, editing, bound, CLI."""

from __future__ import annotations

import functools
import itertools
import math
from pathlib import Path
from typing import get_args

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
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import load_tensors
from genzoo.models.diffusion.samplers import (
    ALIASES,
    DDIM,
    SAMPLERS,
    Ancestral,
    DPMSolverPP,
    Known,
    Resample,
    SamplerName,
    make_sampler,
    reverse_variances,
    sample_loop,
)
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
    solver = make_sampler(sampler)
    solver.set_timesteps(schedule, steps)
    return sample_loop(gaussian_denoiser(schedule), solver, noise((n, 3)), noise)


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


# ----- sampler objects: registry, grids, single steps, state ------------------------------------------------------
M_ISO, S_ISO = torch.tensor([0.5, -0.3, 0.2, 0.0], dtype=torch.float64), 0.6


def isotropic_denoiser(schedule: Schedule):
    """E[x_0 | x_t] = m + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha m) for x_0 ~ N(m, s^2 I)."""

    def denoise(x: Tensor, t: int) -> Tensor:
        a, sg = (float(v) for v in schedule.alpha_sigma(t))
        return M_ISO + a * S_ISO**2 / (a * a * S_ISO**2 + sg * sg) * (x - a * M_ISO)

    return denoise


def _noise(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda shape: torch.randn(*shape, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("name", [*SAMPLERS, *ALIASES])
def test_every_registered_sampler_draws_a_gaussian_at_its_default_steps(name: str) -> None:
    """Through the registry (aliases too), on N(m, s^2 I) with its exact denoiser: mean within 5 standard errors,
    standard deviation within 4% (the default grids' discretisation error is 1-3%, sampling noise 0.3%)."""
    schedule, n = Schedule.make("cosine", 1000), 20_000
    sampler = make_sampler(name)
    sampler.set_timesteps(schedule)
    noise = _noise(0)
    out = sample_loop(isotropic_denoiser(schedule), sampler, noise((n, 4)), noise)
    assert (out.mean(0) - M_ISO).abs().max() < 5 * S_ISO / math.sqrt(n)
    assert abs(float(out.std(0).mean()) / S_ISO - 1) < 0.04
    assert float((out.std(0) / S_ISO - 1).abs().max()) < 0.05


def test_registry_names_aliases_and_eta() -> None:
    assert set(SAMPLERS) == {"ancestral", "ddim", "dpm"} and ALIASES == {"ddpm": "ancestral"}
    assert set(get_args(SamplerName)) == set(SAMPLERS) | set(ALIASES)  # what DDPM.SampleOptions accepts
    assert type(make_sampler("ddpm")) is Ancestral and type(make_sampler("ancestral")) is Ancestral
    assert type(make_sampler("ddim")) is DDIM and type(make_sampler("dpm")) is DPMSolverPP
    assert all(SAMPLERS[name].name == name for name in SAMPLERS)
    assert make_sampler("dpm") is not make_sampler("dpm")  # state is per object
    assert (make_sampler("ddpm").eta, make_sampler("ddim").eta, make_sampler("dpm").eta) == (1.0, 0.0, None)
    assert make_sampler("ddim", eta=0.3).eta == 0.3 and make_sampler("ddpm", eta=0.0).eta == 0.0
    with pytest.raises(GenzooError, match=r"eta applies to the ancestral .* ddim samplers, not dpm"):
        make_sampler("dpm", eta=0.0)
    with pytest.raises(GenzooError, match="eta"):
        make_sampler("ddim", eta=-0.5)
    with pytest.raises(GenzooError) as err:
        make_sampler("euler")
    assert "euler" in str(err.value) and all(name in str(err.value) for name in [*SAMPLERS, *ALIASES])


@pytest.mark.parametrize("name", list(SAMPLERS))
@pytest.mark.parametrize("schedule_name", ["cosine", "linear"])
def test_set_timesteps_grids_decrease_to_zero_with_the_requested_length(name: str, schedule_name: str) -> None:
    schedule = Schedule.make(schedule_name, 1000)  # type: ignore[arg-type]
    sampler = make_sampler(name)
    for steps in (None, 1, 2, 10, 1000):
        for strength in (1.0, 0.5, 0.1):
            grid = sampler.set_timesteps(schedule, steps, strength)
            asked = max(1, round((steps or sampler.default_steps or 1000) * strength))
            start = round(strength * 999)
            assert grid == sampler.timesteps and all(isinstance(t, int) for t in grid)
            assert all(a > b for a, b in itertools.pairwise(grid)), (steps, strength, grid)
            merges = sampler.spacing == "logsnr" and asked > 20  # log-SNR points may round to one step near t = 0
            assert len(grid) <= asked if merges else len(grid) == asked
            assert grid[-1] == 0 or asked == 1  # one point: a single step from there to clean data
            assert grid[0] == start if sampler.spacing == "time" else grid[0] <= start  # log-SNR: from the floor
            assert len(sampler.levels) == len(grid) + 1 and sampler.levels[-1] == (1.0, 0.0)
            assert sampler.levels[0] == tuple(float(v) for v in schedule.alpha_sigma(grid[0]))
    lam = schedule.logsnr()[sampler.set_timesteps(schedule, 10)]
    spread = (lam[1:] - lam[:-1]) / (lam[-1] - lam[0]) * 9  # 1 everywhere for a grid even in log-SNR
    assert bool((spread - 1).abs().max() < 0.3) == (sampler.spacing == "logsnr")
    assert len(make_sampler("ddpm").set_timesteps(schedule)) == 1000
    assert len(make_sampler("ddim").set_timesteps(schedule)) == 50
    assert len(make_sampler("dpm").set_timesteps(schedule)) == 20
    with pytest.raises(GenzooError, match="steps"):
        sampler.set_timesteps(schedule, 0)
    with pytest.raises(GenzooError, match="strength"):
        sampler.set_timesteps(schedule, 10, strength=0.0)
    with pytest.raises(GenzooError, match="set_timesteps"):
        sample_loop(isotropic_denoiser(schedule), make_sampler(name), torch.zeros(2, 4), _noise(0))


def _no_noise(shape: tuple[int, ...]) -> Tensor:
    raise AssertionError("a deterministic sampler drew noise")


def test_single_steps_match_the_formulas() -> None:
    """One step from t to s with a fixed x_0 estimate: DDIM eta = 0 is deterministic, eta = 1 and ancestral have the
    forward posterior's mean; ancestral adds c_0^2 sigma_t^2 to the posterior variance; the last step returns D."""
    schedule = Schedule.make("cosine", 1000)
    x, d = torch.tensor([[0.7, -1.2]], dtype=torch.float64), torch.tensor([[0.2, -0.4]], dtype=torch.float64)
    zeros = lambda shape: torch.zeros(shape, dtype=torch.float64)  # noqa: E731
    ones = lambda shape: torch.ones(shape, dtype=torch.float64)  # noqa: E731
    ddim0, ddim1, ancestral = make_sampler("ddim"), make_sampler("ddim", eta=1.0), make_sampler("ddpm")
    for sampler in (ddim0, ddim1, ancestral):
        sampler.set_timesteps(schedule, 10)
    t, s = ddim0.timesteps[3], ddim0.timesteps[4]
    abar_t, abar_s = float(schedule.abar[t]), float(schedule.abar[s])
    beta = 1 - abar_t / abar_s
    mean = (math.sqrt(abar_s) * beta * d + math.sqrt(abar_t / abar_s) * (1 - abar_s) * x) / (1 - abar_t)
    posterior = (1 - abar_s) / (1 - abar_t) * beta
    c0 = math.sqrt(abar_s) * beta / (1 - abar_t)
    eps = (x - math.sqrt(abar_t) * d) / math.sqrt(1 - abar_t)
    assert torch.allclose(ddim0.step(x, d, 3, _no_noise), math.sqrt(abar_s) * d + math.sqrt(1 - abar_s) * eps)
    for sampler, variance in ((ddim1, posterior), (ancestral, posterior + c0**2 * (1 - abar_t))):
        low, high = sampler.step(x, d, 3, zeros), sampler.step(x, d, 3, ones)
        assert torch.allclose(low, mean), sampler
        assert torch.allclose(high - low, torch.full_like(x, math.sqrt(variance))), sampler
    assert math.isclose(float(reverse_variances(abar_t, abar_s)[1]), posterior + c0**2 * (1 - abar_t))
    for name in SAMPLERS:
        sampler = make_sampler(name)
        last = len(sampler.set_timesteps(schedule, 10)) - 1
        assert torch.equal(sampler.step(x, d, last, _no_noise), d), name


def test_dpm_solver_is_second_order_and_set_timesteps_resets_its_state() -> None:
    """On the same log-SNR grid DPM-Solver++ 2M is far closer than first-order DDIM (the same first step), and a
    reused solver gives exactly what a fresh one gives."""
    schedule = Schedule.make("cosine", 1000)
    denoise = isotropic_denoiser(schedule)
    dpm, ddim = make_sampler("dpm"), make_sampler("ddim")
    dpm.set_timesteps(schedule, 10)
    ddim.timesteps, ddim.levels = dpm.timesteps, dpm.levels
    errors = {}
    for sampler in (dpm, ddim):
        noise = _noise(1)
        out = sample_loop(denoise, sampler, noise((20_000, 4)), noise)
        errors[sampler.name] = float((out.std(0) / S_ISO - 1).abs().max())
    assert errors["dpm"] < errors["ddim"] / 3, errors
    x, noise = torch.randn(50, 4, dtype=torch.float64), _noise(2)
    first = sample_loop(denoise, dpm, x, noise)
    dpm.set_timesteps(schedule, 10)
    fresh = make_sampler("dpm")
    fresh.set_timesteps(schedule, 10)
    assert torch.equal(sample_loop(denoise, dpm, x, noise), first)
    assert torch.equal(sample_loop(denoise, fresh, x, noise), first)
    d0, d1 = denoise(x, dpm.timesteps[0]), denoise(x, dpm.timesteps[1])
    dpm.set_timesteps(schedule, 10)
    dpm.step(x, d0, 0, _no_noise)
    second = dpm.step(x, d1, 1, _no_noise)
    assert torch.equal(dpm.step(x, d1, 1, _no_noise), second)  # a redone step (Resample) extrapolates from i - 1 again
    one = make_sampler("dpm")
    one.set_timesteps(schedule, 10)
    ddim.set_timesteps(schedule, 10)
    ddim.timesteps, ddim.levels = one.timesteps, one.levels
    assert torch.allclose(one.step(x, denoise(x, one.timesteps[0]), 0, _no_noise),
                          ddim.step(x, denoise(x, one.timesteps[0]), 0, _no_noise))  # first order on the first step


def test_known_and_resample_callbacks_keep_values_and_redo_steps() -> None:
    schedule = Schedule.make("cosine", 200)
    denoise = isotropic_denoiser(schedule)
    calls: list[int] = []
    counting = lambda x, t: (calls.append(t), denoise(x, t))[1]  # noqa: E731
    keep = torch.zeros(100, 4, dtype=torch.float64)
    keep[:, :2] = 1
    known = Known(torch.full((100, 4), 0.25, dtype=torch.float64), keep)
    for name in SAMPLERS:
        sampler, noise = make_sampler(name), _noise(3)
        grid = sampler.set_timesteps(schedule, 8)
        calls.clear()
        out = sample_loop(counting, sampler, noise((100, 4)), noise, [known, Resample(3)])
        assert torch.equal(out[:, :2], known.x0[:, :2]) and not torch.equal(out[:, 2:], known.x0[:, 2:])
        assert calls == [t for t in grid[:-1] for _ in range(3)] + [0], name
    # without known values, a redone ancestral step jumps back to the marginal at t_i, so the law stays right
    sampler, noise = make_sampler("ancestral"), _noise(4)
    sampler.set_timesteps(schedule, 20)
    out = sample_loop(denoise, sampler, noise((20_000, 4)), noise, [Resample(3)])
    assert (out.mean(0) - M_ISO).abs().max() < 5 * S_ISO / math.sqrt(20_000)
    assert float((out.std(0) / S_ISO - 1).abs().max()) < 0.05
    with pytest.raises(GenzooError, match="resample"):
        Resample(0)


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
    assert model.cost(sampler="dpm", steps=8, guidance=3.0).nfe_per_sample == 16


def _count_network_evaluations(model: genzoo.GenerativeModel, n: int, run) -> float:
    """Network evaluations per example while ``run()`` runs (a guided call evaluates a doubled batch)."""
    seen: list[int] = []
    hook = model.net.register_forward_hook(lambda mod, args, out: seen.append(len(args[0])))
    try:
        run()
    finally:
        hook.remove()
    return sum(seen) / n


@pytest.mark.parametrize("options", [{}, {"sampler": "ddpm"}, {"sampler": "ancestral", "steps": 7},
                                     {"sampler": "ddim", "steps": 9, "eta": 0.5}, {"sampler": "dpm", "steps": 30},
                                     {"sampler": "dpm", "steps": 6, "guidance": 2.0}])
def test_cost_is_the_number_of_network_evaluations(model: genzoo.GenerativeModel, options: dict) -> None:
    labels = torch.tensor([3]) if "guidance" in options else None
    counted = _count_network_evaluations(model, 2, lambda: model.sample(2, seed=0, labels=labels, **options))
    assert model.cost(**options).nfe_per_sample == counted


def test_edit_cost_counts_resampling_and_strength(model: genzoo.GenerativeModel) -> None:
    image = tiny_dataset(DataKind.IMAGE).split("val").x[:2]
    mask = torch.zeros(8, 8)
    mask[2:5, 2:5] = 1
    for kwargs in ({"steps": 10, "resample": 3}, {"steps": 12, "resample": 2, "strength": 0.5, "sampler": "dpm"},
                   {"resample": 1, "sampler": "ddim"}, {}):
        counted = _count_network_evaluations(model, 2, lambda kw=kwargs: model.inpaint(image, mask, seed=0, **kw))
        assert model.edit_cost(True, **kwargs).nfe_per_sample == counted, kwargs
    counted = _count_network_evaluations(model, 2, lambda: model.img2img(image, 0.4, seed=0))
    assert model.edit_cost(False, 0.4, sampler="dpm").nfe_per_sample == counted
    assert model.edit_cost(True, steps=10, resample=3).nfe_per_sample == 10 + 9 * 2


def test_bad_sampling_options_are_config_errors_before_any_work(model: genzoo.GenerativeModel) -> None:
    options_class = type(model).SampleOptions
    assert set(options_class.model_fields) == {"sampler", "steps", "eta", "guidance"}
    assert all(field.description for field in options_class.model_fields.values())
    assert options_class().sampler == "dpm" and options_class(sampler="ddpm").sampler == "ddpm"
    calls: list[int] = []
    hook = model.net.register_forward_hook(lambda *_: calls.append(1))
    try:
        for options, message in [({"steps": 0}, "steps"), ({"sampler": "euler"}, "dpm"), ({"eta": -1.0}, "eta"),
                                 ({"sampler": "dpm", "eta": 0.5}, "eta applies"), ({"stepz": 5}, "stepz")]:
            generator = torch.Generator().manual_seed(0)
            state = generator.get_state()
            with pytest.raises(ConfigError, match=message):
                model.sample(2, generator=generator, **options)
            with pytest.raises(ConfigError, match=message):
                type(model).sample_options(**options)
            with pytest.raises(ConfigError, match=message):
                model.cost(**options)
            assert torch.equal(generator.get_state(), state)
        image = torch.rand(1, 1, 8, 8)
        with pytest.raises(ConfigError, match="dpm"):
            model.inpaint(image, torch.ones(8, 8), sampler="euler")
        with pytest.raises(ConfigError, match="steps"):
            model.img2img(image, 0.5, steps=0)
        with pytest.raises(GenzooError, match="resample"):
            model.inpaint(image, torch.ones(8, 8), resample=0)
    finally:
        hook.remove()
    assert not calls


def test_inpainting_keeps_known_pixels_exactly(model: genzoo.GenerativeModel) -> None:
    image = tiny_dataset(DataKind.IMAGE).split("val").x[:3]
    mask = torch.zeros(8, 8)
    mask[2:6, 1:5] = 1
    for sampler in ("ddpm", "ancestral", "ddim", "dpm"):
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
