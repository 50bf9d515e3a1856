"""Mathematical properties of the pixel-level autoregressive models: ``pixelcnn``, ``gated-pixelcnn`` and ``made``.

Causality by gradient (and the blind spot), normalisation over exhaustively enumerated image spaces, sampling
frequencies against exact probabilities, inpainting against the exact conditional, MADE's masks and its density
in data units, and editing through the library and the CLI.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli.app import app
from genzoo.contract import DataInfo, DataKind, GenerativeModel
from genzoo.editing import edit
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import save_png
from genzoo.models.autoregressive.pixels import LogisticMixtureHead
from genzoo.nn.discrete import soft_floor
from genzoo.nn.masked import MaskedConv2d, made_masks
from genzoo.registry import build_model, model_class

PIXEL_MODELS = ["pixelcnn", "gated-pixelcnn"]
MODELS = [*PIXEL_MODELS, "made"]
#: small but deep enough that every earlier pixel of a 5x5 image is in the receptive field (RGB: 12 channels)
SIZES = {"pixelcnn": {"channels": 10, "layers": 4, "first_kernel": 3, "dropout": 0.0},
         "gated-pixelcnn": {"channels": 10, "layers": 5, "dropout": 0.0},
         "made": {"hidden": 48, "layers": 2, "mixtures": 3}}
#: smaller still where many samples are drawn
SMALL = {"pixelcnn": {"channels": 6, "layers": 1}, "gated-pixelcnn": {"channels": 6, "layers": 2},
         "made": {"hidden": 16, "layers": 1}}


def image_info(shape: tuple[int, ...], levels: int | None) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=shape, levels=levels)


def random_model(name: str, info: DataInfo, std: float = 0.5, seed: int = 0, **overrides: object) -> GenerativeModel:
    """A model with every parameter drawn at random (biases too), so any dependency the masks allow shows."""
    torch.manual_seed(seed)
    model = build_model(name, info, {**SIZES[name], **overrides})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
    return model.eval()


def network(model: GenerativeModel, x: torch.Tensor) -> torch.Tensor:
    """Conditional parameters (B, P, D) of images x (B, C, H, W) in [-1, 1], positions in raster order with the
    channels inside a pixel."""
    if model.name == "made":
        return model(model.to_sequence(x))
    return model(x).permute(0, 1, 3, 4, 2).flatten(2)


def dependencies(model: GenerativeModel, shape: tuple[int, ...]) -> torch.Tensor:
    """(D, D) boolean: [d, e] when the parameters of position d have a non-zero gradient w.r.t. input position e on
    any of 8 random images (several, so a unit that happens to be off at one input does not hide a connection; in
    float64, so a saturated gate does not round a small gradient to zero)."""
    x = torch.rand(8, *shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2 - 1
    out = network(model.double(), x.requires_grad_(True))
    rows = []
    for d in range(out.shape[2]):
        (grad,) = torch.autograd.grad(out[:, :, d].sum(), x, retain_graph=True)
        rows.append((grad != 0).any(0).permute(1, 2, 0).flatten())
    return torch.stack(rows)


# ----- masks and causality -----------------------------------------------------------------------------------------
def test_masked_convolution_masks_follow_raster_and_colour_order() -> None:
    conv = MaskedConv2d(3, 6, (3, 3), (1, 1), "A", colors=3)
    assert torch.equal(conv.mask[:, :, 0], torch.ones(6, 3, 3)) and torch.equal(conv.mask[:, :, 1, 0], torch.ones(6, 3))
    assert not conv.mask[:, :, 1, 2].any() and not conv.mask[:, :, 2].any()
    # output channel k is colour k mod 3; at the centre, type A reads strictly earlier colours, type B also its own
    type_a = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0]]).float().repeat(2, 1)
    assert torch.equal(conv.mask[:, :, 1, 1], type_a)
    type_b = MaskedConv2d(3, 6, (3, 3), (1, 1), "B", colors=3).mask[:, :, 1, 1]
    assert torch.equal(type_b, torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 1]]).float().repeat(2, 1))


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 3)])
@pytest.mark.parametrize("name", MODELS)
def test_each_conditional_depends_on_earlier_positions_only(name: str, shape: tuple[int, ...]) -> None:
    """Raster order, and R -> G -> B inside a pixel: no gradient from the position itself or any later one."""
    deps = dependencies(random_model(name, image_info(shape, 3)), shape)
    assert not torch.triu(deps).any(), f"{name} reads positions {torch.triu(deps).nonzero().tolist()[:5]} ..."


@pytest.mark.parametrize("shape", [(1, 5, 5), (3, 3, 3)])
def test_gated_pixelcnn_sees_every_earlier_position(shape: tuple[int, ...]) -> None:
    """No blind spot: with enough layers every earlier sub-pixel has a non-zero gradient (MADE's full connectivity
    is checked on its masks below)."""
    deps = dependencies(random_model("gated-pixelcnn", image_info(shape, 3)), shape)
    lower = torch.tril(torch.ones_like(deps), -1)
    assert deps[lower].all(), f"missed earlier positions {(lower & ~deps).nonzero().tolist()[:5]}"


def test_pixelcnn_has_the_blind_spot_up_and_to_the_right() -> None:
    """Stacked masked 3x3 kernels never reach (i-1, j+2) from (i, j), however deep; the gated stacks do."""
    shape = (1, 5, 5)
    position = lambda i, j: i * 5 + j  # noqa: E731
    pixel = random_model("pixelcnn", image_info(shape, 3), layers=6)
    deps = dependencies(pixel, shape)
    assert not deps[position(2, 1), position(1, 3)] and not deps[position(4, 0), position(3, 2)]
    assert deps[position(2, 1), position(1, 2)] and deps[position(2, 1), position(0, 3)]  # up-right, one per row
    assert dependencies(random_model("gated-pixelcnn", image_info(shape, 3)), shape)[position(2, 1), position(1, 3)]


@pytest.mark.parametrize(("dims", "hidden", "outputs"), [(2, [8], 3), (5, [16, 16], 2), (9, [4, 7], 1)])
def test_made_connectivity_is_strictly_lower_triangular(dims: int, hidden: list[int], outputs: int) -> None:
    masks = made_masks(dims, hidden, outputs)
    paths = masks[0]
    for mask in masks[1:]:
        paths = mask @ paths
    per_dim = paths.view(dims, outputs, dims).sum(1)  # paths from input e to output d
    assert not torch.triu(per_dim).any()
    if min(hidden) >= dims - 1:  # every degree 1 .. D-1 present: every earlier input connected
        assert (torch.tril(per_dim, -1) > 0).sum() == dims * (dims - 1) // 2


# ----- normalisation, sampling, likelihood convention --------------------------------------------------------------
def all_images(shape: tuple[int, ...], levels: int) -> torch.Tensor:
    grid = torch.tensor(list(itertools.product(range(levels), repeat=math.prod(shape))), dtype=torch.float32)
    return (grid / (levels - 1)).view(-1, *shape)


@pytest.mark.parametrize(("shape", "levels"), [((1, 3, 3), 2), ((1, 2, 2), 3), ((3, 1, 2), 3)])
@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
@pytest.mark.parametrize("name", MODELS)
def test_probabilities_of_all_images_sum_to_one(name: str, output: str, shape: tuple[int, ...], levels: int) -> None:
    model = random_model(name, image_info(shape, levels), output=output, mixtures=3)
    ll = model.log_likelihood(all_images(shape, levels))
    assert ll.kind == "exact" and ll.discrete
    assert abs(ll.values.double().exp().sum().item() - 1.0) < 1e-5


def keys(images: torch.Tensor, levels: int) -> torch.Tensor:
    ids = (images.flatten(1) * (levels - 1)).round().long()
    return (ids * levels ** torch.arange(ids.shape[1])).sum(1)


def assert_frequencies(samples: torch.Tensor, images: torch.Tensor, probs: torch.Tensor, levels: int) -> None:
    """Empirical frequencies within 5 standard errors (+ 1e-3) of ``probs`` for every image of the space."""
    n = len(samples)
    counts = torch.bincount(keys(samples, levels), minlength=levels ** images[0].numel()).double()
    expected = torch.zeros_like(counts)
    expected[keys(images, levels)] = probs.double()
    err = (counts / n - expected).abs()
    bound = 5 * (expected * (1 - expected) / n).sqrt() + 1e-3
    assert (err <= bound).all(), f"worst cell: {err.max():.4f} (bound {bound[err.argmax()]:.4f})"


@pytest.mark.parametrize(("shape", "levels"), [((1, 2, 2), 2), ((3, 1, 2), 2)])
@pytest.mark.parametrize("output", ["categorical", "logistic_mixture"])
@pytest.mark.parametrize("name", MODELS)
def test_samples_follow_the_exact_probabilities(name: str, output: str, shape: tuple[int, ...], levels: int) -> None:
    # strong weights, so the colours of a pixel depend on each other clearly (a wrong sampling order then shows)
    model = random_model(name, image_info(shape, levels), std=1.0, output=output, mixtures=2, **SMALL[name])
    images = all_images(shape, levels)
    samples = model.sample(20_000, seed=0)
    grid = samples * (levels - 1)
    assert torch.equal(grid, grid.round()), "samples must sit on the data's levels"
    assert_frequencies(samples, images, model.log_likelihood(images).values.exp(), levels)


@pytest.mark.parametrize("name", MODELS)
def test_temperature_samples_p_to_the_one_over_t(name: str) -> None:
    """One sub-pixel: its distribution p; at temperature T the draws follow p^(1/T) renormalised."""
    model = random_model(name, image_info((1, 1, 1), 5), std=0.4, **SMALL[name])
    images = all_images((1, 1, 1), 5)
    sharpened = torch.softmax(model.log_likelihood(images).values / 0.5, 0)
    assert_frequencies(model.sample(6000, seed=1, temperature=0.5), images, sharpened, 5)


@pytest.mark.parametrize("name", MODELS)
def test_validation_reports_bits_per_dim_of_the_exact_likelihood(name: str) -> None:
    data = tiny_dataset(DataKind.IMAGE)
    model = build_model(name, data.info, dict(model_class(name).smoke_config))
    batch = next(data.batches("val", 16))
    with torch.no_grad():
        val = model.eval().validation_step(batch, torch.Generator().manual_seed(0))["val_bpd"]
    ll = model.log_likelihood(batch.x)
    assert math.isclose(val, -ll.values.mean().item() / (64 * math.log(2)), rel_tol=1e-5)
    assert model.cost().nfe_per_sample == 64
    if name != "made":
        assert model.cost(candidates=3).nfe_per_sample == 3 * 65


def test_discretized_logistic_is_finite_in_its_extremes() -> None:
    """Tiny scales and means far outside [-1, 1] give finite log-probabilities that still sum to one."""
    head = LogisticMixtureHead(levels=256, mixtures=2)
    params = torch.tensor([[0.0, 3.0, -9.0, 0.3, -30.0, -40.0], [1.0, -2.0, 40.0, -0.7, 2.0, -1.0]])
    params = params.view(2, 6, 1).requires_grad_(True)
    log_probs = head.level_log_probs(params)
    assert torch.isfinite(log_probs).all()
    assert torch.allclose(log_probs.exp().sum(1), torch.ones(2, 1), atol=1e-5)
    head.log_prob(params, torch.tensor([[0], [255]])).sum().backward()
    assert torch.isfinite(params.grad).all()


# ----- MADE on vectors ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vector_made() -> GenerativeModel:
    info = DataInfo(kind=DataKind.VECTOR, shape=(2,), mean=(1.0, -2.0), std=(2.0, 3.0))
    return random_model("made", info, std=0.2, hidden=16, mixtures=3)


def test_made_density_in_data_units_integrates_to_one(vector_made: GenerativeModel) -> None:
    """On a grid over mean +- 12 std: sum p(x) dx = 1 only with the log-determinant of the standardisation."""
    xs, ys = torch.linspace(1 - 24, 1 + 24, 500), torch.linspace(-2 - 36, -2 + 36, 500)
    grid = torch.cartesian_prod(xs, ys)
    ll = vector_made.log_likelihood(grid)
    assert not ll.discrete and ll.kind == "exact"
    cell = (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert abs((ll.values.double().exp().sum() * cell).item() - 1.0) < 2e-3


def test_made_vector_samples_follow_the_density(vector_made: GenerativeModel) -> None:
    """Fractions of samples in the four quadrants around the data mean match the density's mass there."""
    samples = vector_made.sample(20_000, seed=0)
    xs, ys = torch.linspace(-23, 25, 600), torch.linspace(-38, 34, 600)
    grid = torch.cartesian_prod(xs, ys)
    mass = vector_made.log_likelihood(grid).values.double().exp() * (xs[1] - xs[0]) * (ys[1] - ys[0])

    def quadrant(points: torch.Tensor, right: bool, up: bool) -> torch.Tensor:
        return ((points[:, 0] > 1.0) == right) & ((points[:, 1] > -2.0) == up)

    for right, up in itertools.product([False, True], repeat=2):
        expected = mass[quadrant(grid, right, up)].sum().item()
        observed = quadrant(samples, right, up).double().mean().item()
        assert abs(observed - expected) < 5 * math.sqrt(expected / 20_000) + 3e-3


def test_made_vector_temperature_scales_the_gaussians(vector_made: GenerativeModel) -> None:
    """x_1's conditional reads nothing: a fixed mixture sum_k pi_k N(mu_k, s_k^2) in standardised units; at
    temperature T its samples have variance sum_k pi_k (T^2 s_k^2 + mu_k^2) - (sum_k pi_k mu_k)^2."""
    with torch.no_grad():
        logits, mean, log_scale = vector_made(torch.zeros(1, 2))[0, :, 0].double().chunk(3)
    pi, scale = torch.softmax(logits, 0), soft_floor(log_scale, -7.0).exp()
    for temperature in (1.0, 0.3):
        z = (vector_made.sample(20_000, seed=2, temperature=temperature)[:, 0].double() - 1.0) / 2.0
        variance = (pi * (temperature**2 * scale**2 + mean**2)).sum() - (pi * mean).sum() ** 2
        assert abs(z.var().item() / variance.item() - 1.0) < 0.05


# ----- inpainting ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_inpainting_the_last_pixel_samples_its_exact_conditional(name: str) -> None:
    """With the hole at the last pixel, raster order conditions on every known pixel: the fills follow
    p(x_last | rest) = p(x) / sum_v p(rest, v). Known values are returned exactly, off-grid ones included."""
    model = random_model(name, image_info((1, 2, 2), 3), std=0.4)
    known = torch.tensor([[[0.3, 1.0], [0.0, 0.5]]])  # 0.3 is off the 3-level grid: it conditions as 0.5
    mask = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    out = model.inpaint(known.expand(6000, 1, 2, 2), mask, seed=0)
    assert torch.equal(out[:, 0, 0, 0], torch.full((6000,), 0.3)) and (out[:, 0, 1, 0] == 0.0).all()
    assert (out[:, 0, 0, 1] == 1.0).all()
    completions = torch.tensor([[[0.5, 1.0], [0.0, v / 2]] for v in range(3)]).unsqueeze(1)
    conditional = torch.softmax(model.log_likelihood(completions).values, 0)
    frequencies = torch.bincount((out[:, 0, 1, 1] * 2).round().long(), minlength=3) / 6000
    assert torch.allclose(frequencies, conditional, atol=5 * math.sqrt(0.25 / 6000) + 1e-3)


@pytest.mark.parametrize("name", PIXEL_MODELS)
def test_candidates_keep_the_most_likely_completion(name: str) -> None:
    """candidates=K is K independent completions (the same draws as K copies of the image) and, per image, the one
    with the highest log-likelihood of the completed image; every known pixel is kept exactly."""
    model = random_model(name, image_info((3, 2, 3), 4), std=0.4)
    images = torch.rand(2, 3, 2, 3, generator=torch.Generator().manual_seed(2))
    mask = torch.zeros(2, 3)
    mask[0, 1:] = 1  # a hole in the middle of the first row: later known pixels should weigh in
    best = model.inpaint(images, mask, seed=5, candidates=4)
    draws = model.inpaint(images.repeat_interleave(4, 0), mask, seed=5).view(2, 4, 3, 2, 3)
    scores = model.log_likelihood(draws.flatten(0, 1)).values.view(2, 4)
    assert torch.equal(best, draws[torch.arange(2), scores.argmax(1)])
    keep = (mask == 0).expand_as(images)
    assert torch.equal(best[keep], images[keep])
    assert torch.equal(best[~keep] * 3, (best[~keep] * 3).round())


def test_bad_inputs_are_clear_errors() -> None:
    for name in MODELS:
        with pytest.raises(ConfigError, match="continuous"):
            build_model(name, image_info((1, 4, 4), None), {})
    for name, kernel in [("gated-pixelcnn", "kernel"), ("pixelcnn", "first_kernel")]:
        with pytest.raises(ConfigError, match="odd"):
            build_model(name, image_info((1, 4, 4), 4), {kernel: 4})
    model = random_model("gated-pixelcnn", image_info((1, 4, 4), 3))
    image = torch.rand(1, 1, 4, 4)
    for mask, message in [(torch.zeros(4, 4), "empty"), (torch.ones(3, 4), "does not match")]:
        with pytest.raises(GenzooError, match=message):
            model.inpaint(image, mask)
    with pytest.raises(GenzooError, match="shape"):
        model.inpaint(torch.rand(1, 3, 4, 4), torch.ones(4, 4))
    with pytest.raises(GenzooError, match="labels"):
        model.inpaint(image, torch.ones(4, 4), labels=torch.tensor([1]))
    with pytest.raises(ConfigError, match="candidates"):
        model.inpaint(image, torch.ones(4, 4), candidates=0)


# ----- editing through the library and the CLI -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("gated") / "run"
    return genzoo.train("gated-pixelcnn", tiny_dataset(DataKind.IMAGE), steps=2, out=out, seed=0,
                        overrides={"channels": 8, "layers": 2}, **FAST)


def test_edit_inpaints_through_the_library(run: Path) -> None:
    model = genzoo.load(run)
    image = next(tiny_dataset(DataKind.IMAGE).batches("val", 2)).x
    mask = torch.zeros(8, 8)
    mask[2:5, 3:6] = 1
    out = edit(model, image, mask, seed=0)
    assert out.shape == image.shape and torch.equal(out[..., mask == 0], image[..., mask == 0])
    assert torch.equal(out, edit(model, image, mask, seed=0)) and not torch.equal(out, edit(model, image, mask, seed=1))


def test_edit_cli_inpaints_a_png(run: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    pixels = (np.arange(64).reshape(8, 8, 1) * 4).astype(np.uint8)  # 8-bit values, off the 17-level grid
    save_png(tmp_path / "in.png", pixels)
    mask = np.zeros((8, 8, 1), np.uint8)
    mask[3:6, 2:7] = 255
    save_png(tmp_path / "mask.png", mask)
    out = tmp_path / "out.png"
    result = CliRunner().invoke(app, ["edit", str(run), "--image", str(tmp_path / "in.png"), "--mask",
                                      str(tmp_path / "mask.png"), "--out", str(out), "--candidates", "2",
                                      "--temperature", "0.9"])
    assert result.exit_code == 0, result.output
    written = np.asarray(Image.open(out))
    keep = mask[..., 0] == 0
    assert written.shape == (8, 8) and np.array_equal(written[keep], pixels[..., 0][keep])
    levels = written[~keep] / 255 * 16  # filled pixels sit on the data's 17 levels
    assert np.allclose(levels, np.round(levels), atol=0.05)
