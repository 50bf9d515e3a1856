"""Log-likelihood of a Gaussian diffusion, two ways: the variational bound over all T steps, and the
probability-flow ODE. Both see the network only as a denoiser x^_0(x_t, t) with one step t per example, and both
end in the same decoder p(x | x_{t_0}) = N(x^_0(x_{t_0}, t_0), sigma_{t_0}^2) integrated over x's quantisation bin
(a density for continuous data). The decoder reads x at step t_0 (:func:`decoder_step`), where the noise is a third
of a bin's half-width: the levels are still told apart there, and below it a network would have to learn to snap
to them exactly -- what the bound pays for most when t_0 = 0 (digits: 3.44 bits/dim instead of 2.28).

**Bound** (Ho et al., 2020; Kingma et al., 2021). The reverse step t -> t-1 is N(mean of q(x_{t-1} | x_t, x_0 =
x^_0), v_t); with the forward posterior's variance b_t and the weight c_t of x_0 in its mean
(``samplers.reverse_variances``),

    -log P(x) <= KL(q(x_{T-1} | x) || N(0, I)) - E log p(x | x_{t_0})
                 + sum_{t=t_0+1}^{T-1} [ D/2 (b_t/v_t - 1 - log(b_t/v_t)) + c_t^2 / (2 v_t) E ||x - x^_0(x_t, t)||^2 ].

``variance="ancestral"`` (the default) is the ``ancestral`` sampler's v_t = b_t + c_t^2 sigma_t^2, so the bound is
that of the model the ancestral sampler draws from on every step; ``"posterior"`` (v_t = b_t: DDIM with eta = 1)
leaves only the weighted denoising errors (SNR_{t-1} - SNR_t) / 2 ||x - x^_0||^2, looser for a network that is not
exact. Only the denoising errors need the network; their sum over t is estimated by stratified importance
sampling: t is drawn from p(t) proportional to g_t = c_t^2 / (2 v_t) sigma_t^2 (the term unit-variance Gaussian
data would give), through the inverse CDF of p at the stratified uniforms (h + U) / M, h = 0 .. M-1, twice per
stratum. The estimate (1/M) sum_h mean_j term(t_hj) / p(t_hj) is unbiased, and the two draws per stratum give an
unbiased estimate of its variance, sum_h (y_h1 - y_h2)^2 / 4 (the decoder term, also drawn twice, adds its own).

**Probability-flow ODE** (Song et al., 2021). In the coordinates y = x_t / alpha_t and rho = sigma_t / alpha_t the
deterministic sampler's ODE is dy/drho = (y - x^_0(alpha y, t)) / rho (the one DDIM with eta = 0 discretises), and
the log-density along a path changes by minus the divergence. Integrating from y = x_{t_0} / alpha_{t_0} up to
t = T-1, where x_t ~ N(0, I),

    log p(x_{t_0}) = log N(x_{T-1}; 0, I) + D log(sigma_{T-1} / sigma_{t_0}) - int tr(d x^_0 / d y) d log rho,

with Heun's method on a grid of steps even in log-SNR, and the trace by Hutchinson's estimator E[v^T J v]
(Rademacher probes v, a vector-Jacobian product each). The density of the continuous x_{t_0} becomes a probability
of x's levels by a Gaussian (variational) dequantization with the decoder: for x_{t_0} = alpha x + sigma z,

    log P(x) >= E_z [log p(x_{t_0}) + log p(x | x_{t_0}) - log q(x_{t_0} | x)],

one z per example. The ODE's density is exact only in the limit of small steps and many probes: the value is an
*estimate* of log P(x), not a bound.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from genzoo.models.diffusion.samplers import reverse_variances
from genzoo.models.diffusion.schedules import Schedule
from genzoo.nn.discrete import discretized_gaussian_log_prob, level_index

#: (x_t, per-example steps t) -> x^_0, in network units (any float dtype in, the network's out)
X0Fn = Callable[[Tensor, Tensor], Tensor]
ReverseVariance = Literal["posterior", "ancestral"]
#: the decoder reads x_t where a level's half-bin is this many noise standard deviations (:func:`decoder_step`)
DECODER_SIGMAS = 3.0


@dataclass
class Estimate:
    """Per-example log-likelihood estimates (nats) and the Monte Carlo variance of each."""

    values: Tensor
    variance: Tensor

    def stderr(self) -> float:
        """Standard error of the mean of ``values`` from the Monte Carlo draws (the examples held fixed)."""
        return float(self.variance.sum().sqrt() / len(self.variance))


def _sum(x: Tensor) -> Tensor:
    return x.flatten(1).sum(1)


def decoder_step(schedule: Schedule, levels: int | None) -> int:
    """t_0, the step whose noisy x_t the decoder reads: the last with sigma_t at most 1/DECODER_SIGMAS of a bin's
    half-width 1/(L-1) (there the levels are still told apart; below it a network would have to learn to snap to
    them exactly, which costs nats and gains nothing); 0 for continuous data."""
    if not levels:
        return 0
    sigma = (1 - schedule.abar).sqrt()
    return max(int((sigma <= 1.0 / (levels - 1) / DECODER_SIGMAS).sum()) - 1, 0)


def decoder_log_prob(x0: Tensor, x_t: Tensor, t: int, x0_hat: X0Fn, schedule: Schedule,
                     levels: int | None) -> Tensor:
    """log p(x | x_t) per example: N(x^_0(x_t, t), sigma_t^2) over x's bin, or its density (no levels)."""
    mean = x0_hat(x_t, torch.full((len(x0),), t, dtype=torch.long, device=x0.device)).double()
    std = (1 - schedule.abar[t]).sqrt().item()
    if levels:
        return _sum(discretized_gaussian_log_prob(level_index(x0, levels), mean, torch.tensor(std), levels))
    return _sum(-0.5 * ((x0 - mean) / std) ** 2 - math.log(std) - 0.5 * math.log(2 * math.pi))


def forward_sample(x0: Tensor, t: int, schedule: Schedule, generator: torch.Generator) -> Tensor:
    """x_t = alpha_t x_0 + sigma_t z, z drawn on the CPU from ``generator``."""
    noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
    return schedule.q_sample(x0, torch.full((len(x0),), t, dtype=torch.long, device=x0.device), noise)


def prior_kl(x0: Tensor, schedule: Schedule) -> Tensor:
    """KL(q(x_{T-1} | x_0) || N(0, I)) per example, for q = N(alpha x_0, sigma^2 I)."""
    a2 = schedule.abar[-1].item()
    return _sum(0.5 * (a2 * x0**2 + (1 - a2) - 1 - math.log1p(-a2)))


def step_weights(schedule: Schedule, variance: ReverseVariance, start: int = 0) -> tuple[Tensor, Tensor]:
    """For t = start + 1 .. T-1: the weight c_t^2 / (2 v_t) of ||x - x^_0||^2 and the per-dimension constant
    (b/v - 1 - log(b/v)) / 2 of the KL of step t -> t-1."""
    posterior, ancestral, c0 = reverse_variances(schedule.abar[start + 1:], schedule.abar[start:-1])
    v = posterior if variance == "posterior" else ancestral
    ratio = posterior / v
    return c0**2 / (2 * v), 0.5 * (ratio - 1 - torch.log(ratio))


def variational_bound(x0: Tensor, x0_hat: X0Fn, schedule: Schedule, levels: int | None, strata: int,
                      generator: torch.Generator, variance: ReverseVariance = "ancestral") -> Estimate:
    """The bound on log P(x) (module docstring) for x0 in network units on the levels' centres, its sum over t
    estimated with ``strata`` strata of two draws each, the decoder term with two draws (2 * strata + 2 network
    calls per example)."""
    n, dims = len(x0), x0[0].numel()
    start = decoder_step(schedule, levels)
    weight, constant = step_weights(schedule, variance, start)
    guess = weight * (1 - schedule.abar[start + 1:])  # g_t: the terms of unit-variance Gaussian data
    p = guess / guess.sum()
    cdf = p.cumsum(0)
    u = (torch.arange(strata, dtype=torch.float64) + torch.rand(n, 2, strata, generator=generator,
                                                                dtype=torch.float64)) / strata
    index = torch.searchsorted(cdf, u * cdf[-1]).clamp(max=len(p) - 1)  # t - start - 1
    terms = torch.empty(n, 2, strata, dtype=torch.float64)
    for j in range(2):
        for h in range(strata):
            i = index[:, j, h]
            t = (i + start + 1).to(x0.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=torch.float64).to(x0.device)
            error = _sum((x0 - x0_hat(schedule.q_sample(x0, t, noise), t).double()) ** 2).cpu()
            terms[:, j, h] = weight[i] * error / (strata * p[i])
    decoder = torch.stack([decoder_log_prob(x0, forward_sample(x0, start, schedule, generator), start, x0_hat,
                                            schedule, levels).cpu() for _ in range(2)])
    nll = prior_kl(x0, schedule).cpu() + dims * constant.sum() + terms.mean(1).sum(1) - decoder.mean(0)
    variance = ((terms[:, 0] - terms[:, 1]) ** 2 / 4).sum(1) + (decoder[0] - decoder[1]) ** 2 / 4
    return Estimate(-nll, variance)


def ode_grid(schedule: Schedule, steps: int, start: int = 0) -> list[int]:
    """Increasing steps start = t_0 < ... < t_N = T-1, even in log-SNR (at most ``steps`` + 1 points)."""
    lam = schedule.logsnr()
    targets = torch.linspace(float(lam[start]), float(lam[-1]), steps + 1, dtype=torch.float64)
    return sorted(dict.fromkeys(int((lam - target).abs().argmin()) for target in targets))


def ode_log_likelihood(x0: Tensor, x0_hat: X0Fn, schedule: Schedule, levels: int | None, steps: int, probes: int,
                       generator: torch.Generator) -> Estimate:
    """The PF-ODE estimate of log P(x) (module docstring): Heun on ``ode_grid(steps)`` (2 network calls per step
    and probe, each with a vector-Jacobian product), Hutchinson's trace with ``probes`` Rademacher probes;
    ``variance`` is the spread of the per-example estimates over the probes (zero with one probe)."""
    n, dims = len(x0), x0[0].numel()
    alpha, sigma = (v.to(torch.float64) for v in schedule.alpha_sigma(torch.arange(schedule.steps)))
    start = decoder_step(schedule, levels)
    first = forward_sample(x0, start, schedule, generator)
    log_q = _sum(-0.5 * ((first - alpha[start] * x0) / sigma[start]) ** 2 - 0.5 * math.log(2 * math.pi)) \
        - dims * sigma[start].log()
    dequantization = decoder_log_prob(x0, first, start, x0_hat, schedule, levels) - log_q
    grid = ode_grid(schedule, steps, start)
    runs = []
    for _ in range(probes):
        v = (torch.randint(0, 2, x0.shape, generator=generator) * 2 - 1).to(x0)
        runs.append(_ode_log_density(first / alpha[start], x0_hat, grid, alpha, sigma, v)
                    + dims * torch.log(sigma[-1] / sigma[start]))
    log_p = torch.stack(runs).cpu()
    spread = log_p.var(0) / probes if probes > 1 else torch.zeros(n, dtype=torch.float64)
    return Estimate(log_p.mean(0) + dequantization.cpu(), spread)


def _ode_log_density(y: Tensor, x0_hat: X0Fn, grid: list[int], alpha: Tensor, sigma: Tensor, v: Tensor) -> Tensor:
    """log N(x_{T-1}; 0, I) - int tr(d x^_0 / d y) ds along the ODE from y = x_{t=0} / alpha_0 (the rest of log p_0
    is the caller's). Heun steps in rho = sigma / alpha, along which y moves in a straight line where x^_0 stops
    changing (exact in the noise-dominated end); the trace, nearly constant in s = log rho, by the trapezoid in s."""
    rho = sigma / alpha

    def velocity(y: Tensor, t: int) -> tuple[Tensor, Tensor]:
        """(dy/drho, v^T (d x^_0 / d y) v) at step t."""
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            steps_t = torch.full((len(y),), t, dtype=torch.long, device=y.device)
            d = x0_hat(alpha[t] * y, steps_t)
            (vjp,) = torch.autograd.grad(d, y, v.to(d.dtype))
        return ((y - d.double()) / rho[t]).detach(), _sum(vjp.double() * v)

    trace = torch.zeros(len(y), dtype=torch.float64, device=y.device)
    g, tr = velocity(y, grid[0])
    for t, t_next in itertools.pairwise(grid):
        h = float(rho[t_next] - rho[t])
        g_next, tr_next = velocity(y + h * g, t_next)
        y = y + h / 2 * (g + g_next)
        trace = trace + float(torch.log(rho[t_next] / rho[t])) / 2 * (tr + tr_next)
        if t_next != grid[-1]:
            g, tr = velocity(y, t_next)
    end = alpha[grid[-1]] * y
    return _sum(-0.5 * end**2 - 0.5 * math.log(2 * math.pi)) - trace
