"""Mathematical properties of the flow layers (genzoo.nn.flow) and the flow models (realnvp, glow).

Each layer and each model is a bijection whose log-determinant must equal log|det| of its autograd Jacobian, in
float64 on inputs small enough for the full Jacobian; likelihoods must integrate to one and fit a known Gaussian
to its entropy; ActNorm's data-dependent initialisation must hold and persist; samples follow the temperature.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import Tensor

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError, GenzooError
from genzoo.eval.runner import model_likelihood
from genzoo.metrics import dequantize
from genzoo.models.flow.base import FlowModel
from genzoo.models.flow.glow import Glow
from genzoo.nn.flow import (
    ActNorm,
    AffineCoupling,
    FlowLayer,
    FlowSequential,
    InvConv1x1,
    LogitTransform,
    MultiScale,
    Squeeze,
    Squeezed,
    alternating_mask,
    channel_mask,
    checkerboard_mask,
    conv_conditioner,
    data_dependent_init,
    mlp_conditioner,
)
from genzoo.registry import build_model

MODELS = ["realnvp", "glow"]
TINY = {"realnvp": {"hidden": 6, "depth": 1, "mlp_width": 6, "couplings": 4},
        "glow": {"hidden": 6, "depth": 1, "mlp_width": 6, "steps": 2, "vector_steps": 2}}


def _randomise(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (zero-initialised output layers included) so that no layer is the identity."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=generator, dtype=p.dtype))
    return module.eval()


def _coupling(mask: Tensor, channels: int, image: bool) -> AffineCoupling:
    net = conv_conditioner(channels, 2 * channels, 5, 1, 0.0) if image else mlp_conditioner(channels, 7, 2)
    return AffineCoupling(mask, net, scale_bound=2.0)


def _multiscale(learned_prior: bool) -> MultiScale:
    """Two levels on (2, 4, 4): checkerboard, squeeze, channel coupling; split; checkerboard on (4, 2, 2)."""
    first = FlowSequential([_coupling(checkerboard_mask((2, 4, 4), 0), 2, True), Squeeze(),
                            _coupling(channel_mask((8, 2, 2), 1), 8, True)])
    last = FlowSequential([_coupling(checkerboard_mask((4, 2, 2), 1), 4, True)])
    return MultiScale([first, last], (2, 4, 4), learned_prior=learned_prior, hidden=5, scale_bound=2.0)


#: (name, per-example input shape, layer factory)
LAYERS: list[tuple[str, tuple[int, ...], Callable[[], FlowLayer]]] = [
    ("coupling-checkerboard", (2, 4, 4), lambda: _coupling(checkerboard_mask((2, 4, 4), 1), 2, True)),
    ("coupling-checkerboard-squeezed-net", (2, 4, 4), lambda: AffineCoupling(
        checkerboard_mask((2, 4, 4), 0), Squeezed(conv_conditioner(8, 16, 5, 1, 0.0)), scale_bound=2.0)),
    ("coupling-channel", (2, 4, 4), lambda: _coupling(channel_mask((2, 4, 4), 0), 2, True)),
    ("coupling-vector-alternating", (3,), lambda: _coupling(alternating_mask(3, 0), 3, False)),
    ("coupling-vector-halves", (4,), lambda: _coupling(channel_mask((4,), 1), 4, False)),
    ("squeeze", (2, 4, 4), Squeeze),
    ("actnorm-image", (2, 4, 4), lambda: ActNorm((2, 4, 4))),
    ("actnorm-vector", (3,), lambda: ActNorm((3,))),
    ("invconv-image", (2, 4, 4), lambda: InvConv1x1((2, 4, 4))),
    ("invconv-vector", (3,), lambda: InvConv1x1((3,))),
    ("logit", (1, 4, 4), lambda: LogitTransform(-1 / 32, 1 + 1 / 32, 0.05)),
    ("multiscale", (2, 4, 4), lambda: _multiscale(False)),
    ("multiscale-learned-prior", (2, 4, 4), lambda: _multiscale(True)),
    ("sequential", (3,), lambda: FlowSequential([ActNorm((3,)), InvConv1x1((3,)),
                                                 _coupling(alternating_mask(3, 1), 3, False)])),
]


def _layer(factory: Callable[[], FlowLayer]) -> FlowLayer:
    torch.manual_seed(0)
    return _randomise(factory().double())


def _inputs(shape: tuple[int, ...], n: int = 3) -> Tensor:
    """Values inside (0, 1) (valid for the logit transform too), spread enough to exercise the nets."""
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _jacobian_log_det(f: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """log|det df/dx| per example from the full autograd Jacobian of one example at a time."""
    out = []
    for example in x:
        jac = torch.autograd.functional.jacobian(lambda v: f(v.view(1, *x.shape[1:])).flatten(), example.flatten())
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


# ----- layers ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "shape", "factory"), LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_inverse_undoes_forward(name: str, shape: tuple[int, ...], factory: Callable[[], FlowLayer]) -> None:
    layer, x = _layer(factory), _inputs(shape)
    y, _ = layer(x)
    assert y.shape[1:] == layer.output_shape(shape)
    torch.testing.assert_close(layer.inverse(y), x, atol=1e-10, rtol=0)


@pytest.mark.parametrize(("name", "shape", "factory"), LAYERS, ids=[c[0] for c in LAYERS])
def test_layer_log_det_is_that_of_its_jacobian(name: str, shape: tuple[int, ...],
                                               factory: Callable[[], FlowLayer]) -> None:
    layer, x = _layer(factory), _inputs(shape)
    expected = _jacobian_log_det(lambda v: layer(v)[0], x)
    torch.testing.assert_close(layer(x)[1], expected, atol=1e-9, rtol=0)


def test_squeeze_puts_each_2x2_phase_in_its_own_channel() -> None:
    x = torch.arange(2 * 4 * 6.0).view(1, 2, 4, 6)
    y, _ = Squeeze()(x)
    assert y.shape == (1, 8, 2, 3)
    for c in range(2):
        for i in range(2):
            for j in range(2):
                assert torch.equal(y[0, 4 * c + 2 * i + j], x[0, c, i::2, j::2])


def test_masks_have_the_documented_patterns() -> None:
    assert checkerboard_mask((1, 2, 3), 0).flatten().tolist() == [1, 0, 1, 0, 1, 0]
    assert checkerboard_mask((1, 2, 3), 1).flatten().tolist() == [0, 1, 0, 1, 0, 1]
    assert channel_mask((4, 2, 2), 0).flatten().tolist() == [1, 1, 0, 0]
    assert channel_mask((4, 2, 2), 1).flatten().tolist() == [0, 0, 1, 1]
    assert channel_mask((4, 2, 2), 0).shape == (1, 4, 1, 1) and channel_mask((3,), 0).shape == (1, 3)
    assert alternating_mask(5, 1).flatten().tolist() == [0, 1, 0, 1, 0]


def test_coupling_keeps_the_masked_part_and_bounds_its_scale() -> None:
    """y = x where m = 1; a huge network output stays finite: |s| <= c (the clamping guard)."""
    layer = _layer(lambda: _coupling(checkerboard_mask((2, 4, 4), 0), 2, True))
    x = _inputs((2, 4, 4))
    y, _ = layer(x)
    torch.testing.assert_close(y * layer.mask, x * layer.mask, atol=0, rtol=0)
    with torch.no_grad():
        layer.net[-1].bias.fill_(1e4)
    y, log_det = layer(x)
    free = (1 - layer.mask).expand_as(x).sum() / len(x)
    assert torch.isfinite(y).all() and torch.isfinite(layer.inverse(y)).all()
    torch.testing.assert_close(log_det, torch.full_like(log_det, 2.0 * float(free)), atol=1e-9, rtol=0)


def test_invertible_1x1_conv_log_det_is_slogdet_of_its_weight_times_positions() -> None:
    layer = _layer(lambda: InvConv1x1((3, 4, 5)))
    x = _inputs((3, 4, 5))
    y, log_det = layer(x)
    weight = layer.weight()
    torch.testing.assert_close(y, torch.nn.functional.conv2d(x, weight[:, :, None, None]), atol=1e-12, rtol=0)
    sign, log_abs = torch.linalg.slogdet(weight)
    torch.testing.assert_close(log_det, (20 * log_abs).expand(3), atol=1e-10, rtol=0)
    assert torch.allclose(torch.linalg.det(weight), sign * log_abs.exp())


def test_actnorm_initialises_to_zero_mean_unit_variance_per_channel() -> None:
    x = 3.0 + 2.0 * torch.randn(16, 3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x[:, 1] *= 0.01
    layer = ActNorm((3, 4, 4)).double()
    with data_dependent_init(layer):
        y, _ = layer(x)
    torch.testing.assert_close(y.mean((0, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std((0, 2, 3)), torch.ones(3, dtype=torch.float64), atol=1e-12, rtol=0)
    before = [p.clone() for p in layer.parameters()]
    layer(x + 5.0)  # outside the block: no re-initialisation
    assert all(torch.equal(a, b) for a, b in zip(before, layer.parameters(), strict=True))


# ----- models -----------------------------------------------------------------------------------------------------
def _image_info(shape: tuple[int, ...] = (1, 4, 4), levels: int | None = 17) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=shape, levels=levels)


def _vector_info(mean: tuple[float, ...] = (0.5, -1.0, 2.0), std: tuple[float, ...] = (2.0, 0.5, 1.5)) -> DataInfo:
    return DataInfo(kind=DataKind.VECTOR, shape=(len(mean),), mean=mean, std=std)


def _model(name: str, info: DataInfo, **overrides: object) -> FlowModel:
    torch.manual_seed(0)
    model = build_model(name, info, {**TINY[name], **overrides})
    assert isinstance(model, FlowModel)
    return model


MODEL_CASES = [(name, kind) for name in MODELS for kind in ("image", "vector")]


def _case(name: str, kind: str) -> tuple[FlowModel, Tensor]:
    """A randomised float64 model and inputs in data units (images inside (0, 1))."""
    info = _image_info((2, 4, 4)) if kind == "image" else _vector_info()
    model = _randomise(_model(name, info, levels=2) if name == "glow" and kind == "image" else _model(name, info),
                       scale=0.2)
    model.double()
    x = _inputs(info.shape)
    return model, x if kind == "image" else 3.0 * x - 1.0


@pytest.mark.parametrize(("name", "kind"), MODEL_CASES)
def test_model_inverse_undoes_forward(name: str, kind: str) -> None:
    model, x = _case(name, kind)
    z, _ = model(x)
    assert z.shape == (len(x), model.data.dims)
    torch.testing.assert_close(model.inverse(z).view_as(x), x, atol=1e-9, rtol=0)


@pytest.mark.parametrize(("name", "kind"), MODEL_CASES)
def test_model_log_det_is_that_of_its_jacobian(name: str, kind: str) -> None:
    """The whole data -> z map, pre-transform (logit or standardisation) included."""
    model, x = _case(name, kind)
    expected = _jacobian_log_det(lambda v: model(v)[0], x)
    torch.testing.assert_close(model(x)[1], expected, atol=1e-8, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_density_of_a_2d_flow_integrates_to_one(name: str) -> None:
    """Trapezoid rule on a grid covering all but a negligible tail of a randomised 2-D flow's density (data with
    mean (1, -1) and std (2, 0.7), so the standardisation's log-determinant counts too)."""
    model = _randomise(_model(name, _vector_info((1.0, -1.0), (2.0, 0.7))), scale=0.2).double()
    u = torch.linspace(-30, 32, 1201, dtype=torch.float64)
    v = torch.linspace(-16, 14, 801, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(u, v, indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        density = model.log_prob(grid).exp().view(len(u), len(v))
    total = torch.trapezoid(torch.trapezoid(density, v, dim=1), u)
    assert abs(float(total) - 1.0) < 1e-3
    edge = torch.cat([density[0], density[-1], density[:, 0], density[:, -1]])
    assert float(edge.max()) < 1e-5 * float(density.max()), "the grid must cover the density"


@pytest.mark.parametrize("name", MODELS)
def test_maximum_likelihood_on_a_gaussian_reaches_its_entropy(name: str) -> None:
    """Fit a correlated 2-D Gaussian; the NLL of 20,000 fresh samples must approach the analytic entropy.

    The flow family holds the exact answer (a coupling with linear t and constant s), so what is left is the fit's
    KL (small after 300 steps) and Monte Carlo error (std sqrt(D / 2) / sqrt(20,000) = 0.007 nats), well inside
    0.03 nats; a missing log-determinant term (the standardisation's, log 2 pi, a factor 1/2) is far outside it.
    """
    torch.manual_seed(0)
    cov = torch.tensor([[4.0, 1.2], [1.2, 0.9]])
    truth = torch.distributions.MultivariateNormal(torch.tensor([3.0, -2.0]), covariance_matrix=cov)
    sample = truth.sample((4096,))
    info = _vector_info(tuple(sample.mean(0).tolist()), tuple(sample.std(0).tolist()))
    model = _model(name, info, mlp_width=32, mlp_depth=1, lr=1e-2)
    optim = Optimizers(model.configure_optimizers())
    for step in range(300):
        model.training_step(Batch(truth.sample((256,))), step, optim)
    nll = -model.log_likelihood(truth.sample((20_000,))).values.mean()
    assert abs(float(nll) - float(truth.entropy())) < 0.03


def test_glow_setup_gives_unit_actnorm_outputs_and_survives_save_load_and_resume(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After ``setup`` every ActNorm's output on the first training batch has zero mean and unit variance per
    feature; the values are saved in the weights (a run trained at a negligible learning rate, then loaded) and
    ``setup`` is not run again on resume."""
    data = tiny_dataset(DataKind.VECTOR)
    settings = {**FAST, "batch_size": 32}
    run = genzoo.train("glow", data, steps=1, out=tmp_path / "run", seed=3,
                       overrides={**TINY["glow"], "lr": 1e-12}, **settings)
    loaded = genzoo.load(run, checkpoint="last", ema=False)
    first = data.batch_at(0, 32, seed=3).x
    outputs = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out[0]))
             for m in loaded.modules() if isinstance(m, ActNorm)]
    loaded(first)
    for hook in hooks:
        hook.remove()
    assert len(outputs) == TINY["glow"]["vector_steps"]
    for out in outputs:
        torch.testing.assert_close(out.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
        torch.testing.assert_close(out.std(0), torch.ones(2), atol=1e-5, rtol=0)

    def refuse(self: Glow, batch: Batch) -> None:
        raise AssertionError("setup ran again on resume")

    monkeypatch.setattr(Glow, "setup", refuse)
    resumed = genzoo.load(genzoo.train("glow", data, steps=2, out=run, resume=True, **settings), checkpoint="last")
    for key, value in loaded.state_dict().items():  # one more step at a negligible learning rate
        torch.testing.assert_close(resumed.state_dict()[key], value, atol=1e-9, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_temperature_scales_the_latent(name: str) -> None:
    """z of a sample at temperature T is T times the seed's standard normal draw; T = 0 gives one point."""
    model = _randomise(_model(name, _vector_info()))
    eps = torch.randn(5, 3, generator=torch.Generator().manual_seed(7))
    for temperature in (0.5, 1.0):
        z = model.encode(model.sample(5, seed=7, temperature=temperature))
        torch.testing.assert_close(z, temperature * eps, atol=1e-4, rtol=0)
    mode = model.sample(4, seed=1, temperature=0.0)
    torch.testing.assert_close(mode, model.decode(torch.zeros(1, 3)).expand(4, 3), atol=0, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_image_samples_sit_on_the_data_levels_and_decode_inverts_encode(name: str) -> None:
    model = _randomise(_model(name, _image_info((1, 4, 4), levels=5), **({"levels": 2} if name == "glow" else {})),
                       scale=0.1)
    samples = model.sample(64, seed=0)
    assert samples.min() >= 0 and samples.max() <= 1
    torch.testing.assert_close(samples * 4, (samples * 4).round(), atol=1e-6, rtol=0)
    x = torch.randint(0, 5, (6, 1, 4, 4), generator=torch.Generator().manual_seed(0)) / 4.0
    assert torch.equal(model.decode(model.encode(x)), x)
    path = model.interpolate(x[0], x[1], n=5)
    assert torch.equal(path[0], x[0]) and torch.equal(path[-1], x[1])


@pytest.mark.parametrize("name", MODELS)
def test_validation_bits_per_dim_is_what_genzoo_eval_reports(name: str) -> None:
    """val_bpd of a batch = ``genzoo eval``'s bits/dim of it with the same dequantization noise (digits: 17
    levels, so D log 16 nats are subtracted from the density)."""
    data = tiny_dataset(DataKind.IMAGE)
    model = _randomise(_model(name, data.info), scale=0.05)
    batch = next(data.batches("val", 32))
    val = model.validation_step(batch, torch.Generator().manual_seed(11))["val_bpd"]
    reported = model_likelihood(model, batch, seed=11)
    assert reported is not None and reported["kind"] == "lower_bound"
    assert val == pytest.approx(reported["bits_per_dim"], abs=1e-6)
    with torch.no_grad():
        log_p = model.log_prob(dequantize(batch.x, 17, torch.Generator().manual_seed(11)))
    assert val == pytest.approx(float(-(log_p.mean() - 64 * math.log(16)) / (64 * math.log(2))), abs=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_training_loss_is_bits_per_dim_of_a_dequantized_batch(name: str) -> None:
    """The training loss is val_bpd's quantity on fresh noise from the global generator (seeded by the trainer)."""
    data = tiny_dataset(DataKind.IMAGE)
    model = _randomise(_model(name, data.info), scale=0.05)
    batch = next(data.batches("train", 16))
    with torch.no_grad():
        expected = model.bits_per_dim(batch.x, torch.Generator().manual_seed(5)).mean()
    torch.manual_seed(5)
    loss = model.training_step(batch, 0, Optimizers(model.configure_optimizers()))["bpd"]
    assert loss == pytest.approx(float(expected), abs=1e-6)


def test_image_sizes_the_architectures_cannot_take_are_refused_clearly() -> None:
    """Both halve the sides once per scale / level (realnvp: once more inside its last scale's networks)."""
    with pytest.raises(ConfigError, match="divisible by 4"):
        _model("realnvp", _image_info((1, 8, 6)), scales=2)
    with pytest.raises(ConfigError, match="divisible by 8"):
        _model("glow", _image_info((1, 8, 12)), levels=3)
    for name, extra in (("realnvp", {"scales": 1}), ("glow", {"levels": 1})):  # 3 channels, non-square
        model = _model(name, _image_info((3, 4, 6), levels=None), **extra)
        x = _inputs((3, 4, 6)).float()
        torch.testing.assert_close(model.inverse(model(x)[0]), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MODELS)
def test_images_outside_the_data_range_are_refused(name: str) -> None:
    model = _model(name, _image_info((1, 4, 4)), **({"levels": 2} if name == "glow" else {}))
    with pytest.raises(GenzooError, match="must lie in"):
        model.log_likelihood(torch.full((1, 1, 4, 4), 1.5))


def test_realnvp_masks_alternate_so_every_value_is_transformed() -> None:
    """Consecutive couplings of a run (checkerboard or channel, and the vector couplings) have complementary
    masks: with one parity everywhere, half of the values would never change."""
    for info in (_image_info((1, 8, 8)), _vector_info()):
        model = _model("realnvp", info, scales=2)
        couplings = [m for m in model.modules() if isinstance(m, AffineCoupling)]
        assert len(couplings) == (3 + 3 + 4 if info.kind is DataKind.IMAGE else TINY["realnvp"]["couplings"])
        runs = [couplings[0:3], couplings[3:6], couplings[6:]] if info.kind is DataKind.IMAGE else [couplings]
        for run in runs:
            for a, b in itertools.pairwise(run):
                assert torch.equal(a.mask + b.mask, torch.ones_like(a.mask))
