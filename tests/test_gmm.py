"""The Gaussian mixture baseline: its density against an independent computation, selection by held-out
likelihood, sampling moments, the evaluation convention, and the trainer's one-call fit."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

import genzoo
from conftest import CLUSTER_CENTRES, FAST, fitted, three_clusters, tiny_dataset
from genzoo.contract import Batch, DataKind
from genzoo.eval.runner import model_likelihood


def scipy_density(model: genzoo.GenerativeModel, x: torch.Tensor) -> np.ndarray:
    """The stored mixture carried back to data units by hand: mu = m + s * mu', Sigma = S Sigma' S."""
    mean, std = np.array(model.data.mean), np.array(model.data.std)
    total = np.zeros(len(x))
    for w, mu, tril in zip(model.weights.double(), model.means.double(), model.scale_tril.double(), strict=True):
        if w > 0:
            cov = (tril @ tril.T).numpy() * np.outer(std, std)
            total += float(w) * multivariate_normal(mean + std * mu.numpy(), cov).pdf(x.double().numpy())
    return np.log(total)


def test_density_matches_an_independent_computation_in_data_units() -> None:
    data = three_clusters()
    model = fitted("gmm", data)
    x = data.test.x
    ll = model.log_likelihood(x)
    assert ll.kind == "exact" and not ll.discrete
    np.testing.assert_allclose(ll.values.double().numpy(), scipy_density(model, x), rtol=0, atol=1e-4)


def test_density_integrates_to_one_on_a_grid() -> None:
    model = fitted("gmm", three_clusters())
    side = torch.linspace(-12, 12, 481)
    grid = torch.cartesian_prod(side, side)
    density = model.log_likelihood(grid).values.double().exp()
    cell = float(side[1] - side[0]) ** 2
    assert abs(float(density.sum()) * cell - 1.0) < 1e-3


def test_held_out_likelihood_chooses_the_number_of_components() -> None:
    data = three_clusters()
    model = fitted("gmm", data, components=[1, 3], reg_covar=[1e-3], covariance=["full"])
    assert int((model.weights > 0).sum()) == 3  # three clusters: one component is far worse on held-out data
    found = model.means[model.weights > 0] * torch.tensor(data.info.std) + torch.tensor(data.info.mean)
    for centre in CLUSTER_CENTRES:
        assert float((found - centre).norm(dim=1).min()) < 0.2


def test_samples_follow_the_mixture_and_temperature_zero_gives_the_means() -> None:
    data = three_clusters()
    model = fitted("gmm", data, components=[3], reg_covar=[1e-3], covariance=["full"])
    samples = model.sample(20_000, seed=0).double()
    mean, std = torch.tensor(data.info.mean).double(), torch.tensor(data.info.std).double()
    w, mu = model.weights.double(), model.means.double() * std + mean
    covs = [(t @ t.T) * torch.outer(std, std) for t in model.scale_tril.double()]
    true_mean = (w[:, None] * mu).sum(0)
    true_cov = sum(w[k] * (covs[k] + torch.outer(mu[k], mu[k])) for k in range(3)) - torch.outer(true_mean, true_mean)
    assert torch.allclose(samples.mean(0), true_mean, atol=0.05)
    assert torch.allclose(torch.cov(samples.T), true_cov, rtol=0.03, atol=0.05)
    cold = model.sample(50, seed=1, temperature=0.0)
    assert torch.cdist(cold.float(), mu.float()).min(dim=1).values.max() < 1e-4


def test_validation_bits_per_dim_is_the_evaluation_convention() -> None:
    """Held-out bits/dim of discrete images: the same dequantized numbers genzoo eval reports."""
    data = tiny_dataset(DataKind.IMAGE)
    model = fitted("gmm", data, components=[1, 2], reg_covar=[1e-2])
    batch = Batch(data.test.x[:64])
    ours = model.validation_step(batch, torch.Generator().manual_seed(5))["val_bpd"]
    assert ours == pytest.approx(model_likelihood(model, batch, seed=5)["bits_per_dim"], rel=1e-6)
    samples = model.sample(8, seed=0)
    assert torch.equal(samples, (samples * 16).round() / 16)  # on the data's 17 levels


def test_the_trainer_fits_once_and_a_resume_does_not_refit(tmp_path: Path) -> None:
    data = three_clusters()
    run = genzoo.train("gmm", data, out=tmp_path / "run", steps=5, overrides={"components": [1, 3]}, **FAST)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["train", "val"] and records[0]["components"] == 3
    assert genzoo.load(run).provenance["step"] == 1
    before = (run / "last" / "model.safetensors").read_bytes()
    genzoo.train("gmm", data, out=tmp_path / "run", steps=9, resume=True, **FAST)
    assert (run / "last" / "model.safetensors").read_bytes() == before
    splits = [json.loads(line)["split"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert splits == ["train", "val", "resume"]  # nothing fitted or validated again
    nll = -genzoo.load(run).log_likelihood(data.test.x).values.mean()
    assert math.isfinite(float(nll))
