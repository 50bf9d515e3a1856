"""The kernel density baseline: its density against scikit-learn's KernelDensity, normalisation on a grid, the width
chosen by held-out likelihood, sampling, subsampled centres and the evaluation convention on discrete images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.neighbors import KernelDensity as SkKernelDensity

from conftest import fitted, three_clusters, tiny_dataset
from genzoo.contract import Batch, DataKind, GenerativeModel
from genzoo.data import TensorDataset
from genzoo.eval.runner import model_likelihood
from genzoo.models.classical.kde import KernelDensity


def sklearn_log_density(model: GenerativeModel, data: TensorDataset, x: torch.Tensor) -> np.ndarray:
    """Independent computation: scikit-learn's Gaussian KDE on the standardised training points, carried to data
    units by hand (divide by the product of the standard deviations)."""
    mean, std = np.array(data.info.mean), np.array(data.info.std)
    kde = SkKernelDensity(bandwidth=float(model.bandwidth), kernel="gaussian")
    kde.fit((data.train.x.double().numpy() - mean) / std)
    return kde.score_samples((x.double().numpy() - mean) / std) - np.log(std).sum()


@pytest.mark.parametrize("chunk", [512, 7])
def test_density_matches_scikit_learn_in_data_units(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(KernelDensity, "chunk", chunk)  # 7: many chunks, a short last one
    data = three_clusters()
    model = fitted("kde", data)
    ll = model.log_likelihood(data.test.x)
    assert ll.kind == "exact" and not ll.discrete
    np.testing.assert_allclose(ll.values.double().numpy(), sklearn_log_density(model, data, data.test.x),
                               rtol=0, atol=1e-4)


def test_density_integrates_to_one_on_a_grid() -> None:
    model = fitted("kde", three_clusters(), bandwidths=[0.3])
    side = torch.linspace(-10, 10, 301)
    grid = torch.cartesian_prod(side, side)
    density = model.log_likelihood(grid).values.double().exp()
    cell = float(side[1] - side[0]) ** 2
    assert abs(float(density.sum()) * cell - 1.0) < 1e-3


def test_the_width_with_the_best_held_out_likelihood_is_chosen() -> None:
    data = three_clusters()
    grid = [0.01, 0.05, 0.2, 0.6, 2.0]
    model = fitted("kde", data, bandwidths=grid)
    dims = data.info.dims

    def held_out_bits(h: float) -> float:  # no dequantization for vectors: the plain held-out NLL per dimension
        model.bandwidth.fill_(h)
        return float(-model.log_likelihood(data.val.x).values.double().mean()) / (dims * math.log(2))

    chosen = float(fitted("kde", data, bandwidths=grid).bandwidth)
    scores = {h: held_out_bits(h) for h in grid}
    assert chosen == pytest.approx(min(scores, key=scores.__getitem__))
    assert grid[0] < chosen < grid[-1]  # three clusters of width ~0.3: neither extreme wins


def test_samples_follow_the_kernel_mixture_and_temperature_zero_gives_training_examples() -> None:
    data = three_clusters()
    model = fitted("kde", data, bandwidths=[0.2])
    samples = model.sample(40_000, seed=0).double()
    train = data.train.x.double()
    std = torch.tensor(data.info.std).double()
    # a mixture of N(c_i, h^2 s^2) with equal weights: mean of the centres, their covariance plus the kernel's
    true_cov = torch.cov(train.T, correction=0) + torch.diag((0.2 * std) ** 2)
    assert torch.allclose(samples.mean(0), train.mean(0), atol=0.05)
    assert torch.allclose(torch.cov(samples.T), true_cov, rtol=0.02, atol=0.05)
    cold = model.sample(50, seed=1, temperature=0.0)
    assert torch.cdist(cold.double(), train).min(dim=1).values.max() < 1e-4


def test_a_large_training_split_is_subsampled_to_max_points() -> None:
    data = three_clusters()
    model = fitted("kde", data, max_points=50)
    active = model.weights > 0
    assert int(active.sum()) == 50 and torch.allclose(model.weights[active], torch.full((50,), 1 / 50))
    z_train = (data.train.x - torch.tensor(data.info.mean)) / torch.tensor(data.info.std)
    gap = (model.centres[active][:, None] - z_train[None]).abs().amax(-1).min(1).values
    assert gap.max() < 1e-6  # each centre is a training example
    assert len({tuple(c.tolist()) for c in model.centres[active]}) == 50  # drawn without replacement


def test_validation_bits_per_dim_is_the_evaluation_convention_on_discrete_images() -> None:
    data = tiny_dataset(DataKind.IMAGE)
    model = fitted("kde", data, bandwidths=[0.1, 0.3])
    batch = Batch(data.test.x[:32])
    ours = model.validation_step(batch, torch.Generator().manual_seed(5))["val_bpd"]
    assert ours == pytest.approx(model_likelihood(model, batch, seed=5)["bits_per_dim"], rel=1e-6)
    samples = model.sample(16, seed=0)
    assert torch.equal(samples, (samples * 16).round() / 16) and samples.min() >= 0 and samples.max() <= 1
