"""Metrics as pure functions over tensors: known answers, monotonicity, and clear errors on bad input."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import linalg

from genzoo.contract import LogLikelihood
from genzoo.errors import GenzooError
from genzoo.metrics import (
    c2st,
    class_coverage,
    dequantize,
    frechet_distance,
    generator_validation,
    kernel_inception_distance,
    likelihood_summary,
    memorization,
    mmd2_unbiased,
    modes_hit,
    prdc,
    to_discrete,
)


def gaussian(n: int, d: int, seed: int, shift: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    return shift + scale * torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def digits() -> torch.Tensor:
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data, dtype=torch.float64) / 16
    return x[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]


def test_frechet_matches_scipy_sqrtm_and_closed_form() -> None:
    a, b = gaussian(400, 6, 0), gaussian(400, 6, 1, shift=0.5, scale=2.0)
    x, y = a.numpy(), b.numpy()
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    reference = (np.square(x.mean(0) - y.mean(0)).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.trace(linalg.sqrtm(s1 @ s2).real))
    assert frechet_distance(a, b) == pytest.approx(reference, rel=1e-8)
    # N(0, I) vs N(0.5, 4 I) in 6 dims: 6 * 0.25 + 6 * (1 + 4 - 2 * 2) = 7.5, up to sampling error
    assert frechet_distance(a, b) == pytest.approx(7.5, rel=0.15)


def test_real_vs_real_scores_like_identical_distributions() -> None:
    x = digits()
    a, b = x[:600], x[600:1200]
    assert frechet_distance(a, b) < 0.1 * frechet_distance(a, b.flip(-1))  # vs the same digits rotated 180°
    kid, kid_std = kernel_inception_distance(a, b, subsets=20, subset_size=300)
    assert abs(kid) < 3 * kid_std + 1e-3
    assert abs(float(mmd2_unbiased(a, b))) < 2e-3
    scores = prdc(a, b)
    assert min(scores.values()) > 0.85 and scores["density"] < 1.2
    two = c2st(a, b)
    assert abs(two["c2st_accuracy"] - 0.5) < 0.07 and abs(two["c2st_auroc"] - 0.5) < 0.07


def test_more_noise_raises_fd_monotonically_and_c2st_detects_it() -> None:
    x = digits()
    a, b = x[:600], x[600:1200]
    noise = gaussian(len(b), b.shape[1], 5)
    fds = [frechet_distance(a, b + s * noise) for s in (0.0, 0.05, 0.1, 0.2, 0.4)]
    assert all(lo < hi for lo, hi in itertools.pairwise(fds)), fds
    assert c2st(a, b + 0.1 * noise)["c2st_auroc"] > 0.9


def test_kid_is_unbiased_and_grows_with_shift() -> None:
    a, b = gaussian(300, 4, 0), gaussian(300, 4, 1)
    same = [kernel_inception_distance(a, gaussian(300, 4, s), subsets=10, subset_size=200)[0] for s in range(2, 8)]
    assert abs(np.mean(same)) < 0.02
    assert kernel_inception_distance(a, b + 1.0, subsets=10)[0] > 10 * abs(np.mean(same))


def test_dropping_half_the_modes_lowers_recall_and_coverage_not_precision() -> None:
    centres = torch.tensor([[math.cos(t), math.sin(t)] for t in np.linspace(0, 2 * math.pi, 8, endpoint=False)]) * 4
    gen = torch.Generator().manual_seed(0)
    real = centres[torch.randint(8, (800,), generator=gen)] + 0.2 * torch.randn(800, 2, generator=gen)
    half = centres[torch.randint(4, (800,), generator=gen)] + 0.2 * torch.randn(800, 2, generator=gen)
    full = prdc(real, centres[torch.randint(8, (800,), generator=gen)] + 0.2 * torch.randn(800, 2, generator=gen))
    dropped = prdc(real, half)
    assert dropped["precision"] > 0.9
    assert dropped["recall"] < 0.6 < full["recall"] and dropped["coverage"] < 0.6 < full["coverage"]
    hit = modes_hit(half, centres, radius=0.6)  # 3 std: 98.9% of a 2-D Gaussian's mass
    assert hit["modes_hit"] == 4 and hit["num_modes"] == 8 and hit["high_quality"] > 0.97
    assert modes_hit(real, centres, radius=0.6)["modes_hit"] == 8


def test_class_coverage_by_hand() -> None:
    reference = torch.arange(4).repeat(25)  # uniform over 4 classes
    half = torch.tensor([0, 1] * 50)
    out = class_coverage(half, reference, 4)
    assert out["classes_hit"] == 2 and out["entropy"] == pytest.approx(math.log(2))
    # KL(p || q) with p = (1/2, 1/2, 0, 0) and q uniform (smoothing +0.5 per class changes nothing here) = log 2
    assert out["kl_to_real"] == pytest.approx(math.log(2))
    assert class_coverage(reference, reference, 4)["kl_to_real"] == pytest.approx(0.0, abs=1e-12)


def test_training_images_returned_verbatim_are_memorized() -> None:
    x = digits()
    train, held = x[:1000], x[1000:1400]
    copies = memorization(train, train[:300], held)
    assert copies.memorized and copies.exact_copies == 1.0 and copies.authenticity == 0.0 and copies.copy_z < -10
    assert torch.equal(copies.neighbours, torch.arange(300))
    fresh = memorization(train, x[1400:1700], held)
    assert not fresh.memorized and fresh.exact_copies == 0.0 and abs(fresh.copy_z) < 3


def test_nll_of_a_known_gaussian_equals_the_closed_form() -> None:
    d, n, sigma = 3, 20000, 0.7
    x = gaussian(n, d, 0, scale=sigma)
    density = torch.distributions.Normal(0.0, sigma).log_prob(x).sum(1)
    summary = likelihood_summary(LogLikelihood(density, "exact", False, "gaussian"), dims=d)
    entropy = 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)  # E[-log p] of the Gaussian itself
    assert summary["nll_nats"] == pytest.approx(entropy, rel=0.01)
    assert summary["bits_per_dim"] == pytest.approx(entropy / (d * math.log(2)), rel=0.01)
    assert summary["kind"] == "exact" and summary["nonfinite"] == 0


def test_bits_per_dim_by_hand() -> None:
    # 17 levels on [0, 1]: bins of width 1/16 centred on k/16 tile [-1/32, 1 + 1/32]. The uniform density on that
    # interval, 16/17, dequantized gives log P = log(16/17) - log 16 = -log 17 per dimension: log2(17) bits/dim,
    # exactly the uniform distribution over 17 levels.
    dims = 4
    ll = LogLikelihood(torch.full((5,), dims * math.log(16 / 17)), "exact", False, "uniform")
    discrete = to_discrete(ll, dims, levels=17, dequantized=True)
    assert discrete.kind == "lower_bound" and discrete.discrete
    summary = likelihood_summary(discrete, dims)
    assert summary["bits_per_dim"] == pytest.approx(math.log2(17))
    assert summary["nll_nats"] == pytest.approx(dims * math.log(17))
    # a discrete model's values pass through untouched: 2 bits/dim over 8 dims is 16 ln 2 nats
    coin = LogLikelihood(torch.full((3,), -16 * math.log(2)), "exact", True, "categorical")
    assert likelihood_summary(to_discrete(coin, 8, 256, False), 8)["bits_per_dim"] == pytest.approx(2.0)


def test_dequantized_gaussian_bounds_the_exact_bin_probability() -> None:
    levels, mu, sigma = 17, 0.5, 0.15
    grid = torch.arange(levels, dtype=torch.float64) / (levels - 1)
    x = grid.repeat(200)[:, None]
    normal = torch.distributions.Normal(mu, sigma)
    half = 0.5 / (levels - 1)
    exact = (normal.cdf(x + half) - normal.cdf(x - half)).log().sum(1)
    dq = dequantize(x, levels, torch.Generator().manual_seed(0))
    bound = to_discrete(LogLikelihood(normal.log_prob(dq).sum(1), "exact", False, "gaussian"), 1, levels, True)
    gap = float(exact.mean() - bound.values.mean())
    assert 0 < gap < 0.05  # Jensen: a lower bound on log P, and close for a smooth density
    assert (dq - x).abs().max() <= half


def test_too_few_samples_is_a_clear_error_naming_the_minimum() -> None:
    a = gaussian(3, 4, 0)
    with pytest.raises(GenzooError, match="at least 6 examples"):
        prdc(a, a, k=5)
    with pytest.raises(GenzooError, match="at least 10 examples"):
        c2st(gaussian(50, 4, 1), a)
    with pytest.raises(GenzooError, match="at least 2 examples"):
        frechet_distance(a[:1], a)


@pytest.mark.parametrize(("metric", "second"), [(frechet_distance, "fake"), (prdc, "fake"),
                                               (mmd2_unbiased, "y")], ids=lambda m: getattr(m, "__name__", m))
def test_mismatched_shapes_and_nans_are_clear_errors(metric, second: str) -> None:
    with pytest.raises(GenzooError, match=r"shape \(4,\).*shape \(5,\)"):
        metric(gaussian(10, 4, 0), gaussian(10, 5, 1))
    bad = gaussian(20, 4, 0)
    bad[3, 1] = float("nan")
    with pytest.raises(GenzooError, match=f"{second} has 1 of 20 examples with NaN"):
        metric(gaussian(20, 4, 1), bad)


def test_a_test_point_with_probability_zero_makes_the_nll_infinite() -> None:
    # dropping the -inf would give NLL 2.0: better than a model with log p = -3 everywhere, which is absurd
    for bad in (float("-inf"), float("nan")):
        values = torch.tensor([-1.0, bad, -3.0])
        summary = likelihood_summary(LogLikelihood(values, "exact", True, "x"), dims=2)
        assert summary["nll_nats"] == summary["bits_per_dim"] == math.inf
        assert summary["nonfinite"] == 1 and summary["n"] == 3
    everywhere = likelihood_summary(LogLikelihood(torch.full((3,), -3.0), "exact", True, "x"), dims=2)
    assert everywhere["nll_nats"] == pytest.approx(3.0) and everywhere["nonfinite"] == 0


def test_mmd_names_its_minimum_and_a_diverged_gan_validates_to_nan() -> None:
    bad = gaussian(20, 4, 0)
    bad[3, 1] = float("nan")
    with pytest.raises(GenzooError, match="at least 2 examples in each set, got x=20, y=1"):
        mmd2_unbiased(gaussian(20, 4, 1), bad[:1])
    # a diverged GAN's validation logs NaN instead of stopping training
    assert math.isnan(generator_validation(bad, gaussian(20, 4, 1))["val_mmd"])


def test_kid_spread_is_measured_when_both_sets_fit_in_one_subset() -> None:
    a, b = gaussian(300, 4, 0), gaussian(300, 4, 1)  # both smaller than the default subset size of 1000
    kid, kid_std = kernel_inception_distance(a, b, subsets=20)
    assert kid_std > 1e-4 and abs(kid) < 3 * kid_std  # a real spread, and 0 lies within it for one distribution
    shifted, shifted_std = kernel_inception_distance(a, b + 1.0, subsets=20)
    assert shifted > 3 * shifted_std
