"""Mode and class coverage: which classes (or mixture modes) the samples land in, and in what proportions."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from genzoo.metrics.checks import as_matrix, check_count


def class_coverage(predicted: Tensor, reference: Tensor, num_classes: int) -> dict[str, object]:
    """Class statistics of samples from their predicted labels, against the real (training) label histogram.

    ``entropy`` of the predicted-class histogram in nats (log K for a uniform spread over K classes);
    ``classes_hit``: classes that receive at least a quarter of their real share (so a few misclassified samples
    do not count as a hit); ``kl_to_real``:
    KL(p_samples || p_real) in nats, 0 when the proportions match (p_real is smoothed so it is never 0).
    """
    check_count("class_coverage", 1, samples=len(predicted), reference=len(reference))
    p = torch.bincount(predicted.long().flatten(), minlength=num_classes).double()
    q = torch.bincount(reference.long().flatten(), minlength=num_classes).double()
    p, q = p / p.sum(), (q + 0.5) / (q + 0.5).sum()
    nz = p > 0
    return {
        "entropy": float(-(p[nz] * p[nz].log()).sum()) + 0.0,  # + 0.0 turns -0.0 into 0.0
        "max_entropy": math.log(num_classes),
        "classes_hit": int((p >= 0.25 * q).sum()),
        "num_classes": num_classes,
        "kl_to_real": float((p[nz] * (p[nz] / q[nz]).log()).sum()),
        "histogram": [round(float(v), 4) for v in p],
    }


def modes_hit(samples: Tensor, centres: Tensor, radius: float, min_share: float = 0.01) -> dict[str, float]:
    """Mixture modes that samples reach (Srivastava et al., 2017's protocol for toy mixtures).

    A sample belongs to its nearest centre when closer than ``radius`` (e.g. three standard deviations of a
    component); a mode is hit when it holds at least ``min_share`` of the samples. ``high_quality`` is the fraction
    of samples within ``radius`` of some centre.
    """
    x = as_matrix(samples, "samples", "modes_hit")
    c = as_matrix(centres, "centres", "modes_hit")
    dist, nearest = torch.cdist(x, c).min(1)
    close = dist <= radius
    share = torch.bincount(nearest[close], minlength=len(c)).double() / max(len(x), 1)
    return {"modes_hit": int((share >= min_share).sum()), "num_modes": len(c),
            "high_quality": float(close.double().mean())}
