"""vqvae: the vector quantiser against hand-computed answers, the two training stages, the code round trip, the
likelihood bound against the exact marginal, and the prior built by name."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import Batch, Capability, DataKind, GenerativeModel, ModelConfig, Optimizers, Stage
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import load_tensors
from genzoo.models.vae.vqvae import VQVAE
from genzoo.nn.quantize import VectorQuantizer, code_perplexity
from genzoo.registry import build_model, model_class, register
from genzoo.training.trainer import Trainer

SMOKE = VQVAE.smoke_config


@register
class TokensWithoutSampling(GenerativeModel):
    """A token model that cannot sample: no prior (family 'test': the contract suite skips it)."""

    name = "test-vqvae-no-sampling"
    family = "test"
    Config = ModelConfig
    data_kinds = frozenset({DataKind.TOKENS})
    base_capabilities = frozenset()


def _quantizer(embed: list[list[float]], **options: object) -> VectorQuantizer:
    q = VectorQuantizer(len(embed), len(embed[0]), **options)
    q.reinitialise(torch.arange(len(embed)), torch.tensor(embed))
    return q


# ----- the quantiser ---------------------------------------------------------------------------------------------
def test_quantiser_picks_the_nearest_code_by_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    q = VectorQuantizer(37, 5)
    z = torch.randn(300, 5, generator=gen) * 2
    brute = torch.stack([((z[i] - q.embed) ** 2).sum(1).argmin() for i in range(len(z))])
    out = q(z)
    assert torch.equal(out.codes, brute)
    assert torch.allclose(out.z_q, q.embed[brute], atol=1e-6)


def test_straight_through_gradient_reaches_the_encoder_unchanged() -> None:
    q = _quantizer([[0.0, 0.0], [3.0, 3.0]], beta=0.0)
    z = torch.tensor([[1.0, 0.5], [2.0, 2.5], [4.0, 3.0]], requires_grad=True)
    upstream = torch.tensor([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.25]])
    (q(z).z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)


@pytest.mark.parametrize(("mode", "expected_loss"), [("ema", 0.5), ("loss", 1.5)])
def test_commitment_and_codebook_losses_on_a_hand_made_case(mode: str, expected_loss: float) -> None:
    """z = (1, 1) nearest to e_0 = (0, 0): commitment beta * mean((z - e_0)^2) = 0.5 * 1; the codebook loss adds
    mean((e_0 - z)^2) = 1. Gradients: d/dz = beta * 2 (z - e_0) / 2 elements = 0.5; d/de_0 = 2 (e_0 - z) / 2 = -1."""
    q = _quantizer([[0.0, 0.0], [3.0, 3.0]], update=mode, beta=0.5)
    z = torch.tensor([[1.0, 1.0]], requires_grad=True)
    out = q(z)
    assert out.codes.tolist() == [0]
    assert out.loss.item() == pytest.approx(expected_loss, abs=1e-6)
    out.loss.backward()
    assert torch.allclose(z.grad, torch.full((1, 2), 0.5))
    if mode == "loss":
        assert torch.allclose(q.embed.grad, torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))


def test_ema_update_is_the_laplace_smoothed_running_average() -> None:
    """K = 2 codes at 0 and 10 (one pseudo-observation each), g = 0.75, eps = 0.5, batch z = 1, 3 (-> code 0) and
    9 (-> code 1): N = (0.75 + 0.25 * 2, 0.75 + 0.25) = (1.25, 1), m = (0.25 * 4, 7.5 + 0.25 * 9) = (1, 9.75),
    N~ = (N + 0.5) / (2.25 + 2 * 0.5) * 2.25 = (1.75, 1.5) * 2.25 / 3.25, e = m / N~."""
    q = _quantizer([[0.0], [10.0]], decay=0.75, eps=0.5)
    z = torch.tensor([[1.0], [3.0], [9.0]])
    out = q(z)
    assert out.codes.tolist() == [0, 0, 1]
    q.update(z, out.codes)
    assert torch.allclose(q.ema_count, torch.tensor([1.25, 1.0]))
    assert torch.allclose(q.ema_sum, torch.tensor([[1.0], [9.75]]))
    expected = torch.tensor([[1.0 * 3.25 / (1.75 * 2.25)], [9.75 * 3.25 / (1.5 * 2.25)]])
    assert torch.allclose(q.embed, expected)


def test_the_loss_mode_codebook_is_not_moved_by_update() -> None:
    q = _quantizer([[0.0], [10.0]], update="loss")
    z = torch.tensor([[1.0], [9.0]])
    q.update(z, q(z).codes)
    assert torch.equal(q.embed.detach(), torch.tensor([[0.0], [10.0]]))


@pytest.mark.parametrize("mode", ["ema", "loss"])
def test_a_code_unused_for_restart_after_updates_is_restarted_from_an_encoder_output(mode: str) -> None:
    q = _quantizer([[0.0, 0.0], [5.0, 5.0], [100.0, 100.0]], update=mode, restart_after=2)
    z = torch.tensor([[0.5, 0.0], [4.0, 5.0], [5.0, 6.0]])
    q.update(z, q(z).codes)
    assert q.idle.tolist() == [0, 0, 1], "restarted one update early"
    assert torch.allclose(q.embed[2], torch.tensor([100.0, 100.0]), atol=1e-3)
    q.update(z, q(z).codes)
    assert q.idle.tolist() == [0, 0, 0]
    assert any(torch.equal(q.embed[2].detach(), row) for row in z), "a dead code restarts at an encoder output"
    if mode == "ema":
        assert q.ema_count[2] == 1.0 and torch.equal(q.ema_sum[2], q.embed[2])
    never = _quantizer([[0.0, 0.0], [100.0, 100.0]], restart_after=0)
    for _ in range(5):
        never.update(z, never(z).codes)
    assert torch.allclose(never.embed[1], torch.tensor([100.0, 100.0]), atol=1e-3)


def test_code_perplexity_is_the_exponentiated_entropy_of_the_histogram() -> None:
    assert code_perplexity(torch.tensor([3, 3, 3]), 8) == (pytest.approx(1.0), 1)
    assert code_perplexity(torch.arange(8).repeat(3), 8) == (pytest.approx(8.0), 8)
    # p = (1/2, 1/4, 1/4): entropy 1.5 bits, perplexity 2^1.5
    assert code_perplexity(torch.tensor([0, 0, 1, 2]), 4) == (pytest.approx(2**1.5), 3)


# ----- the model -------------------------------------------------------------------------------------------------
def _model(**overrides: object) -> VQVAE:
    torch.manual_seed(0)
    return build_model("vqvae", tiny_dataset(DataKind.IMAGE).info, {**SMOKE, **overrides})


def test_the_decoder_likelihood_is_a_discretized_logistic_over_the_data_levels() -> None:
    """A sharp logistic centred on each pixel's level c_k = 2k/(L-1) - 1 gives log p(x|z) ~ 0; centred on the upper
    edge of each pixel's bin, half its mass falls in the bin: log(1/2) per pixel (all of it for the top level, whose
    bin is open above)."""
    model = _model()
    x = next(tiny_dataset(DataKind.IMAGE).batches("val", 3)).x
    levels = model.data.levels
    centre = 2 * (x * (levels - 1)).round() / (levels - 1) - 1
    sharp = torch.full_like(x, -6.0)
    assert torch.allclose(model.log_px_given_z(x, torch.cat([centre, sharp], 1)), torch.zeros(3), atol=1e-3)
    edge = centre + 1 / (levels - 1)  # on the upper edge of each bin: half of a sharp logistic's mass inside
    inner = (x < 1).flatten(1).sum(1)  # the top level's bin is open above: all its mass is inside
    assert torch.allclose(model.log_px_given_z(x, torch.cat([edge, sharp], 1)), inner * math.log(0.5), atol=1e-2)


def test_decode_gives_the_logistic_location_in_data_units() -> None:
    """A last decoder layer that outputs location 0.2 (network units [-1, 1]) everywhere decodes to (0.2 + 1) / 2."""
    model = _model()
    last = model.decoder[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.2, -3.0]))
    assert torch.allclose(model.decode(torch.zeros(2, 4, 4, dtype=torch.long)), torch.full((2, 1, 8, 8), 0.6))


def test_the_autoencoder_minimises_reconstruction_nll_per_dim_plus_the_quantiser_loss() -> None:
    class Spy:
        stage = Stage("autoencoder", optimizers=("autoencoder",))

        def step(self, name: str, loss: torch.Tensor) -> None:
            self.name, self.loss = name, loss

    model, spy = _model(), Spy()
    logged = model.training_step(tiny_dataset(DataKind.IMAGE).batch_at(0, 16, seed=0), 0, spy)
    assert spy.name == "autoencoder"
    assert spy.loss.item() == pytest.approx(logged["rec_bpd"] * math.log(2) + logged["vq_loss"], rel=1e-5)
    assert logged["vq_loss"] > 0


def test_code_grids_keep_image_positions_in_raster_order() -> None:
    """encode: code (r, c) is the nearest code of the encoder output at (r, c); decode: changing the code at the
    top-right corner changes pixels there, not in the far bottom-left corner (outside the decoder's reach without
    residual blocks)."""
    model = _model(res_blocks=0)
    x = next(tiny_dataset(DataKind.IMAGE).batches("val", 3)).x
    with torch.no_grad():
        model.setup(Batch(x))  # codes spread over these encoder outputs: not one code everywhere
        z = model.encoder(model.preprocess(x))  # (B, D, 4, 4)
    codes = model.encode(x)
    assert len(codes.unique()) > 8
    for r, c in itertools.product(range(4), range(4)):
        assert torch.equal(codes[:, r, c], model.quantizer.nearest(z[:, :, r, c]))
    changed = codes.clone()
    changed[:, 0, 3] = (codes[:, 0, 3] + 1) % model.config.num_codes
    diff = (model.decode(changed) - model.decode(codes)).abs()[:, 0]
    assert (diff[:, 6:, :2] == 0).all() and (diff[:, :2, 6:] > 0).any()
    assert torch.equal(model.decode(codes.flatten(1)), model.decode(codes)), "raster sequences decode alike"


def test_setup_starts_every_code_at_a_distinct_encoder_output() -> None:
    model = _model()
    batch = tiny_dataset(DataKind.IMAGE).batch_at(0, 16, seed=0)
    with torch.no_grad():
        model.setup(batch)
        z = model._encode(batch.x)
    distances = (model.quantizer.embed[:, None] - z[None]).norm(dim=-1)
    assert (distances.min(1).values < 1e-6).all()
    assert len(set(distances.argmin(1).tolist())) == model.config.num_codes


@pytest.fixture(scope="module")
def trained() -> tuple[VQVAE, dict[str, float], dict[str, float]]:
    """A small vqvae trained briefly on digits (autoencoder, then prior): validation before and after stage 1."""
    data = genzoo.load_dataset("digits")
    torch.manual_seed(0)
    model = build_model("vqvae", data.info, {"num_codes": 32, "code_dim": 8, "width": 24, "res_blocks": 1,
                                             "restart_after": 10,
                                             "prior_config": {"layers": 1, "heads": 2, "width": 32}})
    val = data.examples("val")
    with torch.no_grad():
        before = model.validation_step(val, torch.Generator().manual_seed(0))
    model.setup(data.batch_at(0, 64, seed=0))
    optim = Optimizers(model.configure_optimizers())
    for stage, steps in zip(model.stages, (100, 100), strict=True):
        optim.stage = stage
        for step in range(steps):
            model.training_step(data.batch_at(step, 64, seed=0), step, optim)
    model.eval()
    with torch.no_grad():
        after = model.validation_step(val, torch.Generator().manual_seed(0))
    return model, before, after


def test_training_improves_reconstructions_and_keeps_codes_in_use(trained: tuple) -> None:
    _, before, after = trained
    assert after["val_mse"] < 0.3 * before["val_mse"]
    assert after["val_rec_bpd"] < before["val_rec_bpd"] - 1.0
    assert after["val_perplexity"] > 12, "code usage collapsed (of 32 codes)"
    assert after["val_prior"] < math.log(32) - 0.3, "the prior learned nothing beyond uniform codes"


def test_decoded_prior_samples_re_encode_to_their_codes(trained: tuple) -> None:
    """A sample is the decoded prior sample; re-encoding it finds its codes far above chance (1 / perplexity), and
    where it finds another code, that code decodes to nearly the same image."""
    model, _, after = trained
    codes = model.prior.sample(256, seed=5).view(256, *model.grid)
    samples = model.sample(256, seed=5)
    assert torch.equal(samples, model.decode(codes)), "a sample is the decoded prior sample, from the same seed"
    again = model.encode(samples)
    assert (again == codes).float().mean() > 0.3
    assert (model.decode(again) - samples).pow(2).mean() < 0.5 * after["val_mse"]


def test_task_metrics_measure_reconstruction_code_usage_and_the_prior(trained: tuple) -> None:
    model, _, _ = trained
    test = genzoo.load_dataset("digits").examples("test")
    metrics = model.task_metrics(test, torch.Generator().manual_seed(0))
    codes = model.encode(test.x)
    mse = (model.reconstruct(test.x) - test.x).pow(2).mean()
    assert metrics["reconstruction_mse_error"] == pytest.approx(float(mse), rel=1e-5)
    assert (metrics["code_perplexity"], metrics["codes_used"]) == pytest.approx(code_perplexity(codes, 32))
    with torch.no_grad():
        nll = -model.prior.log_likelihood(codes.flatten(1)).values.mean() / 16
    assert metrics["prior_nll_per_code"] == pytest.approx(float(nll), rel=1e-5)
    with torch.no_grad():
        log_px = model.log_likelihood(test.x).values - model.prior.log_likelihood(codes.flatten(1)).values
    assert metrics["reconstruction_bits_per_dim"] == pytest.approx(float(-log_px.mean()) / (64 * math.log(2)),
                                                                   rel=1e-4)


def test_the_prior_stage_leaves_the_autoencoder_unchanged_and_vice_versa() -> None:
    model = _model()
    data = tiny_dataset(DataKind.IMAGE)
    optim = Optimizers(model.configure_optimizers())

    def snapshot() -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in model.state_dict().items()}

    assert model.stages[1].optimizers == ("prior.model", "prior.muon")  # the default gpt prior's AdamW and Muon
    for stage, trains in zip(model.stages, ("autoencoder", "prior"), strict=True):
        optim.stage = stage
        before = snapshot()
        for step in range(3):
            model.training_step(data.batch_at(step, 16, seed=0), step, optim)
        after = snapshot()
        changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
        assert changed == ({"prior"} if trains == "prior" else {"encoder", "quantizer", "decoder"}), stage.name


def test_the_bound_is_one_term_of_the_exact_sum_over_code_grids() -> None:
    """2x2 grid of 3 codes: log p(x) = logsumexp over all 81 grids of log p(z) + log p(x|z), enumerated."""
    model = _model(num_codes=3, downsample=2).eval()
    x = next(tiny_dataset(DataKind.IMAGE).batches("val", 4)).x
    grids = torch.tensor(list(itertools.product(range(3), repeat=4)))
    with torch.no_grad():
        log_prior = model.prior.log_likelihood(grids).values
        out = model._decode(model.quantizer.lookup(grids.flatten()))
        joint = torch.stack([model.log_px_given_z(xi.expand(81, -1, -1, -1), out) for xi in x]) + log_prior
    exact = torch.logsumexp(joint, 1)
    bound = model.log_likelihood(x)
    assert bound.kind == "lower_bound" and bound.discrete
    assert (bound.values <= exact + 1e-4).all()
    codes = model.encode(x).flatten(1)
    index = (codes * torch.tensor([27, 9, 3, 1])).sum(1)
    assert torch.allclose(bound.values, joint[torch.arange(4), index], atol=1e-4)
    assert torch.exp(torch.logsumexp(log_prior, 0)).item() == pytest.approx(1.0, abs=1e-5), "prior sums to 1"


def test_sampling_options_reach_the_prior() -> None:
    model = _model()
    greedy = model.sample(4, seed=0, temperature=0.0)
    assert all(torch.equal(greedy[0], g) for g in greedy), "greedy prior sampling gives one code grid"
    assert torch.equal(model.sample(4, seed=1, top_k=1), greedy)
    assert model.cost().nfe_per_sample == 16 + 1, "16 codes from the prior, then one decoder pass"


def test_the_prior_is_built_by_name_for_the_code_sequences() -> None:
    model = _model(num_codes=12)
    assert type(model.prior) is model_class("gpt")
    codes = model.prior.data
    assert codes.kind is DataKind.TOKENS and codes.shape == (16,) and codes.levels == 12
    other = _model(prior="lstm", prior_config={})
    assert type(other.prior) is model_class("lstm")
    assert other.sample(2, seed=0).shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match="vqvae prior 'no-such-model'"):
        _model(prior="no-such-model")
    with pytest.raises(ConfigError, match="vqvae prior 'test-vqvae-no-sampling' cannot sample"):
        _model(prior="test-vqvae-no-sampling", prior_config={})
    with pytest.raises(ConfigError, match="vqvae prior 'dcgan'"):
        _model(prior="dcgan", prior_config={})
    with pytest.raises(ConfigError, match=r"vqvae prior 'gpt'.*layerz"):
        _model(prior_config={"layerz": 1})


def test_bad_inputs_are_clear_errors() -> None:
    model = _model()
    with pytest.raises(GenzooError, match="integer code grids"):
        model.decode(torch.zeros(2, 4, 4))
    with pytest.raises(GenzooError, match=r"codes must be in 0 \.\. 15"):
        model.decode(torch.full((2, 4, 4), 16))
    with pytest.raises(ConfigError, match="do not halve"):
        _model(downsample=4)
    info = tiny_dataset(DataKind.IMAGE).info
    with pytest.raises(ConfigError, match="discrete levels"):
        build_model("vqvae", type(info)(kind=info.kind, shape=info.shape, levels=None), SMOKE)


def test_a_run_saves_both_stages_and_resumes_mid_stage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One run directory holds autoencoder and prior; killed in stage 2 and resumed, it equals the uninterrupted run
    (the contract suite's resume test extends a finished 3-step run instead, which moves a staged model's stage
    boundary: see docs/vqvae.md)."""
    data = tiny_dataset(DataKind.IMAGE)

    def train(out: Path, **settings: object) -> Path:
        return genzoo.train("vqvae", data, steps=6, out=out, seed=3, overrides=SMOKE, **{**FAST, **settings})

    whole = train(tmp_path / "whole")
    real_step = Trainer._train_step

    def interrupted(self: Trainer) -> dict[str, float]:
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path / "split", checkpoint_every=4)
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    split = train(tmp_path / "split", checkpoint_every=4, resume=True)
    a, b = load_tensors(whole / "last" / "model.safetensors"), load_tensors(split / "last" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("prior.") for k in a) and "quantizer.embed" in a
    assert all(torch.equal(a[k], b[k]) for k in a)
    loaded = genzoo.load(whole, checkpoint="last")
    assert Capability.LIKELIHOOD_BOUND in loaded.capabilities
    assert torch.equal(loaded.sample(3, seed=0), genzoo.load(whole, checkpoint="last").sample(3, seed=0))


def test_batch_of_codes_is_what_the_prior_trains_on() -> None:
    """Stage 2 feeds the prior the encoder's raster-order codes: its loss is the prior's NLL of those codes."""
    model = _model()
    x = tiny_dataset(DataKind.IMAGE).batch_at(0, 16, seed=0).x
    optim = Optimizers(model.configure_optimizers())
    optim.stage = model.stages[1]
    expected = model.prior.validation_step(Batch(model.encode(x).flatten(1)), torch.Generator())["val_loss"]
    assert model.training_step(Batch(x), 0, optim)["prior_loss"] == pytest.approx(expected, rel=1e-5)
