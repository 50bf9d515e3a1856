"""GANs: the gradient penalty, the alternating updates, the DCGAN loss, shapes, and the MMD they validate with."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.metrics import median_bandwidth, mmd2_unbiased
from genzoo.models.gan.dcgan import discriminator_loss
from genzoo.models.gan.wgan_gp import gradient_penalty
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
