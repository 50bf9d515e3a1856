"""Reverse-time samplers for a discrete Gaussian diffusion, independent of the network.

Every sampler sees the model only through a *denoiser* D(x_t, t) ~ E[x_0 | x_t] and walks a decreasing grid of
steps t_0 > t_1 > ... > t_{K-1}, then to clean data (alpha = 1, sigma = 0); one denoiser call per grid point, so
K network evaluations in all. Writing alpha, sigma for the current level and alpha', sigma' for the next:

* ``ddim`` (Song et al., 2021): eps^ = (x - alpha D) / sigma, noise level
  s = eta * (sigma' / sigma) * sqrt(1 - alpha^2 / alpha'^2), and x' = alpha' D + sqrt(sigma'^2 - s^2) eps^ + s z.
  eta = 0 is the deterministic probability-flow discretisation;
* ``ddpm``: ancestral sampling (Ho et al., 2020): the mean of ddim with eta = 1, i.e. of the forward posterior
  q(x' | x, x_0 = D) restricted to the grid, and the variance of :func:`reverse_variances`, which adds the
  uncertainty of D to the posterior variance (this is the model whose variational bound ``ddpm`` reports);
* ``dpm``: DPM-Solver++(2M) (Lu et al., 2022), a second-order multistep exponential integrator of the
  probability-flow ODE in the log-SNR lambda = log(alpha / sigma): with h = lambda' - lambda,
  x' = (sigma' / sigma) x - alpha' expm1(-h) D~, where D~ = (1 + 1/(2r)) D - 1/(2r) D_prev and r = h_prev / h
  (first order, D~ = D, on the first step and on the final step to sigma' = 0).

Inpainting (RePaint, Lugmayr et al., 2022): after each step the known pixels are replaced by a fresh forward
sample alpha' x_known + sigma' z, so at the end they are exactly x_known; with ``resample`` = U > 1 each step is
redone U times, jumping back by re-noising x' -> x between attempts so the generated region harmonises with the
known one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from genzoo.models.diffusion.schedules import Schedule, Spacing

SamplerName = Literal["ddpm", "ddim", "dpm"]
SAMPLERS: tuple[str, ...] = ("ddpm", "ddim", "dpm")
#: grid size each sampler uses when none is asked for (``None``: every step of the schedule)
DEFAULT_STEPS: dict[str, int | None] = {"ddpm": None, "ddim": 50, "dpm": 20}
#: grid each sampler is meant for: even in time for the first-order samplers, in log-SNR for the multistep solver
SPACING: dict[str, Spacing] = {"ddpm": "time", "ddim": "time", "dpm": "logsnr"}

#: D(x_t, t) -> estimate of x_0 (same shape as x_t)
Denoiser = Callable[[Tensor, int], Tensor]
#: draws standard normal noise of the given shape (so the caller controls the generator and device)
NoiseFn = Callable[[tuple[int, ...]], Tensor]


@dataclass
class Known:
    """Pixels to keep while sampling: clean values ``x0`` (network units) where ``keep`` is 1."""

    x0: Tensor
    keep: Tensor

    def impose(self, x: Tensor, alpha: float, sigma: float, noise: NoiseFn) -> Tensor:
        """Replace the known pixels of ``x`` by a forward sample at level (alpha, sigma)."""
        noisy = self.x0 * alpha + noise(tuple(x.shape)) * sigma if sigma > 0 else self.x0
        return self.keep * noisy + (1 - self.keep) * x


def solve(
    denoiser: Denoiser,
    schedule: Schedule,
    x: Tensor,
    times: list[int],
    *,
    sampler: SamplerName = "ddim",
    eta: float | None = None,
    noise: NoiseFn,
    known: Known | None = None,
    resample: int = 1,
) -> Tensor:
    """Integrate from ``x`` at step ``times[0]`` to clean data along the decreasing grid ``times``."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler '{sampler}' (use one of {', '.join(SAMPLERS)})")
    if eta is None:
        eta = 1.0 if sampler == "ddpm" else 0.0
    levels = [tuple(float(v) for v in schedule.alpha_sigma(t)) for t in times] + [(1.0, 0.0)]
    prev: tuple[Tensor, float] | None = None  # dpm: (D, h) of the previous step
    for i, t in enumerate(times):
        (alpha, sigma), (alpha_next, sigma_next) = levels[i], levels[i + 1]
        repeats = resample if known is not None and sigma_next > 0 else 1
        for attempt in range(repeats):
            x0 = denoiser(x, t)
            if sampler == "dpm":
                x_next, h = _dpm_step(x, x0, prev, alpha, sigma, alpha_next, sigma_next)
            else:
                extra = float(reverse_variances(alpha**2, alpha_next**2)[2] ** 2 * sigma**2) if sampler == "ddpm" else 0
                x_next, h = _ddim_step(x, x0, eta, alpha, sigma, alpha_next, sigma_next, noise, extra), 0.0
            if known is not None:
                x_next = known.impose(x_next, alpha_next, sigma_next, noise)
            if attempt < repeats - 1:  # jump back: x ~ q(x_t | x_next)
                ratio = alpha / alpha_next
                x_next = ratio * x_next + math.sqrt(max(0.0, 1 - ratio**2)) * noise(tuple(x.shape))
            x = x_next
        prev = (x0, h)
    return x


def reverse_variances(abar_t: Tensor | float, abar_s: Tensor | float) -> tuple[Tensor, Tensor, Tensor]:
    """Variances of one ancestral step t -> s (abar_s = 1: to clean data) and the weight of x_0 in its mean.

    The forward posterior q(x_s | x_t, x_0) = N(c_t x_t + c_0 x_0, b) has b = sigma_s^2 / sigma_t^2 (1 - abar_t /
    abar_s) and c_0 = alpha_s (1 - abar_t / abar_s) / sigma_t^2. Replacing x_0 by the denoiser's guess adds
    c_0^2 Var(x_0 | x_t) of uncertainty; the model step uses Var(x_0 | x_t) = sigma_t^2, its value for unit-variance
    Gaussian data, so p(x_s | x_t) = N(c_t x_t + c_0 D, b + c_0^2 sigma_t^2). It interpolates between Ho et al.'s
    two choices (b where noise dominates, beta_t where the data do) and keeps long respaced steps honest.
    """
    abar_t, abar_s = torch.as_tensor(abar_t, dtype=torch.float64), torch.as_tensor(abar_s, dtype=torch.float64)
    keep = 1 - abar_t / abar_s
    posterior = (1 - abar_s) / (1 - abar_t) * keep
    c0 = abar_s.sqrt() * keep / (1 - abar_t)
    return posterior, posterior + c0**2 * (1 - abar_t), c0


def _ddim_step(x: Tensor, x0: Tensor, eta: float, alpha: float, sigma: float, alpha_next: float,
               sigma_next: float, noise: NoiseFn, extra: float = 0.0) -> Tensor:
    """One ddim step; ``extra`` is variance added to the injected noise without changing the mean."""
    if sigma_next == 0:
        return x0
    eps = (x - alpha * x0) / sigma
    s = eta * (sigma_next / sigma) * math.sqrt(max(0.0, 1 - (alpha / alpha_next) ** 2))
    x_next = alpha_next * x0 + math.sqrt(max(0.0, sigma_next**2 - s**2)) * eps
    std = math.sqrt(s**2 + extra)
    return x_next + std * noise(tuple(x.shape)) if std > 0 else x_next


def _dpm_step(x: Tensor, x0: Tensor, prev: tuple[Tensor, float] | None, alpha: float, sigma: float,
              alpha_next: float, sigma_next: float) -> tuple[Tensor, float]:
    if sigma_next == 0:
        return x0, math.inf
    h = math.log(alpha_next / sigma_next) - math.log(alpha / sigma)
    d = x0
    if prev is not None and math.isfinite(prev[1]) and prev[1] > 0:
        r = prev[1] / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * prev[0]
    return (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * d, h
