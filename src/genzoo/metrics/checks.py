"""Input checks shared by the metrics: every user mistake becomes one clear :class:`GenzooError`."""

from __future__ import annotations

import torch
from torch import Tensor

from genzoo.errors import GenzooError


def as_matrix(x: Tensor, name: str, metric: str) -> Tensor:
    """Flatten a set of examples to a float64 (n, d) matrix, rejecting non-finite values with a count."""
    x = torch.as_tensor(x)
    if x.dim() < 2:
        raise GenzooError(f"{metric}: {name} must be a set of examples with shape (n, ...), got shape {tuple(x.shape)}")
    x = x.flatten(1).double()
    bad = ~torch.isfinite(x).all(1)
    if bad.any():
        raise GenzooError(f"{metric}: {name} has {int(bad.sum())} of {len(x)} examples with NaN/Inf values; "
                          "drop them first (compare_sets and evaluate do and report the count)")
    return x


def check_pair(real: Tensor, fake: Tensor, metric: str, min_n: int) -> tuple[Tensor, Tensor]:
    """Both sets as float64 matrices with the same dimension and at least ``min_n`` examples each."""
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise GenzooError(f"{metric}: real examples have shape {tuple(real.shape[1:])} but fake examples have shape "
                          f"{tuple(fake.shape[1:])}; both sets must hold examples of the same shape")
    a, b = as_matrix(real, "real", metric), as_matrix(fake, "fake", metric)
    check_count(metric, min_n, real=len(a), fake=len(b))
    return a, b


def check_count(metric: str, min_n: int, **counts: int) -> None:
    """Raise naming the minimum when any set is smaller than ``min_n``."""
    small = {name: n for name, n in counts.items() if n < min_n}
    if small:
        got = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise GenzooError(f"{metric} needs at least {min_n} examples in each set, got {got}")
