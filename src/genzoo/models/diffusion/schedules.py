"""Noise schedules of the discrete-time Gaussian diffusion q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I).

A schedule is the table of cumulative signal levels abar_t = prod_{s<=t} (1 - beta_s) for t = 0 .. T-1; the
marginal of the forward process is x_t = alpha_t x_0 + sigma_t eps with alpha_t = sqrt(abar_t),
sigma_t = sqrt(1 - abar_t) and eps ~ N(0, I) (Ho et al., 2020). Two schedules:

* ``linear``: beta_t linear from 1e-4 to 0.02 (scaled by 1000 / T so any T covers the same noise range);
* ``cosine``: abar_t = f(t + 1) / f(0), f(u) = cos^2((u / T + s) / (1 + s) * pi / 2), s = 0.008, betas clipped
  at 0.999 (Nichol & Dhariwal, 2021).

The network may predict eps or the velocity v = alpha_t eps - sigma_t x_0 (Salimans & Ho, 2022); both are
linear in (x_t, x_0), so the conversions below are exact inverses of each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

ScheduleName = Literal["linear", "cosine"]
Prediction = Literal["eps", "v"]
Spacing = Literal["time", "logsnr"]
#: lowest log-SNR a log-SNR grid starts from (alpha ~ 0.047)
LOGSNR_FLOOR = -3.0


@dataclass(frozen=True)
class Schedule:
    """Cumulative signal levels ``abar`` (float64, length T, decreasing) of a discrete diffusion."""

    abar: Tensor

    @classmethod
    def make(cls, name: ScheduleName, steps: int) -> Schedule:
        if name == "linear":
            scale = 1000.0 / steps
            betas = torch.linspace(scale * 1e-4, scale * 0.02, steps, dtype=torch.float64).clamp(max=0.999)
        elif name == "cosine":
            s = 0.008
            u = torch.arange(steps + 1, dtype=torch.float64) / steps
            f = torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
        else:
            raise ValueError(f"unknown noise schedule '{name}'")
        return cls(torch.cumprod(1 - betas, dim=0))

    @property
    def steps(self) -> int:
        return len(self.abar)

    def alpha_sigma(self, t: int | Tensor) -> tuple[Tensor, Tensor]:
        """(alpha_t, sigma_t) as float64; ``t`` an int or an index tensor."""
        abar = self.abar[t]
        return abar.sqrt(), (1 - abar).sqrt()

    def _coefficients(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        a, s = self.alpha_sigma(t.cpu())
        shape = (-1,) + (1,) * (like.dim() - 1)
        return a.to(like).view(shape), s.to(like).view(shape)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """x_t = alpha_t x_0 + sigma_t eps for a batch with per-example steps ``t``."""
        a, s = self._coefficients(t, x0)
        return a * x0 + s * noise

    def target(self, x0: Tensor, noise: Tensor, t: Tensor, prediction: Prediction) -> Tensor:
        """What the network regresses on: eps, or v = alpha_t eps - sigma_t x_0."""
        if prediction == "eps":
            return noise
        a, s = self._coefficients(t, x0)
        return a * noise - s * x0

    def predict_x0(self, xt: Tensor, t: Tensor, output: Tensor, prediction: Prediction) -> Tensor:
        """x_0 implied by the network output: (x_t - sigma_t eps) / alpha_t, or alpha_t x_t - sigma_t v."""
        a, s = self._coefficients(t, xt)
        if prediction == "eps":
            return (xt - s * output) / a
        return a * xt - s * output

    def logsnr(self) -> Tensor:
        """lambda_t = log(alpha_t / sigma_t) for every step (decreasing in t)."""
        return 0.5 * (self.abar.log() - torch.log1p(-self.abar))

    def timesteps(self, steps: int, start: int | None = None, spacing: Spacing = "time") -> list[int]:
        """A decreasing grid of at most ``steps`` distinct steps from ``start`` (default T - 1) down to 0.

        ``time``: evenly spaced steps. ``logsnr``: evenly spaced in lambda from max(lambda_start, LOGSNR_FLOOR) to
        lambda_0, what a multistep solver needs (on the cosine schedule an even time grid ends with one long
        lambda step after short ones, which makes second-order extrapolation overshoot). Below the floor the
        signal (alpha < 0.05) is lost in the noise, so the grid starts there and x_T ~ N(0, I) stands in for x_t.
        """
        start = self.steps - 1 if start is None else start
        steps = max(1, min(steps, start + 1))
        if spacing == "time":
            grid = torch.linspace(start, 0, steps, dtype=torch.float64).round().long().tolist()
        else:
            lam = self.logsnr()
            targets = torch.linspace(max(float(lam[start]), LOGSNR_FLOOR), float(lam[0]), steps, dtype=torch.float64)
            grid = [int((lam[: start + 1] - target).abs().argmin()) for target in targets]
        return list(dict.fromkeys(grid))
