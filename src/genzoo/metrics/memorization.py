"""Memorization: are samples closer to the training set than genuinely new data is?

For each sample we find its nearest training example. Data-copying test (Meehan et al., 2020, without their
cells): compare the distribution of these distances with the nearest-training distances of held-out real examples
by a Mann-Whitney U test. Its z-score is about 0 for a model that generalises, clearly negative when samples sit
closer to training examples than new data would (copying), and positive when samples are farther (under-fitting).
Authenticity (Alaa et al., 2022): a sample is inauthentic when it is closer to its nearest training example than
that example's own nearest other training example is; ``authenticity`` is the fraction of authentic samples.
``exact_copies`` counts samples at distance ~0 from a training example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from genzoo.metrics.checks import check_count, check_pair

#: z below this flags the model as copying (Meehan et al.'s suggested threshold)
COPY_Z_THRESHOLD = -3.0
_CHUNK = 2048


def nearest(points: Tensor, pool: Tensor, exclude: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Distance and index of each point's nearest neighbour in ``pool`` (chunked ``torch.cdist``), skipping
    ``pool[exclude[i]]`` for point i when ``exclude`` is given (a point's own copy)."""
    dists, index = [], []
    for i in range(0, len(points), _CHUNK):
        d = torch.cdist(points[i : i + _CHUNK], pool)
        if exclude is not None:
            d[torch.arange(len(d)), exclude[i : i + _CHUNK]] = float("inf")
        best = d.min(1)
        dists.append(best.values)
        index.append(best.indices)
    return torch.cat(dists), torch.cat(index)


@dataclass
class Memorization:
    """Summary scores plus, per sample, the distance to and index of its nearest training example."""

    copy_z: float
    authenticity: float
    exact_copies: float
    memorized: bool
    distances: Tensor
    neighbours: Tensor

    def summary(self) -> dict[str, float | bool]:
        return {"copy_z": self.copy_z, "authenticity": self.authenticity, "exact_copies": self.exact_copies,
                "memorized": self.memorized}

    def worst(self, count: int) -> Tensor:
        """Indices of the samples nearest to a training example."""
        return self.distances.argsort()[:count]


def memorization(train: Tensor, fake: Tensor, heldout: Tensor) -> Memorization:
    """Memorization scores of ``fake`` against ``train``, with ``heldout`` real data as the baseline."""
    tr, fk = check_pair(train, fake, "memorization", min_n=2)
    _, ho = check_pair(train, heldout, "memorization", min_n=2)
    check_count("memorization", 2, heldout=len(ho))
    d_fake, idx = nearest(fk, tr)
    d_held, _ = nearest(ho, tr)
    from scipy import stats  # slow to import; only needed here

    u = stats.mannwhitneyu(d_fake.numpy(), d_held.numpy(), alternative="two-sided").statistic
    n1, n2 = len(d_fake), len(d_held)
    z = (u - n1 * n2 / 2) / ((n1 * n2 * (n1 + n2 + 1) / 12) ** 0.5)
    # distance of each training example that is some sample's neighbour to its nearest *other* training example
    used = idx.unique()
    own = torch.full((len(tr),), float("inf"), dtype=torch.float64)
    own[used] = nearest(tr[used], tr, exclude=used)[0]
    scale = float(d_held.median()) or 1.0
    return Memorization(
        copy_z=float(z),
        authenticity=float((d_fake >= own[idx]).double().mean()),
        exact_copies=float((d_fake <= 1e-6 * scale).double().mean()),
        memorized=bool(z < COPY_Z_THRESHOLD),
        distances=d_fake,
        neighbours=idx,
    )
