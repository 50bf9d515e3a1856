"""Energy-based models: the Langevin chain's exact stationary law, the EBM's buffer, score and sampling, and the RBM
against brute-force enumeration (free energy, conditionals, partition function, AIS, CD training)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import Batch, Capability, DataInfo, DataKind, Optimizers
from genzoo.errors import GenzooError
from genzoo.io import load_tensors
from genzoo.models.energy.ebm import EBM, langevin
from genzoo.models.energy.rbm import RBM
from genzoo.registry import build_model

# ----- Langevin on a quadratic energy E(x) = 1/2 (x - mu)^T P (x - mu) ------------------------------------------------
MU = torch.tensor([0.7, -0.4], dtype=torch.float64)
P = torch.tensor([[2.0, 0.6], [0.6, 1.0]], dtype=torch.float64)
STEP, NOISE = 0.25, 0.3


def quadratic(x: Tensor) -> Tensor:
    d = x - MU.to(x.dtype)
    return 0.5 * ((d @ P.to(x.dtype)) * d).sum(1)


def stationary_covariance(step: float, noise: float) -> Tensor:
    """x' = x - a P (x - mu) + b xi is the AR(1) chain y' = (I - aP) y + b xi: S = (I - aP) S (I - aP) + b^2 I, so in
    P's eigenbasis s = b^2 / (a lam (2 - a lam)) -- not the continuous-time b^2 / (2 a lam)."""
    lam, q = torch.linalg.eigh(P)
    return q @ torch.diag(noise**2 / (step * lam * (2.0 - step * lam))) @ q.T


def test_langevin_has_the_exact_stationary_mean_and_covariance_of_the_discretised_chain() -> None:
    n = 40_000
    start = torch.full((n, 2), 3.0, dtype=torch.float64)  # far from mu: the chain must travel (|1 - a lam| <= 0.6)
    x = langevin(quadratic, start, steps=60, step_size=STEP, noise=NOISE, generator=torch.Generator().manual_seed(0))
    cov = stationary_covariance(STEP, NOISE)
    # 5 standard errors: of a mean, sqrt(S_ii / n); of a covariance entry, sqrt((S_ii S_jj + S_ij^2) / n)
    assert torch.allclose(x.mean(0), MU, atol=5 * math.sqrt(float(cov.diagonal().max()) / n))
    se = ((cov.diagonal()[:, None] * cov.diagonal()[None, :] + cov**2) / n).sqrt()
    assert (torch.cov(x.T) - cov).abs().le(5 * se).all(), (torch.cov(x.T), cov)


def test_langevin_draws_its_noise_from_the_generator_only() -> None:
    state = torch.get_rng_state()
    start = torch.zeros(4, 2, dtype=torch.float64)
    a = langevin(quadratic, start, 5, STEP, NOISE, torch.Generator().manual_seed(1))
    b = langevin(quadratic, start, 5, STEP, NOISE, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), state)


def test_langevin_clamps_chains_to_the_box() -> None:
    x = langevin(quadratic, torch.zeros(64, 2, dtype=torch.float64), 20, STEP, 5.0,
                 torch.Generator().manual_seed(0), box=(-1.0, 1.0))
    assert x.min() >= -1.0 and x.max() <= 1.0 and x.abs().max() == 1.0


# ----- the EBM ------------------------------------------------------------------------------------------------------
class Quadratic(nn.Module):
    """The known energy as a network (network units in, one energy per example out), plus a constant offset."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(()))

    def forward(self, z: Tensor) -> Tensor:
        return quadratic(z.double()).float() + self.offset


def ebm_with_known_energy() -> EBM:
    model = build_model("ebm", tiny_dataset(DataKind.VECTOR).info, dict(EBM.smoke_config))
    model.energy_net = Quadratic()
    return model


def test_ebm_samples_follow_the_chain_of_its_energy() -> None:
    """From noise, the model's own sampling path moves to the low-energy stationary law of its (quadratic) energy."""
    model = ebm_with_known_energy()
    n = 8000
    samples = model.sample(n, seed=0, init="noise", steps=60, step_size=STEP, noise=NOISE)
    z = model.preprocess(samples).double()
    cov = stationary_covariance(STEP, NOISE)
    assert torch.allclose(z.mean(0), MU, atol=5 * math.sqrt(float(cov.diagonal().max()) / n))
    assert torch.allclose(torch.cov(z.T), cov, rtol=0.1)
    start = model.noise_like(n, torch.Generator().manual_seed(0)).double()
    assert quadratic(z).mean() < 0.2 * quadratic(start).mean()


def test_ebm_score_is_the_energy_of_the_standardised_input() -> None:
    model = ebm_with_known_energy()
    x = tiny_dataset(DataKind.VECTOR).split("val").x[:5]
    assert torch.allclose(model.score(x).double(), quadratic(model.preprocess(x).double()), atol=1e-5)
    assert model.score_name == "energy" and Capability.ANOMALY_SCORE in model.capabilities
    assert not model.capabilities & {Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND}


@pytest.mark.parametrize("init", ["buffer", "noise"])
def test_ebm_sampling_is_seeded_on_the_grid_and_leaves_the_global_rng_alone(init: str) -> None:
    data = tiny_dataset(DataKind.IMAGE)
    model = build_model("ebm", data.info, dict(EBM.smoke_config))
    state = torch.get_rng_state()
    a = model.sample(6, seed=3, init=init, steps=3)
    assert torch.equal(a, model.sample(6, seed=3, init=init, steps=3))
    assert not torch.equal(a, model.sample(6, seed=4, init=init, steps=3))
    assert torch.equal(torch.get_rng_state(), state)
    levels = data.info.levels - 1
    assert a.min() >= 0 and a.max() <= 1 and torch.equal(a * levels, (a * levels).round())
    model.validation_step(data.split("val")[:8], torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state), "validation must not draw from the global generator"


def test_ebm_loss_is_the_contrast_plus_the_energy_regulariser() -> None:
    """With a constant energy c the contrast vanishes: the loss is alpha (c^2 + c^2)."""
    data = tiny_dataset(DataKind.VECTOR)
    model = build_model("ebm", data.info, {**EBM.smoke_config, "alpha": 0.3})
    last = model.energy_net[0][-1]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        last.bias.fill_(0.5)
    out = model.training_step(data.batch_at(0, 16, seed=0), 0, Optimizers(model.configure_optimizers()))
    assert out["cd"] == 0.0 and out["loss"] == pytest.approx(0.3 * 2 * 0.25, rel=1e-6)


def test_a_training_step_writes_its_negatives_back_to_distinct_buffer_entries() -> None:
    data = tiny_dataset(DataKind.VECTOR)
    model = build_model("ebm", data.info, {**EBM.smoke_config, "reinit_prob": 0.0})
    before = model.replay.clone()
    model.training_step(data.batch_at(0, 16, seed=0), 0, Optimizers(model.configure_optimizers()))
    changed = (model.replay != before).any(1)
    assert int(changed.sum()) == 16


def test_contrastive_divergence_lowers_the_energy_of_data_below_that_of_noise() -> None:
    torch.manual_seed(0)
    data = tiny_dataset(DataKind.VECTOR)
    model = build_model("ebm", data.info, {**EBM.smoke_config, "lr": 1e-2})
    optim = Optimizers(model.configure_optimizers())
    for step in range(150):
        model.training_step(data.batch_at(step, 32, seed=0), step, optim)
    x = data.split("val").x
    noise = model.postprocess(model.noise_like(len(x), torch.Generator().manual_seed(0)) * 2.0)
    data_energy, noise_energy = model.score(x).mean(), model.score(noise).mean()
    assert data_energy < noise_energy, (data_energy, noise_energy)


def test_the_replay_buffer_is_saved_and_loaded(tmp_path: Path) -> None:
    data = tiny_dataset(DataKind.VECTOR)
    run = genzoo.train("ebm", data, steps=3, out=tmp_path / "run", seed=1, overrides=dict(EBM.smoke_config), **FAST)
    saved = load_tensors(run / "last" / "model.safetensors")["replay"]
    loaded = genzoo.load(run, checkpoint="last", ema=False)
    assert torch.equal(loaded.replay, saved)
    assert not torch.equal(saved, build_model("ebm", data.info, dict(EBM.smoke_config)).replay)


def test_bad_buffer_size_is_one_clear_error() -> None:
    data = tiny_dataset(DataKind.VECTOR)
    model = build_model("ebm", data.info, {**EBM.smoke_config, "buffer_size": 8})
    with pytest.raises(GenzooError, match="buffer_size"):
        model.training_step(data.batch_at(0, 16, seed=0), 0, Optimizers(model.configure_optimizers()))


# ----- the RBM, against enumeration ----------------------------------------------------------------------------------
BINARY = DataInfo(kind=DataKind.IMAGE, shape=(1, 2, 4), levels=2, spec="tiny-binary")


def tiny_rbm(scale: float = 1.0, hidden: int = 5, **config: object) -> RBM:
    """An 8-visible RBM with random parameters of size ``scale`` (float64, for tight comparisons)."""
    torch.manual_seed(0)
    model = build_model("rbm", BINARY, {"hidden": hidden, **config}).double()
    with torch.no_grad():
        for p in (model.weight, model.visible_bias, model.hidden_bias, model.base_logits):
            p.copy_(scale * torch.randn_like(p))
    return model


def all_binary(d: int) -> Tensor:
    return torch.tensor(list(itertools.product([0.0, 1.0], repeat=d)), dtype=torch.float64)


@torch.no_grad()
def joint_energy(model: RBM, v: Tensor, h: Tensor) -> Tensor:
    """E(v, h) = -b^T v - c^T h - v^T W h for every pair: (V, H) states -> (len(v), len(h))."""
    return -(v @ model.visible_bias)[:, None] - (h @ model.hidden_bias)[None, :] - v @ model.weight @ h.T


def exact_log_z(model: RBM) -> Tensor:
    return torch.logsumexp(-joint_energy(model, all_binary(8), all_binary(model.config.hidden)).flatten(), 0)


def exact_log_p(model: RBM) -> Tensor:
    """log p(v) for all 256 v from the joint: log sum_h exp(-E(v, h)) - log Z."""
    return torch.logsumexp(-joint_energy(model, all_binary(8), all_binary(model.config.hidden)), 1) - exact_log_z(model)


def test_free_energy_marginalises_the_hidden_units() -> None:
    model = tiny_rbm()
    v = all_binary(8)
    expected = -torch.logsumexp(-joint_energy(model, v, all_binary(5)), 1)
    assert torch.allclose(model.free_energy(v), expected, atol=1e-10)
    assert torch.allclose(model.score(v.view(-1, *BINARY.shape)), expected, atol=1e-10)
    assert model.score_name == "free_energy"


def test_exact_probabilities_from_the_free_energy_sum_to_one() -> None:
    """exp(-F(v)) normalised by the joint's Z (enumerated over v and h) is a distribution over the 256 images."""
    model = tiny_rbm()
    log_p = -model.free_energy(all_binary(8)) - exact_log_z(model)
    assert torch.allclose(log_p.exp().sum(), torch.tensor(1.0, dtype=torch.float64), atol=1e-12)


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_gibbs_conditionals_match_enumeration_on_the_annealing_path(beta: float) -> None:
    """p_beta(v, h) ~ exp((1 - beta) a^T v - beta E(v, h)): its conditionals are what the sampler uses."""
    model = tiny_rbm()
    v, h = all_binary(8), all_binary(5)
    log_joint = (1 - beta) * (v @ model.base_logits)[:, None] - beta * joint_energy(model, v, h)
    p_h_given_v = torch.softmax(log_joint, 1)  # (V, H): rows are v
    p_v_given_h = torch.softmax(log_joint, 0)  # columns are h
    assert torch.allclose(model.hidden_probs(v, beta), p_h_given_v @ h, atol=1e-10)
    assert torch.allclose(model.visible_probs(h, beta), p_v_given_h.T @ v, atol=1e-10)


def test_gibbs_chains_reach_the_model_distribution() -> None:
    model = tiny_rbm(scale=0.7)
    n = 20_000
    samples = model.sample(n, seed=0, gibbs_steps=30).view(n, -1).double()
    exact_mean = exact_log_p(model).exp() @ all_binary(8)
    se = (exact_mean * (1 - exact_mean) / n).sqrt()
    assert (samples.mean(0) - exact_mean).abs().le(5 * se).all()
    assert set(samples.unique().tolist()) == {0.0, 1.0}


def test_pseudo_log_likelihood_matches_enumeration() -> None:
    model = tiny_rbm()
    v = all_binary(8)
    log_p = exact_log_p(model)
    expected = torch.zeros(len(v), dtype=torch.float64)
    for i in range(8):  # log p(v_i | v_-i) = log p(v) - log (p(v) + p(v with v_i flipped))
        partner = (v.long() ^ (torch.arange(8) == i).long()) @ (2 ** torch.arange(7, -1, -1))
        expected += log_p - torch.logaddexp(log_p, log_p[partner])
    assert torch.allclose(model.pseudo_log_likelihood(v), expected, atol=1e-10)


def test_ais_estimates_the_exact_log_partition_function() -> None:
    """Within 4 standard errors of log Z_hat (the relative spread of the weights over sqrt(M)) plus a small bias
    allowance: the estimate is the log of an unbiased estimate of Z."""
    model = tiny_rbm()
    runs = 10_000
    log_z, log_w = model.log_partition(runs, betas=100, generator=torch.Generator().manual_seed(0))
    w = (log_w - log_w.max()).exp()
    se = float(w.std() / w.mean()) / math.sqrt(runs)
    assert abs(float(log_z - exact_log_z(model))) < 4 * se + 0.5 * se**2, (float(log_z), float(exact_log_z(model)), se)


def test_the_ais_likelihood_is_an_estimate_on_binary_data_only() -> None:
    model = tiny_rbm(ais_runs=500, ais_betas=200)
    v = all_binary(8)[::17]
    ll = model.log_likelihood(v.view(-1, *BINARY.shape))
    assert ll.kind == "estimate" and ll.discrete and ll.method == "AIS, 500 runs, 200 temperatures"
    assert torch.allclose(ll.values, exact_log_p(model)[::17], atol=0.05)
    digits = build_model("rbm", tiny_dataset(DataKind.IMAGE).info, dict(RBM.smoke_config))
    assert Capability.LIKELIHOOD_BOUND not in digits.capabilities
    with pytest.raises(GenzooError, match="binar"):
        digits.log_likelihood(torch.zeros(2, 1, 8, 8))


@pytest.mark.parametrize("persistent", [False, True])
def test_contrastive_divergence_increases_the_exact_likelihood(persistent: bool) -> None:
    model = tiny_rbm(scale=0.01, hidden=4, persistent=persistent, chains=64, lr=0.1, k=1)
    patterns = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1], [1, 0, 1, 0, 1, 0, 1, 0]],
                            dtype=torch.float64)
    data = patterns[torch.arange(64) % 3].view(-1, *BINARY.shape)
    index = (patterns.long() @ (2 ** torch.arange(7, -1, -1))).long()
    before = exact_log_p(model)[index].mean()
    model.setup(Batch(data))
    optim = Optimizers(model.configure_optimizers())
    for step in range(300):
        model.training_step(Batch(data), step, optim)
    after = exact_log_p(model)[index].mean()
    assert after > before + 2.0, (float(before), float(after))
