"""Two datasets as one, for models between two domains (unpaired translation): ``--data A --data-b B``.

Every batch carries domain A in ``x`` (and ``y``) and an equally large batch of domain B in ``x_b``, drawn with its
own order (seed + 1), so the examples are unpaired. Held-out batches pair the splits position by position,
repeating B's when it is shorter.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import torch

from genzoo.contract import Batch
from genzoo.data.base import Dataset
from genzoo.errors import DataError


class PairedDataset(Dataset):
    """Domain ``a`` with domain ``b`` alongside; ``info.domain_b`` describes ``b``."""

    def __init__(self, a: Dataset, b: Dataset) -> None:
        if a.info.kind is not b.info.kind:
            raise DataError(f"the two domains must be of one kind: '{a.info.spec}' is {a.info.kind.value} data, "
                            f"'{b.info.spec}' is {b.info.kind.value}")
        self.a, self.b = a, b
        self.info = replace(a.info, domain_b=b.info)
        self.tokenizer = a.tokenizer

    def size(self, split: str) -> int:
        return self.a.size(split)

    def batch_at(self, step: int, batch_size: int, seed: int) -> Batch:
        batch = self.a.batch_at(step, batch_size, seed)
        other = self.b.batch_at(step, len(batch), seed + 1).x
        return replace(batch, x_b=other[: len(batch)])

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        others = torch.cat([b.x for b in self.b.batches(split, 4096)])
        if not len(others):
            raise DataError(f"'{self.b.info.spec}' has no examples in the {split} split")
        start = 0
        for batch in self.a.batches(split, batch_size, limit):
            index = torch.arange(start, start + len(batch)) % len(others)
            start += len(batch)
            yield replace(batch, x_b=others[index])


def pair_datasets(a: Dataset, b: Dataset) -> PairedDataset:
    return PairedDataset(a, b)
