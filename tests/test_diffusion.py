"""Diffusion family: forward process, samplers against an exact Gaussian denoiser, guidance, editing, bound, CLI."""

from __future__ import annotations

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
from genzoo.models.diffusion.likelihood import (
    DECODER_SIGMAS,
    decoder_step,
    ode_log_likelihood,
    variational_bound,
)
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
from genzoo.nn.discrete import discretized_gaussian_log_prob, level_index
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


def gaussian_denoiser(schedule: Schedule, mu: Tensor = MU, sigma: Tensor = SIGMA):
    """E[x_0 | x_t] = mu + Sigma alpha (alpha^2 Sigma + sigma^2 I)^-1 (x_t - alpha mu) for x_0 ~ N(mu, Sigma); the
    step t an int, or a tensor of one step per row."""
    alpha, noise = (v[:, None, None] for v in schedule.alpha_sigma(torch.arange(schedule.steps)))
    eye = torch.eye(len(mu), dtype=torch.float64)
    gains = sigma @ torch.linalg.inv(alpha**2 * sigma + noise**2 * eye) * alpha  # (T, d, d)

    def denoise(x: Tensor, t: int | Tensor) -> Tensor:
        if isinstance(t, int):
            return mu + (x - alpha[t, 0] * mu) @ gains[t].T
        t = t.cpu()
        return mu + torch.einsum("nij,nj->ni", gains[t], x - alpha[t, 0] * mu)

    return denoise


def exact_law(sampler, denoiser, dims: int, callbacks=lambda n: ()) -> tuple[Tensor, Tensor]:
    """Mean and covariance of what ``sample_loop`` draws when the denoiser is affine (Gaussian data): the output is
    then affine in the starting noise and in every noise draw, so running it on the zero input and on each unit
    input, one batch row each, gives the map itself -- the law exactly, with no Monte Carlo error."""
    calls = 0

    def count(shape: tuple[int, ...]) -> Tensor:
        nonlocal calls
        calls += 1
        return torch.zeros(shape, dtype=torch.float64)

    sample_loop(denoiser, sampler, torch.zeros(1, dims, dtype=torch.float64), count, callbacks(1))
    rows = 1 + dims * (1 + calls)

    def unit(k: int) -> Tensor:  # input k (0: the start, k: the k-th noise draw) set to the identity in its rows
        z = torch.zeros(rows, dims, dtype=torch.float64)
        z[1 + dims * k : 1 + dims * (k + 1)] = torch.eye(dims, dtype=torch.float64)
        return z

    drawn = itertools.count(1)
    out = sample_loop(denoiser, sampler, unit(0), lambda shape: unit(next(drawn)), callbacks(rows))
    assert next(drawn) == calls + 1, "the sampler drew a different number of noise tensors"
    columns = out[1:] - out[0]
    return out[0], columns.T @ columns


def _law_error(name: str, eta: float | None, steps: int, mu: Tensor, sigma: Tensor) -> tuple[float, float]:
    schedule = Schedule.make("cosine", 1000)
    sampler = make_sampler(name, eta)
    sampler.set_timesteps(schedule, steps)
    mean, cov = exact_law(sampler, gaussian_denoiser(schedule, mu, sigma), len(mu))
    return float((mean - mu).abs().max()), float((cov - sigma).norm() / sigma.norm())


UNIT = torch.eye(3, dtype=torch.float64)


@pytest.mark.parametrize(("name", "eta", "steps", "unit", "mean_tol", "cov_tol"), [
    ("ancestral", None, 10, True, 1e-6, 1e-4),  # unit variance: its variance is the true one, exact at any step
    ("ancestral", None, 1000, False, 1e-6, 1e-3),
    ("ddim", 1.0, 1000, False, 1e-6, 0.008),  # first order: 0.005 at 1000 steps, 0.05 at 100
    ("ddim", 0.0, 1000, False, 1e-4, 0.004),
    ("dpm", None, 20, False, 0.02, 0.03),
])
def test_every_sampler_has_the_gaussian_law_with_the_exact_denoiser(name: str, eta: float | None, steps: int,
                                                                     unit: bool, mean_tol: float,
                                                                     cov_tol: float) -> None:
    """Exact mean and covariance of each sampler's output (no sampling noise), so tolerances are the samplers'
    own discretisation error: a sampler adding 0.9 times the right noise is off by 19%."""
    mean_error, cov_error = _law_error(name, eta, steps, MU, UNIT if unit else SIGMA)
    assert mean_error < mean_tol and cov_error < cov_tol, (mean_error, cov_error)


def test_ddim_with_noise_converges_at_first_order() -> None:
    coarse, fine = (_law_error("ddim", 1.0, steps, MU, SIGMA)[1] for steps in (100, 1000))
    assert 7 < coarse / fine < 12, (coarse, fine)


def test_ddim_error_shrinks_at_first_order_and_dpm_beats_it() -> None:
    """Exact covariance errors (no sampling noise): DDIM eta = 0 shrinks 4x per 4x steps, DPM-Solver++ at 10
    steps is over 3x closer than DDIM at 10."""
    ddim = [_law_error("ddim", None, steps, MU, SIGMA)[1] for steps in (10, 40, 160)]
    assert 3.5 < ddim[0] / ddim[1] < 4.5 and 3.5 < ddim[1] / ddim[2] < 4.5, ddim
    assert _law_error("dpm", None, 10, MU, SIGMA)[1] < ddim[0] / 3


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


#: (mean, standard deviation) tolerance of each sampler at its default steps on N(m, s^2 I): ancestral is exact up
#: to its start at N(0, I) (6e-4), ddim at 50 steps 2.8% off, dpm at 20 1.1%
DEFAULT_STEP_TOLERANCE = {"ancestral": (1e-6, 2e-3), "ddim": (1e-4, 0.035), "dpm": (0.02, 0.015)}


@pytest.mark.parametrize("name", [*SAMPLERS, *ALIASES])
def test_every_registered_sampler_draws_a_gaussian_at_its_default_steps(name: str) -> None:
    """Through the registry (aliases too), on N(m, s^2 I) with its exact denoiser: the exact law of the output
    has mean m and standard deviation s within each sampler's discretisation error, and no correlations."""
    schedule = Schedule.make("cosine", 1000)
    sampler = make_sampler(name)
    sampler.set_timesteps(schedule)
    mean, cov = exact_law(sampler, isotropic_denoiser(schedule), 4)
    mean_tol, std_tol = DEFAULT_STEP_TOLERANCE[sampler.name]
    assert float((mean - M_ISO).abs().max()) < mean_tol
    assert float((cov.diagonal().sqrt() / S_ISO - 1).abs().max()) < std_tol
    assert torch.equal(cov, torch.diag(cov.diagonal()))


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


# ----- inpainting: the Gaussian conditional ------------------------------------------------------------------------
X_KNOWN = torch.tensor([1.6, 0.0, 0.0], dtype=torch.float64)  # the first coordinate is known, ~1.7 sd above its mean
KEEP = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)


def gaussian_conditional(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Law of x_u given x_k = X_KNOWN[k]: mu_u + S_uk S_kk^-1 (x_k - mu_k), S_uu - S_uk S_kk^-1 S_ku."""
    k, u = [0], [1, 2]
    gain = sigma[u][:, k] @ torch.linalg.inv(sigma[k][:, k])
    return mu[u] + gain @ (X_KNOWN[k] - mu[k]), sigma[u][:, u] - gain @ sigma[k][:, u]


def test_inpainting_draws_the_gaussian_conditional() -> None:
    """RePaint with the exact denoiser: the unknown coordinates' exact law approaches the Schur complement as
    steps are resampled (sampling them unconditionally would be 0.46 off in the mean, 0.5 in covariance)."""
    schedule = Schedule.make("cosine", 1000)
    want_mean, want_cov = gaussian_conditional(MU, SIGMA)
    errors = {}
    for rounds in (1, 5):
        sampler = make_sampler("ancestral")
        sampler.set_timesteps(schedule, 100)
        mean, cov = exact_law(sampler, gaussian_denoiser(schedule, MU, SIGMA), 3,
                              lambda n, u=rounds: [Known(X_KNOWN.expand(n, 3), KEEP.expand(n, 3)), Resample(u)])
        assert mean[0] == X_KNOWN[0] and cov[0].abs().max() == 0  # the known value, exactly
        errors[rounds] = (float((mean[1:] - want_mean).abs().max()),
                          float((cov[1:, 1:] - want_cov).norm() / want_cov.norm()))
    assert errors[5][0] < 0.03 and errors[5][1] < 0.02, errors
    assert errors[1][0] > 3 * errors[5][0], errors  # resampling is what harmonises


def test_ddpm_edit_draws_the_gaussian_conditional(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's inpainting (its Known and Resample callbacks, end to end) on 3-pixel images whose network
    units are N(mu / 4, Sigma / 16), with the exact denoiser: conditional mean and covariance by Monte Carlo."""
    info = DataInfo(kind=DataKind.IMAGE, shape=(1, 1, 3))
    model = genzoo.create("ddpm", info, denoiser="dit", patch=1, dit_width=8, dit_depth=1, dit_heads=1)
    mu, sigma = MU / 4, SIGMA / 16
    exact = gaussian_denoiser(model.schedule, mu, sigma)
    monkeypatch.setattr(model, "denoiser", lambda labels=None, guidance=None, clip=True:
                        lambda x, t: exact(x.double().flatten(1), t).float().view(x.shape))
    n = 8000
    known = (X_KNOWN / 4 + 1) / 2  # data units of the network value X_KNOWN / 4
    image = known.float().view(1, 1, 1, 3).expand(n, 1, 1, 3)
    out = model.inpaint(image, torch.tensor([[[0.0, 1.0, 1.0]]]), seed=0, steps=50, resample=5)
    z = (out.double().flatten(1) * 2 - 1)[:, 1:]  # network units
    want_mean, want_cov = gaussian_conditional(MU, SIGMA)
    assert torch.allclose(z.mean(0), want_mean / 4, atol=0.03 / 4 + 5 * 0.15 / n**0.5)
    assert float((torch.cov(z.T) - want_cov / 16).norm() / (want_cov / 16).norm()) < 0.15  # unconditional: 0.6


# ----- the discrete decoder ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [2, 17, 256])
def test_discrete_decoder_probabilities_sum_to_one_and_are_the_bins_gaussian_mass(levels: int) -> None:
    """Over k = 0 .. L-1 the probabilities sum to one for any mean and scale (bins of width 2/(L-1), the edge
    bins open); an interior bin has exactly the Gaussian mass of [c_k - 1/(L-1), c_k + 1/(L-1)]."""
    gen = torch.Generator().manual_seed(0)
    mean = torch.cat([torch.rand(20, generator=gen, dtype=torch.float64) * 3 - 1.5, torch.tensor([-1.0, 1.0, 0.0])])
    std = torch.exp(torch.rand(23, generator=gen, dtype=torch.float64) * 8 - 6)  # 0.0025 .. 7
    k = torch.arange(levels, dtype=torch.float64)[:, None]
    log_p = discretized_gaussian_log_prob(k, mean, std, levels)
    assert torch.allclose(log_p.logsumexp(0), torch.zeros(23, dtype=torch.float64), atol=1e-9)
    k0 = (levels - 1) // 2  # an interior bin (two levels have none: the lower, open one)
    centre = 2 * k0 / (levels - 1) - 1
    normal = torch.distributions.Normal(mean, std)
    upper = normal.cdf(torch.tensor(centre + 1 / (levels - 1)))
    mass = upper - (normal.cdf(torch.tensor(centre - 1 / (levels - 1))) if k0 > 0 else 0)
    finite = mass > 1e-12
    assert torch.allclose(log_p[k0][finite], mass[finite].log(), rtol=1e-6, atol=1e-12)
    assert torch.equal(level_index(2 * k[:, 0] / (levels - 1) - 1 + 0.4 / (levels - 1), levels), k[:, 0])


def test_decoder_reads_x_t_where_the_levels_are_still_apart() -> None:
    schedule = Schedule.make("cosine", 1000)
    sigma = (1 - schedule.abar).sqrt()
    for levels in (2, 17):
        t = decoder_step(schedule, levels)
        assert sigma[t] <= 1 / (levels - 1) / DECODER_SIGMAS < sigma[t + 1]
    assert decoder_step(schedule, None) == 0 and decoder_step(schedule, 256) == 0  # the schedule starts above it


# ----- likelihood: bound and ODE against exact answers ---------------------------------------------------------------
def _quantised_gaussian(levels: int = 17, n: int = 2000):
    """Independent 4-d data on the levels, P(k) = Gaussian mass of bin k; its exact denoiser E[x_0 | x_t] (a
    posterior over the levels per coordinate) and exact log P(x)."""
    schedule = Schedule.make("cosine", 1000)
    centres = torch.linspace(-1, 1, levels, dtype=torch.float64)
    mu, sd = torch.tensor([0.1, -0.4, 0.3, 0.0], dtype=torch.float64), torch.tensor([0.4, 0.3, 0.5, 0.25],
                                                                                     dtype=torch.float64)
    log_p = discretized_gaussian_log_prob(torch.arange(levels, dtype=torch.float64)[:, None], mu, sd, levels).T

    def x0_hat(x: Tensor, t: Tensor) -> Tensor:
        a, s = (v[:, None, None] for v in schedule.alpha_sigma(t.cpu()))
        logits = log_p - (x.double()[:, :, None] - a * centres) ** 2 / (2 * s * s)
        return (logits.softmax(-1) * centres).sum(-1)

    k = torch.multinomial(log_p.exp(), n, replacement=True, generator=torch.Generator().manual_seed(0)).T
    return schedule, x0_hat, centres[k], log_p.gather(1, k.T).T.sum(1)


def test_bound_is_just_below_the_exact_log_probability_of_quantised_gaussian_data() -> None:
    """With the exact denoiser the T-step bound sits 0.22 nats (2%) below the exact log P (entropy 9.6 nats);
    a decoder with the wrong bins, a lost factor or a wrong weight moves it by far more."""
    schedule, x0_hat, x0, exact = _quantised_gaussian()
    bound = variational_bound(x0, x0_hat, schedule, 17, 20, torch.Generator().manual_seed(1))
    gap = float(exact.mean() - bound.values.mean())
    assert 0.1 < gap < 0.3 and bound.stderr() < 0.04, (gap, bound.stderr())


def test_ode_estimate_converges_to_the_exact_log_probability() -> None:
    schedule, x0_hat, x0, exact = _quantised_gaussian(n=500)
    gaps = [float(exact.mean() - ode_log_likelihood(x0, x0_hat, schedule, 17, steps, 1,
                                                    torch.Generator().manual_seed(1)).values.mean())
            for steps in (20, 40)]
    assert abs(gaps[1]) < 0.08 and abs(gaps[0]) > abs(gaps[1]), gaps


def _vector_model(monkeypatch: pytest.MonkeyPatch, mean: float = 0.0, std: float = 1.0) -> genzoo.GenerativeModel:
    """A ddpm on 3-d vectors whose network units are N(MU, SIGMA), with the exact denoiser in place of its net."""
    info = DataInfo(kind=DataKind.VECTOR, shape=(3,), mean=(mean,) * 3, std=(std,) * 3)
    model = genzoo.create("ddpm", info, **SMOKE | {"timesteps": 1000, "bound_steps": 100})
    exact = gaussian_denoiser(model.schedule)
    monkeypatch.setattr(model, "_x0_hat", lambda labels: lambda x, t: exact(x.double(), t))
    return model


def test_bound_and_ode_of_gaussian_vectors_match_the_exact_density(monkeypatch: pytest.MonkeyPatch) -> None:
    """Continuous data: the bound sits below the exact log-density within its Monte Carlo error and 0.05 nats,
    the ODE estimate within 0.15 nats; in data units (mean 1, scale 2) both move by exactly -3 log 2."""
    model = _vector_model(monkeypatch)
    data = torch.distributions.MultivariateNormal(MU, SIGMA)
    torch.manual_seed(0)
    x = data.sample(torch.Size([1000]))
    true = float(data.log_prob(x).mean())
    bound = model.log_likelihood(x.float())
    assert bound.kind == "lower_bound" and not bound.discrete and "standard error" in bound.method
    estimate, _ = model.likelihood_estimate(x.float(), None, "bound")
    gap = true - float(estimate.values.mean())
    assert -3 * estimate.stderr() < gap < 0.05, (gap, estimate.stderr())
    ode = model.log_likelihood(x.float(), method="ode")
    assert ode.kind == "estimate" and abs(true - float(ode.values.double().mean())) < 0.15  # 40 Heun steps
    scaled = _vector_model(monkeypatch, mean=1.0, std=2.0)
    for method in ("bound", "ode"):
        shifted = scaled.log_likelihood(1.0 + 2.0 * x[:100].float(), method=method).values.double()
        plain = model.log_likelihood(x[:100].float(), method=method).values.double()
        assert torch.allclose(shifted, plain - 3 * math.log(2.0), atol=1e-3), method
    with pytest.raises(GenzooError, match="unknown likelihood method"):
        model.log_likelihood(x[:2].float(), method="exact")  # type: ignore[arg-type]


def test_bound_estimate_is_unbiased_and_its_standard_error_is_calibrated() -> None:
    """50 independent 3-stratum estimates for each of 200 examples scatter as their reported variances say (pooled
    over the examples: within 10%), and average to the 60-stratum estimate within their standard errors."""
    schedule = Schedule.make("cosine", 1000)
    exact = gaussian_denoiser(schedule)
    x0_hat = lambda x, t: exact(x.double(), t)  # noqa: E731
    torch.manual_seed(0)
    x = torch.distributions.MultivariateNormal(MU, SIGMA).sample(torch.Size([200]))
    repeats = 50
    coarse = variational_bound(x.repeat(repeats, 1), x0_hat, schedule, None, 3, torch.Generator().manual_seed(1))
    values, reported = coarse.values.view(repeats, 200), coarse.variance.view(repeats, 200)
    ratio = float(values.var(0).mean() / reported.mean())
    assert 0.9 < ratio < 1.1, ratio
    fine = variational_bound(x, x0_hat, schedule, None, 60, torch.Generator().manual_seed(2))
    assert abs(float(values.mean() - fine.values.mean())) < 4 * math.hypot(coarse.stderr(), fine.stderr())


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
    result = runner.invoke(app, ["edit", str(run), "--image", str(image), "--out", str(out)])  # img2img's strength
    assert result.exit_code == 0, result.output

    big = _png(tmp_path / "big.png", np.zeros((16, 16), np.uint8))
    empty = _png(tmp_path / "empty.png", np.zeros((8, 8), np.uint8))
    colour = _png(tmp_path / "colour.png", np.random.default_rng(0).integers(0, 255, (8, 8, 3)))
    for args, message in [(["--image", str(big), "--mask", str(mask)], "must match"),
                          (["--image", str(image), "--mask", str(empty)], "empty"),
                          (["--image", str(colour), "--mask", str(mask)], "colour")]:
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
