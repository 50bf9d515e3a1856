"""Feature spaces: where sample-based metrics measure distances, fitted once per dataset and cached.

Inception features mean little on 8x8 digits, so each dataset gets its own network (the "FID on MNIST with a LeNet"
practice). Labelled images: a small CNN classifier trained on the real training split; the features are its
penultimate layer (after the ReLU) and its predictions give the class coverage. Unlabelled images: a small
convolutional autoencoder trained on the training split; the features are its bottleneck. Vectors: the raw
vectors. A network is trained deterministically (fixed seed, fixed batches, fixed number of steps), frozen, and
cached as ``<cache>/features/<hash>.safetensors`` + ``.json``, where the hash covers the dataset's contents, shape
and levels, the architecture and the training recipe; ``GENZOO_CACHE`` overrides the cache folder
(``~/.cache/genzoo``). Every score records the feature space's name and hash; scores with different hashes are
never compared.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import Dataset, TensorDataset
from genzoo.errors import GenzooError
from genzoo.io import cache_dir, load_tensors, save_tensors, write_json
from genzoo.nn import ConvDecoder, ConvEncoder

#: bump when the recipe below changes (part of every hash)
RECIPE_VERSION = "features-v1"
FEATURE_DIM = 64
WIDTH = 16
BATCH_SIZE = 64
EPOCHS, MIN_STEPS, MAX_STEPS = 10, 200, 2000
LR = 1e-3
SEED = 0
_ENCODE_BATCH = 1024


class FeatureNet(nn.Module):
    """Conv encoder to ``FEATURE_DIM`` features, with a class head (classifier) or a decoder (autoencoder)."""

    def __init__(self, shape: tuple[int, ...], num_classes: int | None) -> None:
        super().__init__()
        self.encoder = ConvEncoder(shape, FEATURE_DIM, width=WIDTH, norm="batch")
        self.head = nn.Linear(FEATURE_DIM, num_classes) if num_classes else None
        self.decoder = None if num_classes else ConvDecoder(FEATURE_DIM, shape, shape[0], width=WIDTH, norm="batch")
        # one scalar fixed after training so that real features have mean square 1 per dimension: keeps KID's
        # polynomial kernel in its intended range and makes FD values of different datasets similar in scale
        self.register_buffer("scale", torch.ones(()))

    def hidden(self, x: Tensor) -> Tensor:
        h = self.encoder(x * 2.0 - 1.0)
        return F.relu(h) if self.head is not None else h

    def features(self, x: Tensor) -> Tensor:
        return self.hidden(x) / self.scale

    def loss(self, batch: Batch) -> Tensor:
        h = self.hidden(batch.x)
        if self.head is not None:
            return F.cross_entropy(self.head(h), batch.y)
        return F.mse_loss(torch.sigmoid(self.decoder(h)), batch.x)


@dataclass
class FeatureSpace:
    """A frozen map from examples to feature vectors, with the identity (name + hash) scores are keyed by."""

    name: str
    hash: str
    dim: int
    network: FeatureNet | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_classes(self) -> bool:
        return self.network is not None and self.network.head is not None

    @torch.no_grad()
    def features(self, x: Tensor) -> Tensor:
        """(n, ...) examples in data units -> (n, dim) float64 features."""
        if self.network is None:
            return x.flatten(1).double()
        return torch.cat([self.network.features(x[i : i + _ENCODE_BATCH].float()).double()
                          for i in range(0, len(x), _ENCODE_BATCH)])

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Predicted class of each example from its features (classifier spaces only)."""
        if not self.has_classes:
            raise GenzooError(f"feature space '{self.name}' has no classifier")
        return self.network.head(features.float() * self.network.scale).argmax(1)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "dim": self.dim, **self.meta}


def _digest(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.numpy().tobytes() if isinstance(part, Tensor) else json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


def _training_examples(dataset: Dataset) -> Batch:
    parts = list(dataset.batches("train", _ENCODE_BATCH))
    if not parts:
        raise GenzooError(f"dataset '{dataset.info.spec}' has an empty training split; cannot fit a feature network")
    return Batch(torch.cat([b.x for b in parts]), None if parts[0].y is None else torch.cat([b.y for b in parts]))


def raw_space(info: DataInfo) -> FeatureSpace:
    """Vector data: the vectors themselves."""
    return FeatureSpace("raw", _digest("raw", info.spec, list(info.shape)), info.dims)


def feature_space(dataset: Dataset) -> FeatureSpace:
    """The feature space of ``dataset``: fitted (or read from the cache) on its training split."""
    info = dataset.info
    if info.kind is DataKind.VECTOR:
        return raw_space(info)
    if info.kind is not DataKind.IMAGE:
        raise GenzooError(f"sample-based metrics support image and vector data, not {info.kind.value}")
    train = _training_examples(dataset)
    labelled = train.y is not None and bool(info.num_classes)
    num_classes = info.num_classes if labelled else None
    name = "classifier" if labelled else "autoencoder"
    steps = min(MAX_STEPS, max(MIN_STEPS, EPOCHS * len(train) // BATCH_SIZE))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        net = FeatureNet(tuple(info.shape), num_classes)
    recipe = {"version": RECIPE_VERSION, "arch": repr(net),
              "state": {k: list(v.shape) for k, v in net.state_dict().items()}, "steps": steps,
              "batch": BATCH_SIZE, "lr": LR, "shape": list(info.shape), "levels": info.levels, "classes": num_classes}
    key = _digest(recipe, train.x.contiguous(), train.y.contiguous() if labelled else "unlabelled")
    weights, meta_path = cache_dir() / "features" / f"{key}.safetensors", cache_dir() / "features" / f"{key}.json"
    if weights.exists() and meta_path.exists():
        net.load_state_dict(load_tensors(weights))
        meta = json.loads(meta_path.read_text())
    else:
        meta = _fit(net, dataset, steps)
        meta.update(spec=info.spec, recipe=RECIPE_VERSION, steps=steps, train_examples=len(train))
        save_tensors(weights, net.state_dict())
        write_json(meta_path, meta)
    net.eval().requires_grad_(False)
    return FeatureSpace(f"{name}:{info.spec or 'data'}", key, FEATURE_DIM, net, meta)


def _fit(net: FeatureNet, dataset: Dataset, steps: int) -> dict[str, Any]:
    """Train deterministically: seeded batches, the global RNG forked so the caller's stream is untouched, and one
    thread, so that the weights do not depend on the machine's thread count (a net this small gains nothing from
    more, and loses much when the cores are busy)."""
    optim = torch.optim.Adam(net.parameters(), lr=LR)
    net.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            for step in range(steps):
                loss = net.loss(dataset.batch_at(step, BATCH_SIZE, SEED))
                optim.zero_grad(set_to_none=True)
                loss.backward()
                optim.step()
    finally:
        torch.set_num_threads(threads)
    net.eval()
    with torch.no_grad():
        square = sum(float(net.hidden(b.x).square().sum()) for b in dataset.batches("train", _ENCODE_BATCH))
        net.scale.fill_((square / (dataset.size("train") * FEATURE_DIM)) ** 0.5)
    meta: dict[str, Any] = {"final_train_loss": round(float(loss.detach()), 5), "scale": float(net.scale)}
    held = list(dataset.batches("test", _ENCODE_BATCH))
    if held and net.head is not None:
        with torch.no_grad():
            correct = sum(int((net.head(net.hidden(b.x)).argmax(1) == b.y).sum()) for b in held)
        meta["test_accuracy"] = round(correct / sum(len(b) for b in held), 4)
    return meta


def set_space(real: Tensor, info: DataInfo) -> FeatureSpace:
    """Feature space for a bare set of real examples (``compare_sets`` without a dataset): raw vectors, or for
    images an autoencoder fitted on ``real`` (``compare_sets`` passes half of its real set and scores the rest)."""
    if info.kind is DataKind.VECTOR:
        return raw_space(info)
    whole = Batch(real)
    return feature_space(TensorDataset(info, whole, whole, whole))
