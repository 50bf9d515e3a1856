"""Precision, recall, density and coverage from k-nearest-neighbour balls (written here with ``torch.cdist``).

Each set's manifold is estimated as the union of balls around its points, each ball reaching the point's k-th
nearest neighbour in its own set (Kynkäänniemi et al., 2019). Precision: fraction of fake points inside the real
manifold (fidelity). Recall: fraction of real points inside the fake manifold (diversity). Density and coverage
(Naeem et al., 2020) use only the real balls, which makes them robust to fake outliers: density counts how many
real balls hold each fake point (1 on average when the sets match, > 1 for samples piled in dense regions);
coverage is the fraction of real balls holding at least one fake point. No library we depend on implements these.
"""

from __future__ import annotations

import torch
from torch import Tensor

from genzoo.metrics.checks import check_pair

_CHUNK = 2048  # rows of a distance matrix computed at once (bounds memory at chunk x n floats)


def knn_radii(x: Tensor, k: int) -> Tensor:
    """Distance of every row of ``x`` to its k-th nearest other row."""
    radii = [torch.cdist(x[i : i + _CHUNK], x).kthvalue(k + 1, dim=1).values for i in range(0, len(x), _CHUNK)]
    return torch.cat(radii)


def _ball_counts(points: Tensor, centres: Tensor, radii: Tensor) -> Tensor:
    """For each point, how many balls (centres, radii) contain it."""
    counts = [(torch.cdist(points[i : i + _CHUNK], centres) <= radii).sum(1) for i in range(0, len(points), _CHUNK)]
    return torch.cat(counts)


def prdc(real: Tensor, fake: Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of ``fake`` with respect to ``real`` (both (n, ...) sets)."""
    a, b = check_pair(real, fake, "precision/recall", min_n=k + 1)
    r_real, r_fake = knn_radii(a, k), knn_radii(b, k)
    in_real = _ball_counts(b, a, r_real)
    nearest_fake = torch.cat([torch.cdist(a[i : i + _CHUNK], b).min(1).values for i in range(0, len(a), _CHUNK)])
    return {
        "precision": float((in_real > 0).double().mean()),
        "recall": float((_ball_counts(a, b, r_fake) > 0).double().mean()),
        "density": float(in_real.double().mean() / k),
        "coverage": float((nearest_fake <= r_real).double().mean()),
    }
