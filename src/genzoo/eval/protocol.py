"""The evaluation protocol: which metrics one (real, fake) pair of sets gets, with what settings.

``score_features`` scores two sets already mapped to a feature space; ``compare_sets`` does it from examples in
data units (the ``genzoo eval --real A --fake B`` path). The settings live in :class:`Protocol` and are written
into every result, so a number can always be reproduced.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genzoo.contract import DataInfo, DataKind
from genzoo.data.base import Dataset
from genzoo.data.specs import load_dataset
from genzoo.errors import GenzooError
from genzoo.eval.features import FeatureSpace, feature_space, set_space
from genzoo.metrics import (
    c2st,
    class_coverage,
    frechet_distance,
    kernel_inception_distance,
    kid_subset_size,
    mmd2_unbiased,
    prdc,
)
from genzoo.metrics.checks import check_count, equal_size


@dataclass(frozen=True)
class Protocol:
    """Sample counts and metric settings. ``n_max`` caps the generated (and held-out) set, ``n_real_max`` the
    real training subset every set is compared with."""

    n_max: int = 2000
    n_real_max: int = 5000
    k: int = 5
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    c2st_folds: int = 5
    likelihood_max: int = 2000
    sample_batch: int = 500

    @property
    def min_examples(self) -> int:
        """The fewest examples per set every metric can work with (k-NN balls, C2ST folds)."""
        return max(self.k + 1, 2 * self.c2st_folds)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PROTOCOL = Protocol()


def score_features(real: Tensor, fake: Tensor, space: FeatureSpace, *, seed: int = 0, protocol: Protocol = PROTOCOL,
                   class_reference: Tensor | None = None, num_classes: int | None = None) -> dict[str, Any]:
    """Every distribution metric between two feature sets (n, dim); class coverage when the space classifies.

    ``class_reference`` holds the real label histogram's labels (the training labels), ``num_classes`` their count.
    """
    check_count("evaluation", protocol.min_examples, real=len(real), fake=len(fake))
    kid, kid_std = kernel_inception_distance(real, fake, protocol.kid_subsets, protocol.kid_subset_size, seed)
    # MMD and the k-NN balls of P/R/D/C use as many real as fake examples (P/R/D/C read ~1 on equal sets only)
    equal = equal_size(real, fake, seed)
    row: dict[str, Any] = {
        "feature_space": {"name": space.name, "hash": space.hash},
        "n_real": len(real),
        "n_fake": len(fake),
        "fd": frechet_distance(real, fake),
        "kid": kid,
        "kid_std": kid_std,
        "kid_subset_size": kid_subset_size(len(real), len(fake), protocol.kid_subset_size),
        "mmd2": float(mmd2_unbiased(*equal)),
        **prdc(*equal, protocol.k),
        **c2st(real, fake, protocol.c2st_folds, seed),
    }
    if space.has_classes and class_reference is not None and num_classes:
        row["classes"] = class_coverage(space.predict(fake), class_reference, num_classes)
    return row


def reference_warning(n_reference: int, n_model: int) -> str | None:
    """A warning when the reference row scores fewer examples than the model row (None when it does not)."""
    if n_reference >= n_model:
        return None
    return (f"the reference row scores {n_reference} held-out examples, the model row {n_model}: FD and the k-NN "
            f"metrics depend on the count, so the reference shows the floor at {n_reference}, not at {n_model}")


def split_finite(x: Tensor) -> tuple[Tensor, int]:
    """The examples of ``x`` without NaN/Inf values, and how many were dropped."""
    keep = torch.isfinite(x.flatten(1)).all(1)
    return x[keep], int((~keep).sum())


def infer_info(x: Tensor) -> DataInfo:
    """DataInfo of a bare set: (n, C, H, W) in [0, 1] are images, (n, D) are vectors."""
    if x.dim() == 4:
        return DataInfo(kind=DataKind.IMAGE, shape=tuple(x.shape[1:]))
    if x.dim() == 2:
        return DataInfo(kind=DataKind.VECTOR, shape=tuple(x.shape[1:]))
    raise GenzooError(f"a set must have shape (n, C, H, W) for images or (n, D) for vectors, got {tuple(x.shape)}")


#: seed of the cut of a bare real image set into fitting, scoring and reference parts: fixed, so every evaluation
#: seed meets the same feature network
SET_SPLIT_SEED = 20260304


def split_real_set(real: Tensor, protocol: Protocol = PROTOCOL) -> tuple[Tensor, Tensor, Tensor]:
    """A bare real image set cut at random into a half to fit the feature network on, a quarter the fake set is
    compared with and a quarter for the reference row. A network maps the examples it was fitted on differently
    from new ones, so neither scored set may be among them."""
    need = 4 * protocol.min_examples
    if len(real) < need:
        raise GenzooError(f"a real image set without a feature space is cut into a half to fit the feature network "
                          f"on and two quarters to score: it needs at least {need} examples, got {len(real)} (or "
                          "name the data whose feature space to use: --data / features=)")
    perm = torch.randperm(len(real), generator=torch.Generator().manual_seed(SET_SPLIT_SEED))
    half, three_quarters = len(real) // 2, 3 * len(real) // 4
    return real[perm[:half]], real[perm[half:three_quarters]], real[perm[three_quarters:]]


def _checked_sets(real: Tensor, fake: Tensor, protocol: Protocol) -> tuple[Tensor, Tensor, int]:
    """Both sets as float tensors of one shape, the fake one without its NaN/Inf examples (and their count)."""
    real, fake = torch.as_tensor(real), torch.as_tensor(fake)
    if tuple(real.shape[1:]) != tuple(fake.shape[1:]):
        raise GenzooError(f"real examples have shape {tuple(real.shape[1:])} but fake examples have shape "
                          f"{tuple(fake.shape[1:])}; both sets must hold examples of the same shape")
    real, bad_real = split_finite(real.float())
    if bad_real:
        raise GenzooError(f"the real set has {bad_real} examples with NaN/Inf values")
    fake, bad_fake = split_finite(fake.float())
    check_count("evaluation", protocol.min_examples, real=len(real), fake=len(fake))
    return real, fake, bad_fake


def _space_of(features: FeatureSpace | Dataset | str | Path, real: Tensor
              ) -> tuple[FeatureSpace, Tensor | None, int | None]:
    """The feature space ``features`` names, with the training labels and class count when it has classes."""
    if isinstance(features, FeatureSpace):
        return features, None, None
    dataset = load_dataset(str(features)) if isinstance(features, str | Path) else features
    if tuple(dataset.info.shape) != tuple(real.shape[1:]):
        raise GenzooError(f"the sets hold examples of shape {tuple(real.shape[1:])} but data "
                          f"'{dataset.info.spec}' has shape {tuple(dataset.info.shape)}")
    num_classes = dataset.info.num_classes
    labels = torch.cat([b.y for b in dataset.batches("train", 4096)]) if num_classes else None
    return feature_space(dataset), labels, num_classes


def compare_sets(real: Tensor, fake: Tensor, *, features: FeatureSpace | Dataset | str | None = None, seed: int = 0,
                 protocol: Protocol = PROTOCOL) -> dict[str, Any]:
    """Score ``fake`` against ``real`` (examples in data units) with every distribution metric.

    ``features``: a :class:`FeatureSpace`, a dataset or data spec whose feature space to use (so the numbers are
    comparable with ``genzoo eval`` runs on that data), or None: raw vectors, or for images an autoencoder fitted
    on a random half of ``real`` (see :func:`split_real_set`); then ``fake`` is compared with a quarter of ``real``
    and ``row["reference"]`` scores the last quarter (at most as many examples as ``fake``) the same way: what a
    perfect generator would get. Fake examples with NaN/Inf values are dropped and counted in
    ``nonfinite_samples``; ``warnings`` lists caveats for reading the numbers.
    """
    real, fake, bad_fake = _checked_sets(real, fake, protocol)
    held = None
    if features is None:
        info, fit = infer_info(real), real
        if info.kind is DataKind.IMAGE:  # the autoencoder must not score the examples it was fitted on
            fit, real, held = split_real_set(real, protocol)
            held = held[: len(fake)]
        features = set_space(fit, info)
    space, labels, num_classes = _space_of(features, real)
    real_f = space.features(real)
    row = score_features(real_f, space.features(fake), space, seed=seed, protocol=protocol,
                         class_reference=labels, num_classes=num_classes)
    row["nonfinite_samples"] = bad_fake
    row["feature_space"] = space.describe()
    warning = None
    if held is not None:
        row["reference"] = score_features(real_f, space.features(held), space, seed=seed, protocol=protocol)
        warning = reference_warning(len(held), len(fake))
    row["warnings"] = [warning] if warning else []
    return row
