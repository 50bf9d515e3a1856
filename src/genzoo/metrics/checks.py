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


def check_pair(real: Tensor, fake: Tensor, metric: str, min_n: int,
               names: tuple[str, str] = ("real", "fake")) -> tuple[Tensor, Tensor]:
    """Both sets as float64 matrices with the same dimension and at least ``min_n`` examples each; ``names`` are
    what the messages call the two sets."""
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise GenzooError(f"{metric}: {names[0]} examples have shape {tuple(real.shape[1:])} but {names[1]} examples "
                          f"have shape {tuple(fake.shape[1:])}; both sets must hold examples of the same shape")
    a, b = as_matrix(real, names[0], metric), as_matrix(fake, names[1], metric)
    check_count(metric, min_n, **{names[0]: len(a), names[1]: len(b)})
    return a, b


def equal_size(a: Tensor, b: Tensor, seed: int) -> tuple[Tensor, Tensor]:
    """Random subsets of ``a`` and ``b`` with as many examples as the smaller set, drawn with ``seed``.

    Random, not the first rows: a set sorted by class would otherwise lose whole classes.
    """
    gen = torch.Generator().manual_seed(seed)
    m = min(len(a), len(b))
    return a[torch.randperm(len(a), generator=gen)[:m]], b[torch.randperm(len(b), generator=gen)[:m]]


def check_count(metric: str, min_n: int, **counts: int) -> None:
    """Raise naming the minimum when any set is smaller than ``min_n``."""
    small = {name: n for name, n in counts.items() if n < min_n}
    if small:
        got = ", ".join(f"{name}={n}" for name, n in counts.items())
        raise GenzooError(f"{metric} needs at least {min_n} examples in each set, got {got}")
