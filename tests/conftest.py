"""Shared fixtures: tiny datasets of each data kind, and fast trainer settings."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

from genzoo.contract import DataInfo, DataKind, GenerativeModel
from genzoo.data import Dataset, TensorDataset, split_tensors
from genzoo.data.specs import load_dataset
from genzoo.registry import build_model

# OMP_NUM_THREADS wins: on a shared, loaded machine two threads spin against each other and run 10x slower
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))

#: trainer settings that keep contract tests fast: no periodic work, validation on a few examples
FAST = {"progress": False, "eval_every": 10_000, "sample_every": 10_000, "checkpoint_every": 10_000,
        "log_every": 1, "val_examples": 64, "batch_size": 16}


def _tiny_images() -> Dataset:
    full = load_dataset("digits")
    train, val, test = (full.split(s) for s in ("train", "val", "test"))
    from genzoo.contract import Batch

    cut = lambda b, n: Batch(b.x[:n], b.y[:n])  # noqa: E731
    return TensorDataset(full.info, cut(train, 128), cut(val, 32), cut(test, 32))


def _tiny_vectors() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    y = torch.randint(0, 3, (240,), generator=gen)
    x = centres[y] + 0.3 * torch.randn(240, 2, generator=gen)
    train, val, test = split_tensors(x, None)
    info = DataInfo(kind=DataKind.VECTOR, shape=(2,), mean=tuple(train.x.mean(0).tolist()),
                    std=tuple(train.x.std(0).tolist()), spec="tiny-vectors")
    return TensorDataset(info, train, val, test)


#: a small corpus for token models (repeated phrases, so a few steps already lower the loss)
TINY_CORPUS = "the cat sat on the mat. the dog ran to the log. a bird sang in the tree.\n" * 30


def _tiny_text() -> Dataset:
    from genzoo.data.specs import DataOptions
    from genzoo.data.text import text_dataset

    return text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny-text")


#: one builder per data kind; a family adding a data kind adds its tiny dataset here
TINY_BUILDERS: dict[DataKind, Callable[[], Dataset]] = {
    DataKind.IMAGE: _tiny_images,
    DataKind.VECTOR: _tiny_vectors,
    DataKind.TOKENS: _tiny_text,
}


def tiny_dataset(kind: DataKind) -> Dataset:
    return TINY_BUILDERS[kind]()


#: centres of :func:`three_clusters`
CLUSTER_CENTRES = torch.tensor([[4.0, 0.0], [-4.0, 1.0], [0.0, 6.0]])


def three_clusters(n: int = 600, seed: int = 0) -> TensorDataset:
    """2-D vectors from three well-separated Gaussian clusters (standard deviations 0.5 and 1 per axis)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=gen)
    x = CLUSTER_CENTRES[y] + torch.randn(n, 2, generator=gen) * torch.tensor([0.5, 1.0])
    train, val, test = split_tensors(x, None)
    info = DataInfo(kind=DataKind.VECTOR, shape=(2,), mean=tuple(train.x.mean(0).tolist()),
                    std=tuple(train.x.std(0).tolist()), spec="clusters")
    return TensorDataset(info, train, val, test)


def fitted(name: str, data: Dataset, **hparams: object) -> GenerativeModel:
    """Model ``name`` fitted in one call (``fits_whole_data``) to ``data``'s training split."""
    model = build_model(name, data.info, hparams)
    model.fit_whole_data(data.examples("train"), data.examples("val"), torch.Generator().manual_seed(0))
    return model


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches (feature networks, downloads) go to a temporary folder, never the user's home."""
    monkeypatch.setenv("GENZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
