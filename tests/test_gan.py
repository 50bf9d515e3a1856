"""GANs: the gradient penalty, the alternating updates, the DCGAN loss, shapes, the MMD they validate with, and the
training health every GAN shares (generator steps toward the data, D accuracy, the collapse warning, DiffAugment,
TTUR)."""

from __future__ import annotations

import copy
import itertools
import math
import warnings

import pytest
import torch
from torch import nn

from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError
from genzoo.metrics import median_bandwidth, mmd2_unbiased
from genzoo.models.gan.base import ModeCollapseWarning
from genzoo.models.gan.dcgan import discriminator_loss
from genzoo.models.gan.wgan_gp import gradient_penalty
from genzoo.nn.gan import _band, _translate, classifier_accuracy, critic_accuracy, diff_augment, mean_pairwise_distance
from genzoo.registry import build_model

SMALL = {"latent_dim": 4, "width": 4, "hidden": 16, "depth": 1}


def image_info(shape: tuple[int, ...]) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=shape, levels=256)


def test_gradient_penalty_of_a_linear_critic_is_hand_computed() -> None:
    # f(x) = w . x has gradient w everywhere, so the penalty is (|w| - 1)^2 whatever the interpolates
    torch.manual_seed(0)
    w = torch.randn(12, requires_grad=True)
    real, fake = torch.randn(5, 3, 2, 2), torch.randn(5, 3, 2, 2)
    gp = gradient_penalty(lambda x: x.flatten(1) @ w, real, fake, torch.rand(5))
    norm = w.detach().norm()
    assert gp.item() == pytest.approx(((norm - 1) ** 2).item(), rel=1e-5)
    # differentiable in the critic's parameters: d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w|
    (grad,) = torch.autograd.grad(gp, w)
    torch.testing.assert_close(grad, 2 * (norm - 1) * w.detach() / norm)


def test_gradient_penalty_is_zero_for_a_unit_norm_critic() -> None:
    w = torch.tensor([0.6, 0.8])
    gp = gradient_penalty(lambda x: x @ w, torch.randn(7, 2), torch.randn(7, 2), torch.rand(7))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_zero_centred_gradient_penalty_is_the_squared_gradient_norm() -> None:
    w = torch.tensor([0.6, 0.8, 1.2])
    gp = gradient_penalty(lambda x: x @ w, torch.randn(7, 3), torch.randn(7, 3), torch.rand(7), center=0.0)
    assert gp.item() == pytest.approx(w.square().sum().item(), rel=1e-6)


def test_wgan_gp_updates_the_generator_only_every_n_critic_steps() -> None:
    torch.manual_seed(0)
    model = build_model("wgan-gp", DataInfo(kind=DataKind.VECTOR, shape=(2,)), {**SMALL, "n_critic": 3})
    optim = Optimizers(model.configure_optimizers())
    x = torch.randn(8, 2)

    def flat(module: nn.Module) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in module.parameters()]).clone()

    for step in range(7):
        g_before, c_before = flat(model.generator), flat(model.critic)
        out = model.training_step(Batch(x), step, optim)
        assert not torch.equal(flat(model.critic), c_before), f"critic not updated at step {step}"
        updated = not torch.equal(flat(model.generator), g_before)
        assert updated == (step % 3 == 0), f"generator update at step {step}: {updated}"
        assert ("g_loss" in out) == updated
        assert all(math.isfinite(v) for v in out.values())


def test_dcgan_discriminator_loss_is_the_binary_cross_entropy() -> None:
    real, fake = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([-3.0, 0.0, 1.5])
    expected = -torch.log(torch.sigmoid(real)).mean() - torch.log(1 - torch.sigmoid(fake)).mean()
    assert discriminator_loss(real, fake).item() == pytest.approx(expected.item(), rel=1e-6)


def test_dcgan_training_step_reports_the_loss_of_the_networks_before_the_step() -> None:
    torch.manual_seed(1)
    model = build_model("dcgan", image_info((1, 8, 8)), SMALL)
    x = torch.rand(6, 1, 8, 8)
    twin = copy.deepcopy(model)
    torch.manual_seed(2)
    fake = twin.generator(torch.randn(6, 4))
    real_logits, fake_logits = twin.discriminator(x * 2 - 1), twin.discriminator(fake)
    d_expected = -(torch.log(torch.sigmoid(real_logits)).mean() + torch.log(1 - torch.sigmoid(fake_logits)).mean())
    torch.manual_seed(2)
    out = model.training_step(Batch(x), 0, Optimizers(model.configure_optimizers()))
    assert out["d_loss"] == pytest.approx(d_expected.item(), rel=1e-5)
    # the balance logged is that of the same logits: real called real (logit > 0), fake called fake
    assert out["d_acc_real"] == pytest.approx((real_logits > 0).float().mean().item())
    assert out["d_acc_fake"] == pytest.approx((fake_logits < 0).float().mean().item())
    assert out["d_acc"] == pytest.approx((out["d_acc_real"] + out["d_acc_fake"]) / 2)


def test_dcgan_uses_batch_norm_except_on_the_first_discriminator_layer_and_the_critic_none() -> None:
    dcgan = build_model("dcgan", image_info((1, 16, 16)), SMALL)
    d_layers = [m for m in dcgan.discriminator.modules() if isinstance(m, nn.Conv2d | nn.BatchNorm2d | nn.Identity)]
    assert isinstance(d_layers[0], nn.Conv2d) and not isinstance(d_layers[1], nn.BatchNorm2d)
    assert any(isinstance(m, nn.BatchNorm2d) for m in dcgan.discriminator.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in dcgan.generator.modules())
    wgan = build_model("wgan-gp", image_info((1, 16, 16)), SMALL)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in wgan.critic.modules())


SHAPES = [(1, 8, 8), (3, 16, 16), (1, 28, 28), (3, 32, 32), (1, 64, 64), (3, 12, 20)]


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_image_shapes(name: str, shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = build_model(name, image_info(shape), SMALL)
    x = torch.rand(3, *shape)
    out = model.training_step(Batch(x), 0, Optimizers(model.configure_optimizers()))
    assert {"d_loss", "g_loss"} <= set(out)
    critic = getattr(model, "critic", None) or model.discriminator
    assert critic(x).shape == (3,)
    samples = model.sample(5, seed=3)
    assert samples.shape == (5, *shape) and samples.dtype == torch.float32
    assert samples.min() >= 0 and samples.max() <= 1
    torch.testing.assert_close(samples, model.sample(5, seed=3), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp"])
def test_vector_samples_are_de_standardised_generator_outputs(name: str) -> None:
    info = DataInfo(kind=DataKind.VECTOR, shape=(3,), mean=(10.0, -5.0, 0.0), std=(2.0, 0.5, 1.0))
    model = build_model(name, info, SMALL).eval()
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(7))
    expected = model.generator(z).detach() * torch.tensor([2.0, 0.5, 1.0]) + torch.tensor([10.0, -5.0, 0.0])
    torch.testing.assert_close(model.sample(4, seed=7), expected)
    val = model.validation_step(Batch(torch.randn(6, 3) * 2 + 10), torch.Generator().manual_seed(0))
    assert math.isfinite(val["val_mmd"])
    # a one-example batch (the tail of a validation split) has no unbiased MMD: no value rather than a crash
    assert model.validation_step(Batch(torch.randn(1, 3)), torch.Generator().manual_seed(0)) == {}


def naive_mmd2(x: torch.Tensor, y: torch.Tensor, s: float) -> float:
    k = lambda a, b: math.exp(-float(((a - b) ** 2).sum()) / (2 * s * s))  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd_matches_the_u_statistic_and_median_heuristic() -> None:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 2, 2, generator=gen), torch.randn(4, 2, 2, generator=gen) + 0.5
    pooled = torch.cat([x, y]).flatten(1)
    distances = [float((pooled[i] - pooled[j]).norm()) for i in range(10) for j in range(10) if i != j]
    s = float(torch.tensor(distances, dtype=torch.float64).median())
    assert median_bandwidth(x, y).item() == pytest.approx(s, rel=1e-6)
    assert mmd2_unbiased(x, y).item() == pytest.approx(naive_mmd2(x, y, s), rel=1e-5)
    assert mmd2_unbiased(x, y, bandwidth=0.7).item() == pytest.approx(naive_mmd2(x, y, 0.7), rel=1e-5)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_shift() -> None:
    gen = torch.Generator().manual_seed(0)
    same = [mmd2_unbiased(torch.randn(200, 5, generator=gen), torch.randn(200, 5, generator=gen)).item()
            for _ in range(5)]
    assert all(abs(v) < 0.01 for v in same)
    assert min(same) < 0  # unbiased: it scatters around 0, not above it
    base = torch.randn(200, 5, generator=gen)
    shifted = [mmd2_unbiased(base, torch.randn(200, 5, generator=gen) + d, bandwidth=2.0).item()
               for d in (0.25, 0.5, 1.0, 2.0)]
    assert shifted == sorted(shifted) and shifted[0] > max(same)


# ----- every GAN: the generator's step moves its samples toward the data --------------------------------------------

def _toy(name: str) -> tuple[DataInfo, Batch, dict]:
    """A problem with one obvious direction: vectors (or image pixels) of the data sit far above G's initial output."""
    if name == "cgan":  # class-conditional, images only: two classes of bright 4x4 images
        info = DataInfo(kind=DataKind.IMAGE, shape=(1, 4, 4), levels=256, num_classes=2)
        y = torch.arange(64) % 2
        return info, Batch(torch.full((64, 1, 4, 4), 0.95), y), {**SMALL, "feature_dim": 8, "embed_dim": 2}
    # 2-D: in 1-D a critic's gradient cannot turn round without passing through norm 0, the penalty's barrier
    info = DataInfo(kind=DataKind.VECTOR, shape=(2,), mean=(0.0, 0.0), std=(1.0, 1.0))
    return info, Batch(3.0 + 0.1 * torch.randn(64, 2, generator=torch.Generator().manual_seed(0))), SMALL


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp", "cgan"])
def test_the_generator_step_moves_samples_toward_the_data(name: str) -> None:
    """D first learns the toy data apart from G's samples with G frozen (lr 0); then each generator step must bring
    G's samples of a fixed z closer to the data (a generator loss of the wrong sign pushes them away)."""
    info, batch, hparams = _toy(name)
    hparams = {**hparams, "lr_d": 1e-2, **({"n_critic": 1} if name == "wgan-gp" else {})}  # a quick D: TTUR
    torch.manual_seed(0)
    model = build_model(name, info, hparams)
    optims = model.configure_optimizers()
    optim = Optimizers(optims, grad_clip=None)
    z = torch.randn(64, hparams["latent_dim"])
    target = model.preprocess(batch.x).mean(0)

    def gap() -> float:
        with torch.no_grad():
            model.eval()
            fake = model.synthesize(z, batch.y)
            model.train()
        return (target - fake.mean(0)).norm().item()

    lr = optims["generator"].param_groups[0]["lr"]
    optims["generator"].param_groups[0]["lr"] = 0.0
    for step in range(30):
        out = model.training_step(batch, step, optim)
    assert out["d_acc"] > 0.95, "D should tell this toy data from the untrained generator's output"
    optims["generator"].param_groups[0]["lr"] = lr
    gaps = [gap()]
    for step in range(5):
        model.training_step(batch, step, optim)
        gaps.append(gap())
    assert all(b < a for a, b in itertools.pairwise(gaps)), f"{name}: distance to the data {gaps}"


# ----- discriminator balance -----------------------------------------------------------------------------------------

def test_classifier_and_critic_accuracy_are_hand_computed() -> None:
    real, fake = torch.tensor([2.0, -1.0, 0.5, 0.0]), torch.tensor([-3.0, 0.0, 1.5])
    # real > 0: 2 of 4 (a logit of exactly 0 is undecided: not counted right); fake < 0: 1 of 3
    assert classifier_accuracy(real, fake) == pytest.approx((0.5, 1 / 3))
    # pairs (r, f) with r > f: 2.0 beats all 3; -1.0 beats -3; 0.5 beats -3 and 0; 0.0 beats -3 -> 7 of 12
    assert critic_accuracy(real, fake) == pytest.approx(7 / 12)


def test_wgan_gp_logs_the_critics_share_of_correctly_ranked_pairs() -> None:
    torch.manual_seed(0)
    model = build_model("wgan-gp", DataInfo(kind=DataKind.VECTOR, shape=(2,)), SMALL)
    assert not model.scores_are_logits
    out = model.training_step(Batch(torch.randn(8, 2)), 1, Optimizers(model.configure_optimizers()))
    assert set(out) >= {"d_acc", "wasserstein", "gp"} and "d_acc_real" not in out
    assert 0.0 <= out["d_acc"] <= 1.0


# ----- mode collapse -----------------------------------------------------------------------------------------------

class _Constant(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.full((len(z), 8), 0.3)


class _Healthy(nn.Module):
    """Draws from the data's own distribution, N(0, I), one example per latent code."""

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z[:, :8]


def test_mean_pairwise_distance_is_hand_computed() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 4.0]])  # distances 5, 4, 3
    assert mean_pairwise_distance(x).item() == pytest.approx(4.0)


def test_the_collapse_warning_fires_once_when_diversity_falls_and_not_for_a_healthy_generator() -> None:
    info = DataInfo(kind=DataKind.VECTOR, shape=(8,), mean=(0.0,) * 8, std=(1.0,) * 8)
    model = build_model("dcgan", info, {**SMALL, "latent_dim": 8})
    model.generator = _Healthy()
    real = Batch(torch.randn(256, 8, generator=torch.Generator().manual_seed(1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModeCollapseWarning)  # any warning here fails the test
        for seed in range(3):
            val = model.validation_step(real, torch.Generator().manual_seed(seed))
            assert val["val_diversity"] == pytest.approx(1.0, abs=0.05)  # as varied as the data
    model.generator = _Constant()
    with pytest.warns(ModeCollapseWarning, match="mode collapse"):
        val = model.validation_step(real, torch.Generator().manual_seed(0))
    assert val["val_diversity"] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModeCollapseWarning)
        model.validation_step(real, torch.Generator().manual_seed(0))  # warned once per model, not every time


def test_the_collapse_warning_compares_with_the_best_diversity_so_far() -> None:
    """An untrained generator starts with little diversity; it is not collapsed, so no warning until it falls."""
    model = build_model("dcgan", DataInfo(kind=DataKind.VECTOR, shape=(8,)), {**SMALL, "collapse_ratio": 0.5})
    with warnings.catch_warnings():
        warnings.simplefilter("error", ModeCollapseWarning)
        for diversity in (0.1, 0.6, 0.31):
            model.warn_if_collapsed(diversity)
    with pytest.warns(ModeCollapseWarning):
        model.warn_if_collapsed(0.29)


# ----- DiffAugment ----------------------------------------------------------------------------------------------------

def test_translation_shifts_each_image_and_shifts_in_zeros() -> None:
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).view(2, 3, 4, 5) + 1
    out = _translate(x, torch.tensor([1, 0]), torch.tensor([0, -2]))
    torch.testing.assert_close(out[0, :, 1:], x[0, :, :-1])  # down by one row
    assert (out[0, :, 0] == 0).all()
    torch.testing.assert_close(out[1, :, :, :-2], x[1, :, :, 2:])  # left by two columns
    assert (out[1, :, :, -2:] == 0).all()


def test_cutout_band_and_square() -> None:
    assert _band(8, torch.tensor([4, 0]), 4).int().tolist() == [[0, 0, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]]
    x = torch.ones(200, 1, 8, 8)
    out = diff_augment(x, translation=0.0, cutout=0.5, generator=torch.Generator().manual_seed(0))
    zeros = (out == 0).flatten(1).sum(1)
    assert zeros.max() == 16 and zeros.min() >= 4  # a 4x4 square, cut by the border when centred near it
    assert (zeros == 16).float().mean() > 0.2


def test_diff_augment_keeps_shapes_and_is_differentiable() -> None:
    x = torch.randn(6, 3, 12, 20, requires_grad=True)
    out = diff_augment(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    out.sum().backward()  # d out / d x: 1 where a pixel was kept (moved), 0 where it was cut or shifted out
    assert set(x.grad.unique().tolist()) <= {0.0, 1.0} and 0 < x.grad.mean() < 1
    same = diff_augment(x, translation=0.0, cutout=0.0)
    torch.testing.assert_close(same, x)


@pytest.mark.parametrize("name", ["dcgan", "wgan-gp", "cgan"])
def test_diffaugment_reaches_real_and_fake_inputs_of_d_and_not_sampling(name: str) -> None:
    info = DataInfo(kind=DataKind.IMAGE, shape=(1, 8, 8), levels=256, num_classes=2)
    hparams = {**SMALL, "feature_dim": 8} if name == "cgan" else SMALL
    torch.manual_seed(0)
    plain = build_model(name, info, hparams)
    augmented = build_model(name, info, {**hparams, "diffaugment": True})
    augmented.load_state_dict(plain.state_dict())
    torch.testing.assert_close(augmented.sample(4, seed=1), plain.sample(4, seed=1), rtol=0, atol=0)
    seen: list[torch.Tensor] = []
    adversary = getattr(augmented, "critic", None) or augmented.discriminator
    adversary.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    x = torch.full((16, 1, 8, 8), 0.75)  # network units 0.5 everywhere: cut-out or shifted-in zeros stand out
    augmented.training_step(Batch(x, torch.arange(16) % 2), 0, Optimizers(augmented.configure_optimizers()))
    real, fake = seen[0], seen[1]
    assert real.shape == fake.shape == (16, 1, 8, 8)
    assert ((real == 0).flatten(1).sum(1) >= 4).all(), "every real image gets a cut-out"
    assert ((fake == 0).flatten(1).sum(1) >= 4).all(), "every fake image gets a cut-out"


def test_diffaugment_is_refused_for_vector_data() -> None:
    with pytest.raises(ConfigError, match="diffaugment"):
        build_model("dcgan", DataInfo(kind=DataKind.VECTOR, shape=(2,)), {**SMALL, "diffaugment": True})


# ----- TTUR -----------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("name", "lr", "expected"), [
    ("dcgan", {}, (2e-4, 2e-4)), ("dcgan", {"lr": 1e-3}, (1e-3, 1e-3)),
    ("dcgan", {"lr_g": 1e-4, "lr_d": 4e-4}, (1e-4, 4e-4)), ("wgan-gp", {"lr": 3e-4, "lr_g": 5e-5}, (5e-5, 3e-4)),
    ("cgan", {"lr_d": 1e-3}, (2e-4, 1e-3)),
])
def test_ttur_gives_generator_and_discriminator_their_own_learning_rates(name: str, lr: dict, expected: tuple) -> None:
    info = DataInfo(kind=DataKind.IMAGE, shape=(1, 8, 8), levels=256, num_classes=2)
    model = build_model(name, info, {**SMALL, **lr})
    optims = model.configure_optimizers()
    got = optims["generator"].param_groups[0]["lr"], optims["discriminator"].param_groups[0]["lr"]
    assert got == pytest.approx(expected)
    adversary = getattr(model, "critic", None) or model.discriminator
    ids = lambda params: {id(p) for p in params}  # noqa: E731
    assert ids(optims["discriminator"].param_groups[0]["params"]) == ids(adversary.parameters())
    assert ids(optims["generator"].param_groups[0]["params"]) == ids(model.generator.parameters())
