"""VAE: the likelihoods are normalised, the bound is a bound, and it is honest on data with a known density."""

from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import FAST
from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.data import TensorDataset, split_tensors
from genzoo.nn.discrete import discretized_logistic_log_prob
from genzoo.registry import build_model


def test_discretized_logistic_sums_to_one_over_the_levels() -> None:
    levels = 17
    k = torch.arange(levels).unsqueeze(1).expand(levels, 5)
    mean = torch.tensor([-1.2, -0.3, 0.0, 0.55, 1.1]).expand(levels, 5)
    log_scale = torch.tensor([-3.0, -1.0, 0.0, -5.0, -2.0]).expand(levels, 5)
    total = discretized_logistic_log_prob(k, mean, log_scale, levels).exp().sum(0)
    assert torch.allclose(total, torch.ones(5), atol=1e-3)


def _gaussian_data(n: int = 3000) -> tuple[TensorDataset, torch.distributions.MultivariateNormal]:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(4, 4, generator=gen)
    cov = a @ a.T / 4 + 0.2 * torch.eye(4)
    truth = torch.distributions.MultivariateNormal(torch.tensor([1.0, -2.0, 0.5, 3.0]), covariance_matrix=cov)
    x = truth.mean + torch.randn(n, 4, generator=gen) @ torch.linalg.cholesky(cov).T
    train, val, test = split_tensors(x, None)
    info = DataInfo(kind=DataKind.VECTOR, shape=(4,), mean=tuple(train.x.mean(0).tolist()),
                    std=tuple(train.x.std(0).tolist()), spec="gaussian")
    return TensorDataset(info, train, val, test), truth


def test_elbo_is_below_the_exact_log_likelihood_of_gaussian_data_and_not_vacuous(tmp_path) -> None:
    data, truth = _gaussian_data()
    run = genzoo.train("vae", data, steps=250, out=tmp_path / "run", overrides={"latent_dim": 4, "width": 16},
                       **{**FAST, "batch_size": 128})
    model = genzoo.load(run, "last")
    x = data.split("test").x
    exact = truth.log_prob(x).mean().item()
    elbo = model.log_likelihood(x).values.mean().item()
    iwae = model.log_likelihood(x, samples=64).values.mean().item()
    assert model.log_likelihood(x).kind == "lower_bound" and not model.log_likelihood(x).discrete
    assert elbo < exact, f"ELBO {elbo:.3f} above the true log-likelihood {exact:.3f}"
    # IWAE >= ELBO holds in expectation; both are Monte Carlo estimates, hence the small slack
    assert iwae < exact and iwae > elbo - 0.05, (elbo, iwae, exact)
    assert exact - elbo < 1.5 * 4, f"ELBO {elbo:.3f} is vacuous next to {exact:.3f} (4 dims)"


def test_reconstruct_interpolate_encode_shapes() -> None:
    model = genzoo.create("vae", "digits", latent_dim=3, width=8)
    x = torch.rand(2, 1, 8, 8)
    assert model.reconstruct(x).shape == x.shape
    mu, logvar = model.posterior(x)
    assert mu.shape == logvar.shape == (2, 3)
    assert torch.equal(model.encode(x), mu)  # ENCODE: the posterior mean, one tensor
    path = model.interpolate(x[0], x[1], n=5)
    assert path.shape == (5, 1, 8, 8) and path.min() >= 0 and path.max() <= 1
    # the ends of the path are the reconstructions
    assert torch.allclose(path[0], model.reconstruct(x[:1])[0], atol=1e-5)


def test_vae_bits_per_dim_on_digits_is_in_the_right_convention(tmp_path) -> None:
    """An untrained VAE's categorical decoder is near uniform: about log2(17) bits per dimension."""
    model = genzoo.create("vae", "digits", latent_dim=3, width=8)
    x = genzoo.load_dataset("digits").split("test").x[:64]
    bpd = model.log_likelihood(x).bits_per_dim(64).mean().item()
    assert abs(bpd - math.log2(17)) < 0.6, bpd


# (shape, levels) -> the decoder likelihood 'auto' must pick for it
IMAGE_CASES = [((1, 8, 8), 17, "categorical"), ((1, 28, 28), 2, "bernoulli"), ((3, 16, 16), 256, "logistic"),
               ((3, 32, 32), 256, "logistic"), ((1, 64, 64), None, "gaussian"), ((3, 12, 20), 256, "logistic")]


@pytest.mark.parametrize(("shape", "levels", "likelihood"), IMAGE_CASES, ids=lambda c: str(c))
def test_images_of_every_size_and_channel_count_train_sample_and_score(shape, levels, likelihood) -> None:
    info = DataInfo(kind=DataKind.IMAGE, shape=shape, levels=levels)
    torch.manual_seed(0)
    model = build_model("vae", info, {"width": 8, "latent_dim": 4})
    assert model.likelihood == likelihood
    x = torch.rand(3, *shape)
    if levels:
        x = (x * (levels - 1)).round() / (levels - 1)
    out = model.training_step(Batch(x), 0, Optimizers(model.configure_optimizers()))
    assert all(math.isfinite(v) for v in out.values())
    samples = model.sample(2, seed=0)
    assert samples.shape == (2, *shape) and samples.min() >= 0 and samples.max() <= 1
    ll = model.log_likelihood(x)
    assert ll.values.shape == (3,) and torch.isfinite(ll.values).all()
    assert ll.kind == "lower_bound" and ll.discrete == (levels is not None)
    if levels:  # a probability of discrete levels: log P <= 0
        assert (ll.values <= 0).all()
