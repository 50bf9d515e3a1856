"""Reverse-time samplers for a discrete Gaussian diffusion, independent of the network.

Every sampler sees the model only through a *denoiser* D(x_t, t) ~ E[x_0 | x_t] and walks a decreasing grid of
steps t_0 > t_1 > ... > t_{K-1}, then to clean data (alpha = 1, sigma = 0); one denoiser call per grid point, so
K network evaluations in all. A sampler is an object with the shape of the schedulers of the diffusers library:
``set_timesteps(schedule, steps, strength)`` computes the grid (and forgets any state of a previous run), and
``step(x, x0_hat, i, noise)`` takes x at grid point i, given D's estimate x0_hat there, to grid point i + 1.
Writing alpha, sigma for the current level and alpha', sigma' for the next:

* ``ddim`` (:class:`DDIM`, Song et al., 2021): eps^ = (x - alpha D) / sigma, noise level
  s = eta * (sigma' / sigma) * sqrt(1 - alpha^2 / alpha'^2), and x' = alpha' D + sqrt(sigma'^2 - s^2) eps^ + s z.
  eta = 0 (the default) is the deterministic probability-flow discretisation;
* ``ancestral`` (:class:`Ancestral`, alias ``ddpm``; Ho et al., 2020): the mean of ddim with eta = 1, i.e. of the
  forward posterior q(x' | x, x_0 = D) restricted to the grid, and the variance of :func:`reverse_variances`, which
  adds the uncertainty of D to the posterior variance (this is the model whose variational bound ``ddpm`` reports);
* ``dpm`` (:class:`DPMSolverPP`): DPM-Solver++(2M) (Lu et al., 2022), a second-order multistep exponential
  integrator of the probability-flow ODE in the log-SNR lambda = log(alpha / sigma): with h = lambda' - lambda,
  x' = (sigma' / sigma) x - alpha' expm1(-h) D~, where D~ = (1 + 1/(2r)) D - 1/(2r) D_prev and r = h_prev / h
  (first order, D~ = D, on the first step and on the final step to sigma' = 0). The previous (D, h) is the
  object's state.

:func:`sample_loop` runs a sampler with no per-sampler case; guidance is a wrapper around the denoiser, and what
happens between steps is a list of :class:`Callback` objects, called in order after each step. Inpainting
(RePaint, Lugmayr et al., 2022) is two of them: :class:`Known` replaces the known pixels by a fresh forward sample
alpha' x_known + sigma' z, so at the end they are exactly x_known; :class:`Resample` with U > 1 has each step
(but the last, to clean data) done U times, jumping back by re-noising x' -> x between attempts so the generated
region harmonises with the known one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
from torch import Tensor

from genzoo.errors import GenzooError
from genzoo.models.diffusion.schedules import Schedule, Spacing

#: D(x_t, t) -> estimate of x_0 (same shape as x_t)
Denoiser = Callable[[Tensor, int], Tensor]
#: draws standard normal noise of the given shape (so the caller controls the generator and device)
NoiseFn = Callable[[tuple[int, ...]], Tensor]


# ----- samplers ---------------------------------------------------------------------------------------------------
class Sampler:
    """A reverse-time sampler: ``set_timesteps`` once, then ``step`` for i = 0 .. len(timesteps) - 1.

    Class attributes: ``name`` (the registry key), ``default_steps`` (grid size when none is asked for; None: every
    step of the schedule), ``spacing`` (``time``: an even grid in t, ``logsnr``: even in log-SNR) and
    ``default_eta`` (the eta used when none is given; None: the sampler has no eta and refuses one).
    """

    name: ClassVar[str]
    default_steps: ClassVar[int | None] = None
    spacing: ClassVar[Spacing] = "time"
    default_eta: ClassVar[float | None] = None

    def __init__(self, eta: float | None = None) -> None:
        if eta is not None and self.default_eta is None:
            takes = " and ".join(_display(n) for n, cls in SAMPLERS.items() if cls.default_eta is not None)
            raise GenzooError(f"eta applies to the {takes} samplers, not {self.name}")
        if eta is not None and not eta >= 0:
            raise GenzooError(f"eta must be at least 0, got {eta}")
        self.eta: float | None = self.default_eta if eta is None else eta
        #: the decreasing grid t_0 > ... > t_{K-1} of the last ``set_timesteps``
        self.timesteps: list[int] = []
        #: (alpha, sigma) at each grid point, then (1, 0) for clean data: K + 1 pairs of floats
        self.levels: list[tuple[float, float]] = []
        self.reset()

    def __repr__(self) -> str:
        eta = "" if self.eta is None else f"eta={self.eta}, "
        return f"{type(self).__name__}({eta}steps={len(self.timesteps)})"

    def set_timesteps(self, schedule: Schedule, steps: int | None = None, strength: float = 1.0) -> list[int]:
        """Compute the decreasing grid for ``schedule`` and reset the sampler's state; returns the grid.

        ``steps`` grid points for the full noise range (None: ``default_steps``, or every step of the schedule);
        with ``strength`` < 1 the grid starts at step strength * (T - 1) and keeps that share of the points
        (at least one). The grid always ends at t = 0; it may be shorter than asked when rounding to integer
        steps merges points (log-SNR spacing near t = 0, or more steps than the range has).
        """
        if steps is None:
            steps = self.default_steps or schedule.steps
        if steps < 1:
            raise GenzooError(f"steps must be at least 1, got {steps}")
        if not 0.0 < strength <= 1.0:
            raise GenzooError(f"strength must be in (0, 1], got {strength}")
        start = round(strength * (schedule.steps - 1))
        self.timesteps = schedule.timesteps(max(1, round(steps * strength)), start=start, spacing=self.spacing)
        pairs = (schedule.alpha_sigma(t) for t in self.timesteps)
        self.levels = [(float(alpha), float(sigma)) for alpha, sigma in pairs] + [(1.0, 0.0)]
        self.reset()
        return self.timesteps

    def reset(self) -> None:
        """Forget the state of earlier steps (called by :meth:`set_timesteps`)."""

    def step(self, x: Tensor, x0_hat: Tensor, i: int, noise: NoiseFn) -> Tensor:
        """Take ``x`` at grid point ``i`` to grid point ``i + 1`` (clean data after the last) given D's estimate
        ``x0_hat`` of x_0 there; ``noise`` draws the fresh noise a stochastic sampler needs."""
        raise NotImplementedError

    def _levels(self, i: int) -> tuple[float, float, float, float]:
        """(alpha, sigma, alpha', sigma') of the step from grid point i."""
        if not 0 <= i < len(self.timesteps):
            raise GenzooError(f"{self.name} sampler: no grid point {i} (call set_timesteps first; "
                              f"the grid has {len(self.timesteps)} points)")
        (alpha, sigma), (alpha_next, sigma_next) = self.levels[i], self.levels[i + 1]
        return alpha, sigma, alpha_next, sigma_next


class DDIM(Sampler):
    """DDIM (Song et al., 2021) on an even time grid; eta = 0 deterministic, eta = 1 ancestral-like."""

    name = "ddim"
    default_steps = 50
    spacing = "time"
    default_eta = 0.0

    def step(self, x: Tensor, x0_hat: Tensor, i: int, noise: NoiseFn) -> Tensor:
        alpha, sigma, alpha_next, sigma_next = self._levels(i)
        return _ddim_step(x, x0_hat, self.eta or 0.0, alpha, sigma, alpha_next, sigma_next, noise)


class Ancestral(Sampler):
    """Ancestral sampling (Ho et al., 2020; alias ``ddpm``): the mean of DDIM with eta = 1 and the variance of
    :func:`reverse_variances`; every step of the schedule by default."""

    name = "ancestral"
    default_steps = None
    spacing = "time"
    default_eta = 1.0

    def step(self, x: Tensor, x0_hat: Tensor, i: int, noise: NoiseFn) -> Tensor:
        alpha, sigma, alpha_next, sigma_next = self._levels(i)
        extra = float(reverse_variances(alpha**2, alpha_next**2)[2] ** 2 * sigma**2)
        return _ddim_step(x, x0_hat, self.eta or 0.0, alpha, sigma, alpha_next, sigma_next, noise, extra)


class DPMSolverPP(Sampler):
    """DPM-Solver++(2M) (Lu et al., 2022) on a grid even in log-SNR; keeps the previous grid point's (D, h).

    When a step is redone (:class:`Resample`), every attempt at grid point i extrapolates from the last attempt
    at i - 1."""

    name = "dpm"
    default_steps = 20
    spacing = "logsnr"
    default_eta = None

    def reset(self) -> None:
        self._index: int | None = None  # grid point of the latest step
        self._last: tuple[int, Tensor, float] | None = None  # (i, D, h) of the latest step
        self._prev: tuple[int, Tensor, float] | None = None  # the same for the grid point before the current one

    def step(self, x: Tensor, x0_hat: Tensor, i: int, noise: NoiseFn) -> Tensor:
        alpha, sigma, alpha_next, sigma_next = self._levels(i)
        if i != self._index:  # a new grid point: the latest step becomes the previous one
            self._prev, self._index = self._last, i
        if sigma_next == 0:
            x_next, h = x0_hat, math.inf
        else:
            h = math.log(alpha_next / sigma_next) - math.log(alpha / sigma)
            d = x0_hat
            prev = self._prev
            if prev is not None and prev[0] == i - 1 and math.isfinite(prev[2]) and prev[2] > 0:
                r = prev[2] / h
                d = (1 + 1 / (2 * r)) * x0_hat - (1 / (2 * r)) * prev[1]
            x_next = (sigma_next / sigma) * x - alpha_next * math.expm1(-h) * d
        self._last = (i, x0_hat, h)
        return x_next


#: every sampler by name
SAMPLERS: dict[str, type[Sampler]] = {cls.name: cls for cls in (Ancestral, DDIM, DPMSolverPP)}
#: other names accepted for a sampler
ALIASES: dict[str, str] = {"ddpm": "ancestral"}
#: what ``sampler=`` accepts (the registry and its aliases; a test checks they agree)
SamplerName = Literal["ancestral", "ddpm", "ddim", "dpm"]


def _display(name: str) -> str:
    aliases = [alias for alias, target in ALIASES.items() if target == name]
    return f"{name} ({'/'.join(aliases)})" if aliases else name


def sampler_class(name: str) -> type[Sampler]:
    """The sampler class registered as ``name`` (or an alias of it); a clear error naming the choices."""
    cls = SAMPLERS.get(ALIASES.get(name, name))
    if cls is None:
        accepted = ", ".join(SAMPLERS)
        aliases = ", ".join(f"{alias} = {target}" for alias, target in ALIASES.items())
        raise GenzooError(f"unknown sampler '{name}' (use one of {accepted}; aliases: {aliases})")
    return cls


def make_sampler(name: str, eta: float | None = None) -> Sampler:
    """A fresh sampler object by name or alias (``ddpm`` is ``ancestral``); ``eta`` only where it applies."""
    return sampler_class(name)(eta)


# ----- the loop and its callbacks ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class StepInfo:
    """What a callback learns about the step just taken: grid point ``i`` -> ``i + 1``, attempt ``attempt`` of
    ``repeats``, and the loop's noise source."""

    sampler: Sampler
    i: int
    attempt: int
    repeats: int
    noise: NoiseFn


class Callback:
    """Something done after every step of :func:`sample_loop`; the base class does nothing.

    ``repeats(sampler, i)`` asks the loop to take the step from grid point i that many times (the loop takes the
    largest any callback asks for); a callback asking for more than one must bring ``x`` back to grid point i
    between attempts (``info.attempt < info.repeats - 1``) in :meth:`after_step`."""

    def repeats(self, sampler: Sampler, i: int) -> int:
        return 1

    def after_step(self, x: Tensor, info: StepInfo) -> Tensor:
        """``x`` at grid point ``info.i + 1`` -> what the loop continues from."""
        return x


@dataclass
class Known(Callback):
    """Pixels to keep while sampling: clean values ``x0`` (network units) where ``keep`` is 1. As a callback, it
    replaces them after every step by a forward sample at the new level (exactly ``x0`` at the end)."""

    x0: Tensor
    keep: Tensor

    def impose(self, x: Tensor, alpha: float, sigma: float, noise: NoiseFn) -> Tensor:
        """Replace the known pixels of ``x`` by a forward sample at level (alpha, sigma)."""
        noisy = self.x0 * alpha + noise(tuple(x.shape)) * sigma if sigma > 0 else self.x0
        return self.keep * noisy + (1 - self.keep) * x

    def after_step(self, x: Tensor, info: StepInfo) -> Tensor:
        alpha_next, sigma_next = info.sampler.levels[info.i + 1]
        return self.impose(x, alpha_next, sigma_next, info.noise)


@dataclass
class Resample(Callback):
    """RePaint's resampling: take every step (but the last, to clean data) ``rounds`` times, jumping back between
    attempts by drawing x ~ q(x_t | x_next) so what is generated harmonises with what a :class:`Known` before it
    in the callback list imposes."""

    rounds: int = 1

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise GenzooError(f"resample must be at least 1, got {self.rounds}")

    def repeats(self, sampler: Sampler, i: int) -> int:
        return self.rounds if sampler.levels[i + 1][1] > 0 else 1

    def after_step(self, x: Tensor, info: StepInfo) -> Tensor:
        if info.attempt >= info.repeats - 1:
            return x
        ratio = info.sampler.levels[info.i][0] / info.sampler.levels[info.i + 1][0]
        return ratio * x + math.sqrt(max(0.0, 1 - ratio**2)) * info.noise(tuple(x.shape))


def _repeats(sampler: Sampler, i: int, callbacks: Sequence[Callback]) -> int:
    return max([cb.repeats(sampler, i) for cb in callbacks], default=1)


def sample_loop(denoiser: Denoiser, sampler: Sampler, x: Tensor, noise: NoiseFn,
                callbacks: Sequence[Callback] = ()) -> Tensor:
    """Integrate from ``x`` at the first grid point of ``sampler`` (after ``set_timesteps``) to clean data: at each
    grid point one denoiser call and one ``sampler.step`` (per attempt), then every callback in order."""
    if not sampler.timesteps:
        raise GenzooError(f"{sampler.name} sampler: call set_timesteps before sampling")
    for i, t in enumerate(sampler.timesteps):
        repeats = _repeats(sampler, i, callbacks)
        for attempt in range(repeats):
            x_next = sampler.step(x, denoiser(x, t), i, noise)
            info = StepInfo(sampler, i, attempt, repeats, noise)
            for callback in callbacks:
                x_next = callback.after_step(x_next, info)
            x = x_next
    return x


def denoiser_calls(sampler: Sampler, callbacks: Sequence[Callback] = ()) -> int:
    """How many times :func:`sample_loop` calls the denoiser with this sampler (after ``set_timesteps``) and
    these callbacks."""
    return sum(_repeats(sampler, i, callbacks) for i in range(len(sampler.timesteps)))


# ----- shared step arithmetic ---------------------------------------------------------------------------------------
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
