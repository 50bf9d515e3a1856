"""Fréchet distance and kernel inception distance between two sets of feature vectors.

Both are computed on features of a network fitted to the data (see :mod:`genzoo.eval.features`), never on pixels.
We compute them here from feature matrices rather than through torchmetrics' FID/KID, which take images and run the
extractor themselves: our features are shared by every metric of a row, and the matrix square root is done in float64.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import linalg
from torch import Tensor

from genzoo.metrics.checks import check_count, check_pair


def frechet_distance(real: Tensor, fake: Tensor) -> float:
    """FD between Gaussians fitted to two feature sets (Heusel et al., 2017), in float64.

    FD = |mu_r - mu_f|^2 + tr(S_r) + tr(S_f) - 2 tr((S_r S_f)^{1/2}). The trace of the square root equals
    sum sqrt(eig(S_r^{1/2} S_f S_r^{1/2})), a symmetric PSD matrix, so we take it through two symmetric
    eigendecompositions instead of a general ``sqrtm`` (no complex round-off, no singular-matrix fallbacks).
    FD is biased upwards at finite n; compare scores only at equal sample counts.
    """
    a, b = check_pair(real, fake, "frechet_distance", min_n=2)
    x, y = a.numpy(), b.numpy()
    mu_r, mu_f = x.mean(0), y.mean(0)
    s_r, s_f = np.atleast_2d(np.cov(x, rowvar=False)), np.atleast_2d(np.cov(y, rowvar=False))
    w, v = linalg.eigh(s_r)
    root_r = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root_r @ s_f @ root_r
    trace_root = np.sqrt(np.clip(linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)).sum()
    fd = float(np.square(mu_r - mu_f).sum() + np.trace(s_r) + np.trace(s_f) - 2.0 * trace_root)
    return max(fd, 0.0)


def kid_subset_size(n_real: int, n_fake: int, subset_size: int = 1000) -> int:
    """Examples per KID subset: ``subset_size``, but at most half the smaller set, so that the subsets differ and
    their spread says something (subsets as large as both sets would all be the whole sets: a std of 0)."""
    return min(subset_size, min(n_real, n_fake) // 2)


def kernel_inception_distance(real: Tensor, fake: Tensor, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
    """Unbiased KID (Bińkowski et al., 2018): mean and std over random subsets of the squared MMD with the
    cubic polynomial kernel k(a, b) = (a.b / d + 1)^3. Unbiased, so 0 in expectation for equal distributions.

    Subsets hold :func:`kid_subset_size` examples; the std is the spread of KID at that size, so it overstates the
    uncertainty of the mean when the subsets are much smaller than the sets.
    """
    a, b = check_pair(real, fake, "kernel_inception_distance", min_n=4)
    m = kid_subset_size(len(a), len(b), subset_size)
    check_count("kernel_inception_distance", 2, subset_size=m)
    gen = torch.Generator().manual_seed(seed)
    d = a.shape[1]
    values = []
    for _ in range(subsets):
        x = a[torch.randperm(len(a), generator=gen)[:m]]
        y = b[torch.randperm(len(b), generator=gen)[:m]]
        k_xx, k_yy, k_xy = ((p @ q.T / d + 1.0) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1))
        values.append(float(off - 2.0 * k_xy.mean()))
    return float(np.mean(values)), float(np.std(values))
