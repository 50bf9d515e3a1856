"""StyleGAN: demodulation, truncation, style mixing, noise inputs, R1 and the losses, against hand-computed answers."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.gan.stylegan import StyleGAN, minibatch_std, r1_penalty
from genzoo.nn.style import EqualConv2d, EqualLinear, ModulatedConv2d, demodulation, pixel_norm, scaled_lrelu
from genzoo.registry import build_model

SMALL = {"latent_dim": 16, "width": 8, "mapping_layers": 2}


def model_for(shape: tuple[int, ...], **hparams: object) -> StyleGAN:
    torch.manual_seed(0)
    model = build_model("stylegan", DataInfo(kind=DataKind.IMAGE, shape=shape, levels=256), {**SMALL, **hparams})
    assert isinstance(model, StyleGAN)
    return model.eval()


def coarse(x: torch.Tensor) -> torch.Tensor:
    """Low-pass features: the image averaged over 8x8 blocks."""
    return F.avg_pool2d(x, 8).flatten(1)


def fine(x: torch.Tensor) -> torch.Tensor:
    """High-pass detail: the image less its 4x4 block means."""
    return (x - F.interpolate(F.avg_pool2d(x, 4), scale_factor=4)).flatten(1)


def set_noise_strength(model: StyleGAN, value: float) -> None:
    with torch.no_grad():
        for layer in model.generator.synthesis.layers:
            layer.noise_strength.fill_(value)


# ----- modulated convolution ----------------------------------------------------------------------------------
def _random_modconv(demodulate: bool = True) -> ModulatedConv2d:
    torch.manual_seed(0)
    conv = ModulatedConv2d(16, 8, 3, w_dim=4, demodulate=demodulate)
    with torch.no_grad():  # styles far from the identity, some negative
        conv.affine.bias.normal_(0.0, 2.0)
    return conv


def test_demodulated_weights_have_unit_norm_per_output_channel() -> None:
    weight, styles = torch.randn(8, 16, 3, 3), torch.randn(5, 16) * 3
    modulated = weight.unsqueeze(0) * styles[:, None, :, None, None]  # (B, out, in, k, k)
    norms = (modulated * demodulation(weight, styles)[:, :, None, None, None]).square().sum(dim=(2, 3, 4))
    torch.testing.assert_close(norms, torch.ones(5, 8), atol=1e-6, rtol=0)


def test_demodulation_gives_unit_output_variance_per_channel() -> None:
    # unit-variance input independent over channels and taps: Var out_o = sum_ik w''_oik^2 = 1 for every o
    conv = _random_modconv()
    w = torch.randn(1, 4).expand(4096, 4)  # one style, so each channel's variance is over inputs only
    x = torch.randn(4096, 16, 3, 3)
    with torch.no_grad():
        out = conv(x, w)[:, :, 1, 1]  # the centre pixel sees all nine taps, no padding
    torch.testing.assert_close(out.var(0), torch.ones(8), atol=0.08, rtol=0)  # 4096 samples: sd of var ~ 0.022
    with torch.no_grad():  # without demodulation the style sets the scale instead
        raw = _random_modconv(demodulate=False)(x, w)[:, :, 1, 1]
    assert (raw.var(0) - 1).abs().max() > 0.5


def test_the_unfused_modulated_convolution_equals_per_example_weights() -> None:
    conv = _random_modconv()
    x, w = torch.randn(3, 16, 6, 6), torch.randn(3, 4)
    with torch.no_grad():
        styles = conv.affine(w)
        weight = conv.weight * conv.scale
        per_example = weight.unsqueeze(0) * styles[:, None, :, None, None]
        per_example = per_example * demodulation(weight, styles)[:, :, None, None, None]
        expected = torch.cat([F.conv2d(x[i:i + 1], per_example[i], padding=1) for i in range(3)])
        torch.testing.assert_close(conv(x, w), expected, atol=1e-5, rtol=1e-5)


def test_pixel_norm_puts_z_on_the_sphere_of_radius_sqrt_dim() -> None:
    z = torch.randn(6, 16) * torch.arange(1, 7).unsqueeze(1)
    torch.testing.assert_close(pixel_norm(z).norm(dim=1), torch.full((6,), 4.0))


def test_equalised_layers_keep_unit_scale_whatever_their_learning_rate_multiplier() -> None:
    torch.manual_seed(0)
    x = torch.randn(4096, 256)
    for lr_mul in (1.0, 0.01):  # effective weights N(0, 1 / fan_in): unit-variance outputs; bias exactly bias_init
        layer = EqualLinear(256, 64, bias_init=1.0, lr_mul=lr_mul)
        with torch.no_grad():
            y = layer(x)
        torch.testing.assert_close(y.mean(0), torch.ones(64), atol=0.15, rtol=0)
        assert y.var(0).mean().item() == pytest.approx(1.0, abs=0.05)
    conv = EqualConv2d(32, 16, 3)
    with torch.no_grad():
        out = conv(torch.randn(512, 32, 3, 3))[:, :, 1, 1]
    assert out.var(0).mean().item() == pytest.approx(1.0, abs=0.05)


def test_scaled_leaky_relu_keeps_the_second_moment() -> None:
    # E[(sqrt 2 lrelu(x))^2] = 2 (1 + 0.2^2) / 2 = 1.04 for x ~ N(0, 1)
    x = torch.randn(1_000_000, generator=torch.Generator().manual_seed(0))
    assert scaled_lrelu(x).square().mean().item() == pytest.approx(1.04, abs=0.005)


def test_minibatch_std_appends_the_mean_feature_deviation() -> None:
    x = torch.randn(6, 3, 2, 2)
    out = minibatch_std(x)
    assert out.shape == (6, 4, 2, 2) and torch.equal(out[:, :3], x)
    torch.testing.assert_close(out[:, 3], x.std(0, unbiased=False).mean().expand(6, 2, 2))


# ----- sizes ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "layers"), [((1, 8, 8), 3), ((1, 28, 28), 5), ((3, 32, 32), 7)])
def test_resolutions_grow_from_the_base_to_the_data_size(shape: tuple[int, ...], layers: int) -> None:
    model = model_for(shape)
    assert model.num_layers == layers  # one layer at the base resolution, two per doubling
    x = model.sample(2, seed=0)
    assert x.shape == (2, *shape) and x.min() >= 0 and x.max() <= 1


def test_vector_data_is_refused() -> None:
    with pytest.raises(ConfigError, match="image"):
        build_model("stylegan", DataInfo(kind=DataKind.VECTOR, shape=(2,)), SMALL)


# ----- truncation -----------------------------------------------------------------------------------------------
def test_truncation_zero_gives_the_mean_style_image() -> None:
    model = model_for((1, 8, 8))
    with torch.no_grad():
        model.generator.w_avg.normal_()
        w_avg = model.generator.w_avg.clone()
        out = model.sample(4, seed=3, truncation=0.0, noise=0.0)
        ws = w_avg.expand(1, model.num_layers, -1)
        silent = [0 * n for n in model.generator.synthesis.noise(1)]
        mean_image = model.postprocess(model.generator.synthesis(ws, silent))
    torch.testing.assert_close(out, mean_image.expand(4, -1, -1, -1), atol=1e-6, rtol=0)


def test_truncation_moves_w_towards_w_avg_by_psi() -> None:
    model = model_for((1, 8, 8))
    g = model.generator
    with torch.no_grad():
        g.w_avg.normal_()
        z = torch.randn(5, 16)
        w = g.mapping(z)
        torch.testing.assert_close(g.styles(z, psi=0.25)[:, -1], g.w_avg + 0.25 * (w - g.w_avg))
        torch.testing.assert_close(g.styles(z, psi=1.0)[:, 0], w, atol=0, rtol=0)
    assert torch.equal(model.sample(3, seed=1), model.sample(3, seed=1, truncation=1.0))
    assert not torch.equal(model.sample(3, seed=1), model.sample(3, seed=1, truncation=0.7))


def test_w_avg_tracks_the_mean_of_w_during_training() -> None:
    model = model_for((1, 8, 8), w_avg_beta=0.9, mixing_prob=0.0)
    model.train()
    before = copy.deepcopy(model.generator.mapping)
    batch, optim = Batch(torch.rand(8, 1, 8, 8)), Optimizers(model.configure_optimizers())
    torch.manual_seed(5)
    model.training_step(batch, 1, optim)
    torch.manual_seed(5)
    z = torch.randn(8, 16)  # the step's first draw: its latents
    with torch.no_grad():
        expected = 0.1 * before(z).mean(0)  # 0.9 * 0 + 0.1 * mean w
    torch.testing.assert_close(model.generator.w_avg, expected)


# ----- style mixing ---------------------------------------------------------------------------------------------
def test_mixing_gives_layers_before_mix_at_the_first_style_and_the_rest_the_second() -> None:
    model = model_for((1, 8, 8))
    g = model.generator
    z, z_mix = torch.randn(2, 16), torch.randn(2, 16)
    with torch.no_grad():
        w, w_mix = g.mapping(z), g.mapping(z_mix)
        for at in range(model.num_layers + 1):
            ws = g.styles(z, z_mix, at)
            for layer in range(model.num_layers):
                assert torch.equal(ws[:, layer], w if layer < at else w_mix), (at, layer)


def test_each_resolutions_torgb_takes_the_style_of_its_last_layer() -> None:
    synthesis = model_for((1, 32, 32)).generator.synthesis
    seen: list[torch.Tensor] = []
    hooks = [m.register_forward_hook(lambda _, args, __: seen.append(args[1])) for m in synthesis.to_rgb]
    ws = torch.randn(2, synthesis.num_layers, 16)  # a different style for every layer
    with torch.no_grad():
        synthesis(ws, synthesis.noise(2))
    for hook in hooks:
        hook.remove()
    assert [len(block) for block in synthesis.blocks] == [1, 2, 2, 2]
    for block, w in zip(synthesis.blocks, seen, strict=True):
        assert torch.equal(w, ws[:, block[-1]])


def test_mixing_at_the_ends_is_one_seed_or_the_other() -> None:
    model = model_for((1, 8, 8))
    a, b = model.sample(3, seed=1, noise=0.0), model.sample(3, seed=2, noise=0.0)
    torch.testing.assert_close(model.sample(3, seed=1, mix_seed=2, mix_at=0, noise=0.0), b, atol=1e-6, rtol=0)
    torch.testing.assert_close(model.sample(3, seed=1, mix_seed=2, mix_at=3, noise=0.0), a, atol=1e-6, rtol=0)
    assert torch.equal(model.mix(1, 2, 1), model.sample(1, seed=1, mix_seed=2, mix_at=1))
    assert torch.equal(model.sample(2, seed=1, mix_seed=2), model.sample(2, seed=1, mix_seed=2, mix_at=1))  # middle


def test_training_batches_mix_two_latents_at_one_layer_with_mixing_prob() -> None:
    model = model_for((1, 32, 32), mixing_prob=1.0)
    cutoffs = set()
    for seed in range(8):
        torch.manual_seed(seed)
        ws = model._training_styles(3, torch.device("cpu"))
        changes = [i for i in range(1, model.num_layers) if not torch.equal(ws[:, i], ws[:, i - 1])]
        assert len(changes) == 1  # two groups of layers: [0, at) and [at, num_layers)
        cutoffs.add(changes[0])
    assert len(cutoffs) > 2 and cutoffs <= set(range(1, model.num_layers))
    model.config.mixing_prob = 0.0
    ws = model._training_styles(3, torch.device("cpu"))
    assert all(torch.equal(ws[:, i], ws[:, 0]) for i in range(model.num_layers))


def test_validation_draws_its_noise_from_the_validation_generator() -> None:
    model = model_for((1, 8, 8))
    set_noise_strength(model, 0.5)
    batch = Batch(torch.rand(16, 1, 8, 8))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    with torch.no_grad():
        first = model.validation_step(batch, torch.Generator().manual_seed(7))
        second = model.validation_step(batch, torch.Generator().manual_seed(7))
    assert first == second
    assert torch.equal(torch.get_rng_state(), state), "validation must not draw from the global generator"


def test_mixing_takes_coarse_features_from_the_early_layers_seed() -> None:
    # 32x32: layer 0 at 4x4, layers 1-2 at 8x8, 3-4 at 16x16, 5-6 at 32x32. Late mix (B only at 32x32): the coarse
    # features are A's; early mix (A only at 4x4): they are B's. A broken or reversed mix fails one of the two.
    model = model_for((1, 32, 32))
    n = 16
    a, b = model.sample(n, seed=1, noise=0.0), model.sample(n, seed=2, noise=0.0)
    late = model.sample(n, seed=1, mix_seed=2, mix_at=5, noise=0.0)
    early = model.sample(n, seed=1, mix_seed=2, mix_at=1, noise=0.0)

    def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (coarse(x) - coarse(y)).norm(dim=1)

    assert dist(late, a).mean() < 0.6 * dist(late, b).mean()
    assert (dist(late, a) < dist(late, b)).float().mean() >= 0.75
    assert dist(early, b).mean() < dist(early, a).mean()


def test_mixing_options_are_checked() -> None:
    model = model_for((1, 8, 8))
    with pytest.raises(ConfigError, match="mix_seed"):
        model.sample(1, mix_at=1)
    with pytest.raises(ConfigError, match=r"layers 0\.\.2"):
        model.sample(1, mix_seed=3, mix_at=4)
    with pytest.raises(ConfigError, match="truncation"):
        model.sample(1, truncation=1.5)


# ----- noise inputs ---------------------------------------------------------------------------------------------
def test_noise_is_drawn_from_the_sampling_seed_and_enters_through_its_strengths() -> None:
    model = model_for((1, 8, 8))
    # at initialisation the strengths are 0: noise has no effect
    torch.testing.assert_close(model.sample(2, seed=4), model.sample(2, seed=4, noise=0.0), atol=0, rtol=0)
    set_noise_strength(model, 0.5)
    assert torch.equal(model.sample(2, seed=4), model.sample(2, seed=4))
    assert not torch.allclose(model.sample(2, seed=4), model.sample(2, seed=4, noise=0.0))
    g, z = model.generator, torch.randn(2, 16)
    with torch.no_grad():
        first = g(z, generator=torch.Generator().manual_seed(1))
        assert torch.equal(first, g(z, generator=torch.Generator().manual_seed(1)))
        assert not torch.allclose(first, g(z, generator=torch.Generator().manual_seed(2)))


def test_noise_changes_fine_detail_not_the_coarse_image() -> None:
    model = model_for((1, 32, 32))
    set_noise_strength(model, 0.3)
    g = model.generator
    with torch.no_grad():
        z, other_z = torch.randn(16, 16), torch.randn(16, 16)
        x = g(z, generator=torch.Generator().manual_seed(1))
        new_noise = g(z, generator=torch.Generator().manual_seed(2)) - x
        new_style = g(other_z, generator=torch.Generator().manual_seed(1)) - x

    def fine_share(d: torch.Tensor) -> float:
        return float(fine(d).square().sum() / d.flatten(1).square().sum())

    assert fine_share(new_noise) > 2 * fine_share(new_style)
    assert coarse(new_noise).norm() < 0.5 * coarse(new_style).norm()


# ----- interpolation in w ---------------------------------------------------------------------------------------
def test_interpolation_runs_from_seed_a_to_seed_b_in_w() -> None:
    model = model_for((1, 8, 8))
    set_noise_strength(model, 0.5)
    frames = model.interpolate_seeds(1, 2, n=5)
    assert frames.shape == (5, 1, 8, 8)
    torch.testing.assert_close(frames[0], model.sample(1, seed=1)[0], atol=1e-5, rtol=0)
    still = model.interpolate_seeds(1, 2, n=5, noise=0.0)
    torch.testing.assert_close(still[-1], model.sample(1, seed=2, noise=0.0)[0], atol=1e-5, rtol=0)
    g = model.generator
    with torch.no_grad():  # the middle frame is the image of the mean of the two w's
        w_a, w_b = g.mapping(torch.randn(1, 16, generator=torch.Generator().manual_seed(1))), g.mapping(
            torch.randn(1, 16, generator=torch.Generator().manual_seed(2)))
        ws = ((w_a + w_b) / 2).expand(1, model.num_layers, -1)
        middle = model.postprocess(g.synthesis(ws, [0 * n for n in g.synthesis.noise(1)]))
    torch.testing.assert_close(still[2], middle[0], atol=1e-5, rtol=0)
    with pytest.raises(GenzooError, match="at least 2"):
        model.interpolate_seeds(1, 2, n=1)


# ----- losses -----------------------------------------------------------------------------------------------------
def test_r1_of_a_linear_discriminator_is_the_squared_weight_norm() -> None:
    a = torch.randn(12, requires_grad=True)
    real = torch.randn(5, 3, 2, 2)
    r1 = r1_penalty(lambda x: x.flatten(1) @ a + 0.7, real)
    torch.testing.assert_close(r1, a.detach().square().sum())
    (grad,) = torch.autograd.grad(r1, a)  # differentiable in D's parameters: d/da |a|^2 = 2a
    torch.testing.assert_close(grad, 2 * a.detach())


def test_r1_averages_the_squared_gradient_norm_over_examples() -> None:
    real = torch.randn(4, 1, 3, 3)  # D(x) = |x|^2 / 2 has gradient x
    torch.testing.assert_close(r1_penalty(lambda x: x.flatten(1).square().sum(1) / 2, real),
                               real.flatten(1).square().sum(1).mean())


class Recording(Optimizers):
    """Optimizers that remember the loss each optimizer was stepped with."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.losses: dict[str, float] = {}

    def step(self, name: str, loss: torch.Tensor) -> None:
        self.losses[name] = loss.item()
        super().step(name, loss)


def test_losses_are_logistic_non_saturating_with_lazy_r1() -> None:
    model = model_for((1, 8, 8), r1_gamma=3.0, r1_every=2).train()
    real_images = torch.rand(8, 1, 8, 8)
    for step in (1, 2):
        before = copy.deepcopy(model)
        optim = Recording(model.configure_optimizers())
        torch.manual_seed(step)
        out = model.training_step(Batch(real_images), step, optim)
        torch.manual_seed(step)  # replay the step's draws on the weights before it
        ws = before._training_styles(8, torch.device("cpu"))
        fake = before.generator.synthesis(ws, before.generator.synthesis.noise(8))
        real = model.preprocess(real_images)
        with torch.no_grad():
            d_loss = F.softplus(before.discriminator(fake)).mean() + F.softplus(-before.discriminator(real)).mean()
            g_loss = F.softplus(-model.discriminator(fake)).mean()  # G's step sees the updated D
        assert out["d_loss"] == pytest.approx(d_loss.item(), rel=1e-5)
        assert out["g_loss"] == pytest.approx(g_loss.item(), rel=1e-5)
        assert optim.losses["generator"] == pytest.approx(out["g_loss"])
        if step % 2 == 0:  # R1 step: + gamma / 2 * r1_every * R1
            r1 = r1_penalty(before.discriminator, real).item()
            assert out["r1"] == pytest.approx(r1, rel=1e-5)
            assert optim.losses["discriminator"] == pytest.approx(out["d_loss"] + 3.0 / 2 * 2 * r1, rel=1e-5)
        else:
            assert "r1" not in out and optim.losses["discriminator"] == pytest.approx(out["d_loss"])
