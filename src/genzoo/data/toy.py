"""Toy 2-D densities, generated on the fly: ``toy:moons``, ``toy:8gaussians``, ``toy:checkerboard``, ``toy:spirals``.

Each is defined so that its density is known exactly: the dataset's ``reference`` has ``sample(n, generator)``
(fresh real samples for metrics), ``log_prob(x)`` (the true log-density, to compare models' likelihoods with the
truth) and ``modes()`` (the centres of few-mode mixtures, to count modes hit).

* ``8gaussians``: p(x) = 1/8 sum_k N(x; 2 (cos k pi/4, sin k pi/4), 0.2^2 I) -- radius 2, std 0.2.
* ``checkerboard``: uniform on the 8 dark unit squares of a 4x4 board covering [-2, 2)^2 (squares whose lower-left
  corner (i, j) has i + j even), so p(x) = 1/8 on them and 0 elsewhere.
* ``moons``: scikit-learn's two-moons layout, centred: arcs (cos t, sin t) and (1 - cos t, 1/2 - sin t),
  t in [0, pi], shifted by (-1/2, -1/4). Each arc is a mixture of 64 Gaussians with std 0.1 whose means are evenly
  spaced along it (closer than one std, so the arc looks continuous), which makes the density an exact mixture.
* ``spirals``: two interleaved Archimedean arms r = theta / pi (theta up to 3 pi, radius up to 3), the second the
  first rotated by pi; each arm a mixture of 200 Gaussians with std 0.1 at equal arc-length spacing
  (theta_k = 3 pi sqrt((k + 1/2) / 200)). Again an exact mixture.

The fixed set (train/val/test) is a pool of :data:`POOL_SIZE` samples drawn with :data:`POOL_SEED`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from genzoo.data.arrays import vector_dataset
from genzoo.data.base import TensorDataset
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError

POOL_SIZE = 20_000
POOL_SEED = 20_260_202
MAX_MODES = 25  # mixtures with at most this many components are scored by modes hit (8gaussians)
_CHUNK = 4096  # points per block when evaluating a mixture (bounds memory to CHUNK x components)


class GaussianMixture2D:
    """Equal-weight mixture of isotropic Gaussians: p(x) = 1/K sum_k N(x; c_k, s^2 I)."""

    def __init__(self, centers: Tensor, std: float) -> None:
        self.centers = centers.to(torch.float64)
        self.std = std

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(len(self.centers), (n,), generator=generator)
        noise = torch.randn(n, 2, generator=generator, dtype=torch.float64)
        return (self.centers[k] + self.std * noise).float()

    def modes(self) -> tuple[Tensor, float] | None:
        """The centres, with a hit radius of 3 std, when there are few enough to count (8gaussians)."""
        return (self.centers, 3.0 * self.std) if len(self.centers) <= MAX_MODES else None

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_k(-|x - c_k|^2 / 2 s^2) - log K - log(2 pi s^2), computed in float64."""
        x64 = x.detach().to("cpu", torch.float64)
        c_sq = self.centers.square().sum(1)
        # |x - c|^2 = |x|^2 - 2 x.c + |c|^2 as one matmul; float64 keeps the cancellation error ~1e-15
        parts = [torch.logsumexp(-(chunk.square().sum(1, keepdim=True) - 2 * chunk @ self.centers.T + c_sq)
                                 / (2 * self.std**2), dim=1)
                 for chunk in x64.split(_CHUNK)]
        norm = math.log(len(self.centers)) + math.log(2 * math.pi * self.std**2)
        return (torch.cat(parts) - norm).to(x.device, x.dtype)


class Checkerboard:
    """Uniform on the 8 dark unit squares of a 4x4 board on [-2, 2)^2: p(x) = 1/8 there, 0 elsewhere."""

    def __init__(self) -> None:
        corners = [(i, j) for i in range(-2, 2) for j in range(-2, 2) if (i + j) % 2 == 0]
        self.corners = torch.tensor(corners, dtype=torch.float64)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.randint(len(self.corners), (n,), generator=generator)
        return (self.corners[k] + torch.rand(n, 2, generator=generator, dtype=torch.float64)).float()

    def modes(self) -> tuple[Tensor, float] | None:
        return None  # a continuum, not modes

    def log_prob(self, x: Tensor) -> Tensor:
        cell = torch.floor(x.detach().to("cpu", torch.float64))
        inside = ((cell >= -2) & (cell <= 1)).all(dim=1) & (cell.sum(dim=1) % 2 == 0)
        out = torch.full((len(x),), -math.inf, dtype=torch.float64)
        out[inside] = -math.log(len(self.corners))
        return out.to(x.device, x.dtype)


def _eight_gaussians() -> GaussianMixture2D:
    angles = torch.arange(8, dtype=torch.float64) * math.pi / 4
    return GaussianMixture2D(2.0 * torch.stack([angles.cos(), angles.sin()], dim=1), std=0.2)


def _moons() -> GaussianMixture2D:
    t = (torch.arange(64, dtype=torch.float64) + 0.5) * math.pi / 64
    upper = torch.stack([t.cos(), t.sin()], dim=1)
    lower = torch.stack([1 - t.cos(), 0.5 - t.sin()], dim=1)
    return GaussianMixture2D(torch.cat([upper, lower]) - torch.tensor([0.5, 0.25], dtype=torch.float64), std=0.1)


def _spirals() -> GaussianMixture2D:
    # arc length of r = theta/pi grows like theta^2, so theta ~ sqrt(k) spaces the means evenly along the arm
    theta = 3 * math.pi * ((torch.arange(200, dtype=torch.float64) + 0.5) / 200).sqrt()
    arm = (theta / math.pi)[:, None] * torch.stack([theta.cos(), theta.sin()], dim=1)
    return GaussianMixture2D(torch.cat([arm, -arm]), std=0.1)


TOYS: dict[str, Callable[[], GaussianMixture2D | Checkerboard]] = {
    "moons": _moons,
    "8gaussians": _eight_gaussians,
    "checkerboard": Checkerboard,
    "spirals": _spirals,
}


@register_loader("toy", "toy:NAME  2-D density with exact log-density and sampler: " + ", ".join(TOYS),
                 path_arg=False)
def load_toy(arg: str | None, options: DataOptions) -> TensorDataset:
    if arg not in TOYS:
        given = "'toy' needs a name" if not arg else f"unknown toy density 'toy:{arg}'"
        raise DataError(f"{given}; use one of " + ", ".join(f"toy:{name}" for name in TOYS))
    density = TOYS[arg]()
    pool = density.sample(POOL_SIZE, torch.Generator().manual_seed(POOL_SEED))
    return vector_dataset(pool, None, f"toy:{arg}", reference=density)
