"""CycleGAN and the built-in unpaired pair: the thickening, the pair's (un)alignment, the losses against hand-computed
values, the fake pool, training that lowers the cycle error, the task metrics, and `genzoo edit --direction`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import Tensor, nn
from typer.testing import CliRunner

import genzoo
from conftest import FAST
from genzoo.cli.app import app
from genzoo.contract import Batch, DataInfo, DataKind, Optimizers
from genzoo.data import PairedDataset, TensorDataset, load_dataset
from genzoo.data.unpaired import derangement, thicken, unpaired_pair
from genzoo.errors import ConfigError, DataError, GenzooError
from genzoo.models.gan.cyclegan import (
    FakePool,
    ResidualBlock,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
    patch_discriminator,
    resnet_generator,
)
from genzoo.registry import build_model

TINY = {"width": 4, "blocks": 1, "pool_size": 4}


class Map(nn.Module):
    """A fixed 'generator' in network units: ``fn`` of its input."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)  # type: ignore[operator]


def negatives_pair(n: int = 96, aligned: bool = True) -> PairedDataset:
    """Domain A: digits; domain B: their negatives 1 - a (training split deranged, held-out aligned)."""
    digits = load_dataset("digits")
    cut = lambda b: Batch(b.x[:n], b.y[:n])  # noqa: E731
    a = TensorDataset(digits.info, cut(digits.split("train")), cut(digits.split("val")), cut(digits.split("test")))
    pair = unpaired_pair(a, lambda x: 1 - x, "negatives")
    if not aligned:
        pair.info = replace(pair.info, extra={})
    return pair


# ----- the built-in pair ----------------------------------------------------------------------------------------
def test_thicken_is_the_grey_level_dilation_by_the_3x3_cross() -> None:
    x = torch.zeros(1, 1, 4, 5)
    x[0, 0, 1, 2] = 0.5  # an interior pixel spreads to its four edge neighbours, not the diagonals
    x[0, 0, 0, 0] = 0.25  # a corner pixel: its neighbours outside the image count as 0
    x[0, 0, 2, 2] = 0.75  # next to the first: the maximum wins
    expected = torch.tensor([[0.25, 0.25, 0.50, 0.00, 0.00],
                             [0.25, 0.50, 0.75, 0.50, 0.00],
                             [0.00, 0.75, 0.75, 0.75, 0.00],
                             [0.00, 0.00, 0.75, 0.00, 0.00]])
    assert torch.equal(thicken(x)[0, 0], expected)


@pytest.mark.parametrize("n", [2, 3, 10, 1000])
def test_derangement_is_a_permutation_without_fixed_points(n: int) -> None:
    sigma = derangement(n, torch.Generator().manual_seed(n))
    assert torch.equal(sigma.sort().values, torch.arange(n))
    assert not (sigma == torch.arange(n)).any()


def test_pair_training_split_is_unpaired_and_held_out_splits_are_aligned() -> None:
    pair = load_dataset("pair:digits-thick")
    assert isinstance(pair, PairedDataset) and pair.info.extra["aligned_heldout"] is True
    assert pair.info.domain_b is not None and pair.info.domain_b.levels == 17
    a_train, b_train = pair.a.split("train").x, pair.b.split("train").x
    thick = thicken(a_train)
    assert torch.equal((b_train * 16).round(), b_train * 16)  # still on the 17-level grid
    # B's training split is the thickened A in another order: the same multiset, but never at the same position
    assert torch.equal(b_train.flatten(1).sum(1).sort().values, thick.flatten(1).sum(1).sort().values)
    assert not (b_train == thick).flatten(1).all(1).any()
    for split in ("val", "test"):
        held = pair.examples(split)
        assert held.x_b is not None and torch.equal(held.x_b, thicken(held.x))
    assert pair.batch_at(0, 8, seed=0).x_b.shape == (8, 1, 8, 8)


def test_pair_spec_errors_name_the_problem() -> None:
    with pytest.raises(DataError, match="known: pair:digits-thick"):
        load_dataset("pair:digits-thin")
    with pytest.raises(DataError, match="image-size"):
        load_dataset("pair:digits-thick", image_size=16)


def test_domains_of_different_shapes_are_refused() -> None:
    a = DataInfo(kind=DataKind.IMAGE, shape=(1, 8, 8), levels=17, spec="digits")
    info = replace(a, domain_b=replace(a, shape=(1, 16, 16), spec="big"))
    with pytest.raises(ConfigError, match="one image shape"):
        build_model("cyclegan", info, TINY)


# ----- networks, losses and the pool ----------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "patches"), [((1, 8, 8), 4), ((1, 28, 28), 7), ((3, 32, 32), 8), ((1, 6, 6), 6)])
def test_generator_keeps_the_shape_and_patchgan_scores_patches(shape: tuple[int, ...], patches: int) -> None:
    torch.manual_seed(0)
    x = torch.rand(2, *shape) * 2 - 1
    out = resnet_generator(shape, width=4, blocks=1, downsample=1)(x)
    assert out.shape == x.shape and out.abs().max() <= 1
    # two stride-2 levels at most, and fewer where a side would fall below 4 (8x8: one, 6x6: none)
    assert patch_discriminator(shape, width=4, layers=2)(x).shape == (2, 1, patches, patches)


def test_residual_block_adds_its_change_to_the_input() -> None:
    block = ResidualBlock(3)
    with torch.no_grad():
        block.body[-1].weight.zero_()  # the last norm's scale: the change is its bias, 0
    x = torch.randn(2, 3, 4, 4)
    assert torch.equal(block(x), x)


def test_lsgan_losses_are_least_squares_towards_one_and_zero() -> None:
    ones, zeros = torch.ones(3, 1, 2, 2), torch.zeros(3, 1, 2, 2)
    assert lsgan_discriminator_loss(ones, zeros).item() == 0.0
    assert lsgan_discriminator_loss(zeros, ones).item() == pytest.approx(1.0)  # 1/2 (1 + 1)
    assert lsgan_discriminator_loss(torch.full((4,), 3.0), torch.full((4,), 2.0)).item() == pytest.approx(4.0)
    assert lsgan_generator_loss(ones).item() == 0.0
    assert lsgan_generator_loss(torch.full((5,), -1.0)).item() == pytest.approx(4.0)


def test_cycle_and_identity_losses_against_hand_computed_values() -> None:
    torch.manual_seed(0)
    model = build_model("cyclegan", load_dataset("pair:digits-thick").info, TINY)
    a, b = torch.rand(6, 1, 8, 8) * 2 - 1, torch.rand(6, 1, 8, 8) * 2 - 1
    model.g_ab = model.g_ba = nn.Identity()
    losses, _, _ = model.generator_losses(a, b)
    assert losses["cycle"].item() == 0.0 and losses["identity"].item() == 0.0
    c = 0.25  # G_ab adds c, G_ba subtracts it: cycle-consistent, but each moves an image already in its domain
    model.g_ab, model.g_ba = Map(lambda x: x + c), Map(lambda x: x - c)
    losses, fake_a, fake_b = model.generator_losses(a, b)
    assert losses["cycle"].item() == pytest.approx(0.0, abs=1e-7)
    assert losses["identity"].item() == pytest.approx(2 * c)
    assert torch.allclose(fake_b, a + c) and torch.allclose(fake_a, b - c)
    model.g_ba = Map(lambda x: x + c)  # both add c: each cycle is off by 2c
    losses, _, _ = model.generator_losses(a, b)
    assert losses["cycle"].item() == pytest.approx(4 * c) and losses["identity"].item() == pytest.approx(2 * c)
    # validation: the cycle error in data units, averaged over the directions (each is off by 2c / 2 = c)
    val = model.validation_step(Batch((a + 1) / 2, x_b=(b + 1) / 2), torch.Generator())
    assert val["val_cycle"] == pytest.approx(2 * c / 2) and "val_mmd" in val
    s = 0.3  # discriminators scoring every patch s: adversarial = 2 (s - 1)^2
    model.d_a = model.d_b = Map(lambda x: torch.full((len(x), 1, 2, 2), s))
    assert model.generator_losses(a, b)[0]["adversarial"].item() == pytest.approx(2 * (s - 1) ** 2)


@pytest.mark.parametrize("lambda_identity", [5.0, 0.0])
def test_generator_loss_weighs_the_terms(lambda_identity: float) -> None:
    torch.manual_seed(0)
    data = negatives_pair()
    hparams = {**TINY, "pool_size": 8, "lambda_cycle": 10.0, "lambda_identity": lambda_identity}
    model = build_model("cyclegan", data.info, hparams)
    batch = data.batch_at(0, 8, seed=0)
    nets = {"g_ab": model.g_ab, "g_ba": model.g_ba, "d_a": model.d_a, "d_b": model.d_b}
    before = {name: [p.detach().clone() for p in net.parameters()] for name, net in nets.items()}
    with torch.no_grad():  # the translations the step makes, with the weights before it
        fake_a, fake_b = model.g_ba(model.preprocess(batch.x_b)), model.g_ab(model.preprocess(batch.x))
    out = model.training_step(batch, 0, Optimizers(model.configure_optimizers()))
    assert ("identity" in out) == (lambda_identity > 0)
    expected = out["adversarial"] + 10.0 * out["cycle"] + lambda_identity * out.get("identity", 0.0)
    assert out["g_loss"] == pytest.approx(expected, rel=1e-5)
    for name, net in nets.items():  # both optimizers stepped, each over both of its networks
        assert all(not torch.equal(p, q) for p, q in zip(net.parameters(), before[name], strict=True)), name
        assert all(p.requires_grad for p in net.parameters()), name
    # each discriminator's pool holds the translations into its own domain
    assert torch.allclose(model.pool_a.images, fake_a, atol=1e-6)
    assert torch.allclose(model.pool_b.images, fake_b, atol=1e-6)
    assert model.ema_targets() == [model.g_ab, model.g_ba]


def test_fake_pool_fills_then_swaps_half_of_the_new_fakes() -> None:
    assert torch.equal(FakePool(0, (1,))(torch.arange(3.0)[:, None]), torch.arange(3.0)[:, None])
    torch.manual_seed(0)
    pool = FakePool(4, (1,))
    first = torch.arange(3.0)[:, None]
    assert torch.equal(pool(first), first) and int(pool.count) == 3
    second = torch.arange(10.0, 13.0)[:, None]
    out = pool(second)  # the first fills the last slot; the others pass or come back as a stored 0, 1, 2 or 10
    assert out[0].item() == 10.0 and int(pool.count) == 4
    stored = {0.0, 1.0, 2.0, 10.0}
    for new, got in zip(second[1:, 0].tolist(), out[1:, 0].tolist(), strict=True):
        assert got == new or got in stored
    # from then on each fake is swapped with probability 1/2, and what comes out of the pool went into it
    seen = set(pool.images[:, 0].tolist()) | set(range(100, 4100))
    swapped = 0
    for start in range(100, 4100, 100):
        batch = torch.arange(float(start), start + 100.0)[:, None]
        got = pool(batch)
        swapped += int((got != batch).sum())
        assert set(got[:, 0].tolist()) <= seen
    assert swapped / 4000 == pytest.approx(0.5, abs=0.03)


# ----- training, the task metrics, translation ------------------------------------------------------------------
def test_cycle_error_falls_during_a_short_training() -> None:
    torch.manual_seed(0)
    data = negatives_pair()
    # a small net without identity loss (which would pull towards the identity, not the negation) learns fast
    hparams = {"width": 8, "blocks": 0, "downsample": 0, "pool_size": 8, "lambda_identity": 0.0, "lr": 2e-3}
    model = build_model("cyclegan", data.info, hparams)
    held = data.examples("val")

    def errors() -> dict[str, float]:
        with torch.no_grad():
            return model.task_metrics(held, torch.Generator().manual_seed(0))

    before = errors()
    optim = Optimizers(model.configure_optimizers())
    for step in range(40):
        model.training_step(data.batch_at(step, 16, seed=0), step, optim)
    after = errors()
    for key in ("cycle_a_error", "cycle_b_error"):
        assert after[key] < 0.5 * before[key], (key, before[key], after[key])
    # negation is the one cycle-consistent map between these domains the discriminators accept
    assert after["a2b_error"] < 0.5 * after["identity_baseline_error"]


def test_task_metrics_of_a_perfect_translator_are_zero() -> None:
    data = negatives_pair()
    model = build_model("cyclegan", data.info, TINY)
    model.g_ab = model.g_ba = Map(lambda x: -x)  # 1 - a in data units is -z in network units
    test = data.examples("test")
    task = model.task_metrics(test, torch.Generator())
    assert set(task) == {"cycle_a_error", "cycle_b_error", "a2b_error", "b2a_error", "identity_baseline_error"}
    for key in ("cycle_a_error", "cycle_b_error", "a2b_error", "b2a_error"):
        assert task[key] == pytest.approx(0.0, abs=1e-7), key
    assert task["identity_baseline_error"] == pytest.approx((2 * test.x - 1).abs().mean().item(), rel=1e-6)
    unaligned = build_model("cyclegan", negatives_pair(aligned=False).info, TINY)
    assert set(unaligned.task_metrics(test, torch.Generator())) == {"cycle_a_error", "cycle_b_error"}


def test_thickening_translator_has_zero_error_on_the_built_in_pair() -> None:
    """The known mapping as G_ab scores 0 against the pair's test split (which is aligned), its input 0.295."""
    data = load_dataset("pair:digits-thick")
    model = build_model("cyclegan", data.info, TINY)
    model.g_ab = Map(lambda z: thicken((z + 1) / 2) * 2 - 1)
    task = model.task_metrics(data.examples("test"), torch.Generator())
    assert task["a2b_error"] == pytest.approx(0.0, abs=1e-7)
    assert task["identity_baseline_error"] == pytest.approx(0.2952, abs=1e-4)


def test_img2img_translates_in_the_requested_direction() -> None:
    model = build_model("cyclegan", negatives_pair().info, TINY)
    model.g_ab, model.g_ba = Map(lambda x: -x), nn.Identity()
    x = torch.rand(2, 1, 8, 8)
    assert torch.allclose(model.img2img(x), 1 - x, atol=1e-6)  # a2b by default
    assert torch.allclose(model.img2img(x, direction="b2a", strength=0.3, seed=5), x, atol=1e-6)
    assert model.cost(direction="b2a").nfe_per_sample == 1
    with pytest.raises(ConfigError, match="direction"):
        model.img2img(x, direction="sideways")
    with pytest.raises(GenzooError, match="cannot sample"):
        model.sample(2)


# ----- end to end: train from one spec, edit through the CLI, evaluate -------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cyclegan") / "run"
    return genzoo.train("cyclegan", "pair:digits-thick", steps=3, out=out, seed=0, overrides=TINY, **FAST)


def test_edit_direction_through_the_cli(tiny_run: Path, tmp_path: Path) -> None:
    digit = load_dataset("digits").split("test").x[0]
    source = tmp_path / "in.png"
    Image.fromarray((digit[0].numpy() * 255).round().astype(np.uint8)).save(source)
    model = genzoo.load(tiny_run)
    image = torch.from_numpy(np.asarray(Image.open(source), dtype=np.float32) / 255)[None]
    for direction in ("a2b", "b2a"):
        out = tmp_path / f"{direction}.png"
        result = CliRunner().invoke(app, ["edit", str(tiny_run), "--image", str(source), "--direction", direction,
                                          "--out", str(out)])
        assert result.exit_code == 0, result.output
        written = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255)
        expected = model.img2img(image, direction=direction)[0, 0]
        assert written.shape == (8, 8) and (written - expected).abs().max() <= 0.5 / 255 + 1e-6
    assert "direction" in CliRunner().invoke(app, ["edit", str(tiny_run), "--help"]).output
    bad = CliRunner().invoke(app, ["edit", str(tiny_run), "--image", str(source), "--direction", "up",
                                   "--out", str(tmp_path / "x.png")])
    assert bad.exit_code != 0


def test_eval_reloads_the_pair_and_reports_the_translation_errors(tiny_run: Path) -> None:
    result = genzoo.evaluate(tiny_run, report=False)
    task = result["rows"]["model"]["task"]
    assert task["identity_baseline_error"] == pytest.approx(0.2952, abs=1e-4)
    assert 0 <= task["a2b_error"] <= 1 and 0 <= task["cycle_b_error"] <= 1
    assert (tiny_run / "samples" / "latest.png").exists()  # the preview: held-out inputs above their translations


def test_two_specs_train_when_resized_to_one_size(tmp_path: Path) -> None:
    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(12):
        Image.fromarray((np.random.default_rng(i).random((16, 16)) * 255).astype(np.uint8)).save(folder / f"{i}.png")
    common = {"steps": 1, "overrides": TINY, **FAST}
    with pytest.raises(ConfigError, match="one image shape"):
        genzoo.train("cyclegan", "digits", data_b=str(folder), out=tmp_path / "refused", **common)
    run = genzoo.train("cyclegan", "digits", data_b=str(folder), image_size=8, out=tmp_path / "run", **common)
    assert genzoo.load(run).data.domain_b.shape == (1, 8, 8)
    with pytest.raises(ConfigError, match="already holds two domains"):
        genzoo.train("cyclegan", "pair:digits-thick", data_b="digits", out=tmp_path / "twice", **common)
