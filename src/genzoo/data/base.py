"""Datasets: what the trainer and the evaluation read, whatever the source.

A :class:`Dataset` has a :class:`~genzoo.contract.DataInfo` and three splits. Training batches are addressed by
step number (``batch_at``), so a resumed run sees exactly the batches an uninterrupted one would. Splits are made
with a fixed seed that does not depend on the training seed, so every run on the same data spec is evaluated on the
same held-out examples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.errors import DataError

#: seed of the train/val/test permutation; fixed so that splits never depend on the training seed
SPLIT_SEED = 20260101
SPLITS = ("train", "val", "test")


class ReferenceDensity(Protocol):
    """A known data distribution (toy data) that evaluation compares models with."""

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        """``n`` fresh examples in data units."""
        ...

    def log_prob(self, x: Tensor) -> Tensor:
        """Exact log-density per example in data units."""
        ...

    def modes(self) -> tuple[Tensor, float] | None:
        """Mode centres and the radius within which a sample counts as hitting one, for distributions with few
        well-separated modes (None otherwise)."""
        ...


class Dataset:
    """Interface the trainer and evaluation use. Subclasses: :class:`TensorDataset` (in memory) and others."""

    info: DataInfo
    #: the text tokenizer of token data (:class:`genzoo.tokenizer.Tokenizer`), handed to the model; None otherwise
    tokenizer: Any = None

    def batch_at(self, step: int, batch_size: int, seed: int) -> Batch:
        """The training batch of global step ``step`` for training seed ``seed`` (deterministic, stateless)."""
        raise NotImplementedError

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        """Fixed-order batches of a split, at most ``limit`` examples in all."""
        raise NotImplementedError

    def size(self, split: str) -> int:
        raise NotImplementedError

    def examples(self, *splits: str) -> Batch:
        """Every example of the named splits as one batch; each optional field (labels, a second domain's ``x_b``,
        ``mask``, ``cond``) only when every part has it."""
        parts = [b for name in splits for b in self.batches(name, 4096)]
        if not parts:
            raise DataError(f"data '{self.info.spec}' has no examples in the {'/'.join(splits)} split")
        joined = {f.name: [getattr(b, f.name) for b in parts] for f in fields(Batch)}
        return Batch(**{name: None if any(t is None for t in tensors) else torch.cat(tensors)
                        for name, tensors in joined.items()})

    #: the true distribution when it is known (toy densities): fresh samples, exact log-density, modes
    reference: ReferenceDensity | None = None


@dataclass
class TensorDataset(Dataset):
    """A dataset held in memory as tensors, one :class:`Batch` per split."""

    info: DataInfo
    train: Batch
    val: Batch
    test: Batch
    reference: ReferenceDensity | None = None
    tokenizer: Any = None

    def __post_init__(self) -> None:
        self._perm_cache: tuple[tuple[int, int], Tensor] | None = None

    def split(self, name: str) -> Batch:
        if name not in SPLITS:
            raise DataError(f"unknown split '{name}' (use one of {', '.join(SPLITS)})")
        return getattr(self, name)

    def size(self, split: str) -> int:
        return len(self.split(split))

    def _epoch_permutation(self, seed: int, epoch: int) -> Tensor:
        key = (seed, epoch)
        if self._perm_cache is None or self._perm_cache[0] != key:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            self._perm_cache = (key, torch.randperm(len(self.train), generator=gen))
        return self._perm_cache[1]

    def batch_at(self, step: int, batch_size: int, seed: int) -> Batch:
        n = len(self.train)
        batch_size = min(batch_size, n)
        per_epoch = n // batch_size
        epoch, index = divmod(step, per_epoch)
        idx = self._epoch_permutation(seed, epoch)[index * batch_size : (index + 1) * batch_size]
        return self.train[idx]

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        data = self.split(split)
        n = len(data) if limit is None else min(limit, len(data))
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            yield data[start:stop]

    def binarized(self) -> TensorDataset:
        """The same images thresholded at 1/2: binary data (2 levels), as binarized MNIST is usually defined."""
        if self.info.kind is not DataKind.IMAGE:
            raise DataError(f"data '{self.info.spec}' is {self.info.kind.value} data; only images can be binarized")
        binary = lambda b: Batch((b.x >= 0.5).float(), b.y)  # noqa: E731
        return replace(self, info=replace(self.info, levels=2), train=binary(self.train), val=binary(self.val),
                       test=binary(self.test))


def split_tensors(x: Tensor, y: Tensor | None, fractions: tuple[float, float] = (0.8, 0.1)) -> tuple[Batch, ...]:
    """Shuffle with :data:`SPLIT_SEED` and cut into train/val/test (80/10/10 by default)."""
    n = len(x)
    if n < 3:
        raise DataError(f"need at least 3 examples to make train/validation/test splits, got {n}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(SPLIT_SEED))
    n_train = max(1, round(fractions[0] * n))
    n_val = max(1, round(fractions[1] * n))
    n_train = min(n_train, n - 2)
    cuts = (perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :])
    return tuple(Batch(x, y)[i] for i in cuts)


def check_finite(x: Tensor, source: str) -> None:
    """Reject NaN/Inf values with an error naming the source and the first bad position."""
    bad = ~torch.isfinite(x)
    if bad.any():
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise DataError(f"{source}: contains {int(bad.sum())} NaN/Inf value(s), first at index {first}")
