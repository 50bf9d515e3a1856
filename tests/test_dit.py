"""The diffusion transformer denoiser (``ddpm --set denoiser=dit``): adaLN-zero start, patches, attention, positions,
conditioning, and the contract a denoiser must keep inside ``ddpm`` (training, save/load, seeds, old runs)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError
from genzoo.io import load_tensors
from genzoo.nn.dit import DiT, DiTBlock, sincos_positions
from genzoo.nn.unet import UNet

SMOKE = dict(genzoo.model_class("ddpm").smoke_config) | {"denoiser": "dit", "dit_width": 16, "dit_depth": 2,
                                                          "dit_heads": 2}


def _perturbed(net: torch.nn.Module, seed: int = 0, scale: float = 0.3) -> torch.nn.Module:
    """The network with every parameter moved off its initial value (adaLN-zero layers included)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    return net


def _inputs(shape: tuple[int, ...], n: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=gen), torch.randint(0, 1000, (n,), generator=gen),
            torch.randint(0, 11, (n,), generator=gen))


@pytest.mark.parametrize(("shape", "patch", "classes"), [((1, 8, 8), 2, 10), ((3, 16, 12), 4, None),
                                                         ((1, 28, 28), 4, 10)])
def test_adaln_zero_makes_the_untrained_network_output_exactly_zero(shape: tuple, patch: int,
                                                                    classes: int | None) -> None:
    torch.manual_seed(0)
    net = DiT(shape, patch=patch, width=32, depth=2, heads=4, num_classes=classes)
    x, t, y = _inputs(shape)
    out = net(x, t, y if classes else None)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))


def test_every_block_starts_as_the_identity() -> None:
    """adaLN-zero: the gates are zero at the start, so each block passes its input through unchanged (even with a
    non-zero conditioning vector)."""
    torch.manual_seed(1)
    block = DiTBlock(32, heads=4, mlp_ratio=4)
    h, c = torch.randn(3, 5, 32), torch.randn(3, 32)
    assert torch.equal(block(h, c), h)
    _perturbed(block.ada)
    assert not torch.allclose(block(h, c), h)


def test_block_computes_the_adaln_zero_formula() -> None:
    """h + g_a Attn(LN(h)(1 + s_a) + b_a), then + g_m MLP(LN(.)(1 + s_m) + b_m), with (b, s, g) in that order from
    Linear(SiLU(c)); the attention equals torch's multi-head attention with the same weights."""
    torch.manual_seed(2)
    block = _perturbed(DiTBlock(16, heads=2, mlp_ratio=2), seed=3)
    h, c = torch.randn(2, 6, 16), torch.randn(2, 16)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    with torch.no_grad():
        mha.in_proj_weight.copy_(block.attn.qkv.weight)
        mha.in_proj_bias.copy_(block.attn.qkv.bias)
        mha.out_proj.weight.copy_(block.attn.out.weight)
        mha.out_proj.bias.copy_(block.attn.out.bias)
    shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = block.ada(c).chunk(6, dim=1)
    norm = lambda z: torch.nn.functional.layer_norm(z, (16,), eps=1e-6)  # noqa: E731
    a = norm(h) * (1 + scale_a[:, None]) + shift_a[:, None]
    h1 = h + gate_a[:, None] * mha(a, a, a, need_weights=False)[0]
    m = norm(h1) * (1 + scale_m[:, None]) + shift_m[:, None]
    expected = h1 + gate_m[:, None] * block.mlp(m)
    assert torch.allclose(block(h, c), expected, atol=1e-5)


def test_unpatchify_puts_each_token_back_on_its_own_pixels() -> None:
    """Token (i, j) of the row-major grid, entry (py, px, c), lands on pixel (c, i p + py, j p + px)."""
    net = DiT((3, 4, 6), patch=2, width=8, depth=1, heads=2)
    rows, cols, p, channels = 2, 3, 2, 3
    tokens = torch.arange(rows * cols * p * p * channels, dtype=torch.float32).view(1, rows * cols, -1)
    image = net.unpatchify(tokens, channels)
    assert image.shape == (1, channels, 4, 6)
    for c in range(channels):
        for yy in range(4):
            for xx in range(6):
                token = (yy // p) * cols + xx // p
                entry = ((yy % p) * p + xx % p) * channels + c
                assert image[0, c, yy, xx] == tokens[0, token, entry]


def test_patch_embedding_sees_positions() -> None:
    """Without positions a transformer is equivariant to permuting patches; with them, a permuted input is not
    just a permuted output. The positions are the 2-D sine-cosine table: distinct rows, values in [-1, 1]."""
    torch.manual_seed(4)
    net = _perturbed(DiT((1, 4, 4), patch=2, width=16, depth=2, heads=2), seed=5).eval()
    x, t, _ = _inputs((1, 4, 4), n=2)
    swapped = torch.cat([x[..., 2:], x[..., :2]], dim=-1)  # swap the left and right columns of patches
    out, out_swapped = net(x, t), net(swapped, t)
    assert not torch.allclose(torch.cat([out[..., 2:], out[..., :2]], dim=-1), out_swapped, atol=1e-4)
    pos = sincos_positions(3, 5, 16)
    assert pos.shape == (15, 16) and pos.abs().max() <= 1.0
    assert torch.cdist(pos, pos).add(torch.eye(15)).min() > 0.1
    assert torch.allclose(pos[0], torch.tensor([0.0] * 4 + [1.0] * 4 + [0.0] * 4 + [1.0] * 4))


def test_time_and_class_condition_the_output() -> None:
    torch.manual_seed(6)
    net = _perturbed(DiT((1, 8, 8), patch=2, width=16, depth=2, heads=2, num_classes=10), seed=7).eval()
    x, t, y = _inputs((1, 8, 8), n=3)
    base = net(x, t, y)
    assert not torch.allclose(base, net(x, t + 100, y), atol=1e-4)
    assert not torch.allclose(base, net(x, t, (y + 1) % 11), atol=1e-4)
    assert torch.allclose(base[:1], net(x[:1], t[:1], y[:1]), atol=1e-5)  # examples do not see each other
    with pytest.raises(ValueError, match="class-conditional"):
        net(x, t, None)


def test_bad_sizes_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="patch size 3 must divide"):
        DiT((1, 8, 8), patch=3)
    with pytest.raises(ConfigError, match="multiple of its 5 heads"):
        DiT((1, 8, 8), width=32, heads=5)
    with pytest.raises(ConfigError, match="multiple of 4"):
        DiT((1, 8, 8), width=30, heads=3)
    vectors = DataInfo(kind=DataKind.VECTOR, shape=(2,), mean=(0.0, 0.0), std=(1.0, 1.0))
    with pytest.raises(ConfigError, match="dit denoiser is for images"):
        genzoo.create("ddpm", vectors, denoiser="dit")
    with pytest.raises(ConfigError, match="denoiser"):
        genzoo.create("ddpm", tiny_dataset(DataKind.IMAGE).info, denoiser="vit")


# ----- inside ddpm: the contract a denoiser keeps ------------------------------------------------------------------
def test_ddpm_builds_the_denoiser_it_is_asked_for() -> None:
    info = tiny_dataset(DataKind.IMAGE).info
    assert isinstance(genzoo.create("ddpm", info).net, UNet)  # the default
    model = genzoo.create("ddpm", info, **SMOKE)
    assert isinstance(model.net, DiT) and model.net.cond.label is not None  # digits have labels: guidance works
    assert (model.net.patch, len(model.net.blocks), model.net.blocks[0].attn.heads) == (2, 2, 2)
    x, t, y = _inputs((1, 8, 8))
    assert torch.equal(model.net(x, t, y), torch.zeros_like(x))


@pytest.fixture(scope="module")
def dit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dit") / "run"
    return genzoo.train("ddpm", tiny_dataset(DataKind.IMAGE), steps=3, out=out, seed=2, overrides=SMOKE, **FAST)


def test_dit_trains_saves_loads_and_samples_by_seed(dit_run: Path) -> None:
    records = [json.loads(line) for line in (dit_run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["split"] == "train"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    first = genzoo.load(dit_run, checkpoint="last", ema=False)
    second = genzoo.load(dit_run, checkpoint="last", ema=False)
    assert isinstance(first.net, DiT) and first.provenance["step"] == 3
    for key, value in load_tensors(dit_run / "last" / "model.safetensors").items():
        assert torch.equal(value, first.state_dict()[key]), key
    assert not any(torch.equal(p, torch.zeros_like(p)) for p in first.net.head.parameters())  # it learned
    a = first.sample(5, seed=4, steps=4)
    assert torch.equal(a, second.sample(5, seed=4, steps=4))
    assert not torch.equal(a, first.sample(5, seed=5, steps=4))
    assert a.shape == (5, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    label = torch.tensor([3])
    unconditional = first.sample(3, seed=1, steps=4)
    assert torch.allclose(first.sample(3, seed=1, steps=4, labels=label, guidance=0.0), unconditional, atol=1e-5)


def test_dit_overfits_a_batch() -> None:
    data = tiny_dataset(DataKind.IMAGE)
    torch.manual_seed(0)
    model = genzoo.create("ddpm", data.info, **SMOKE)
    batch = data.batch_at(0, 32, seed=0)
    before = model.validation_step(batch, torch.Generator().manual_seed(0))["val_loss"]
    optim = Optimizers(model.configure_optimizers())
    for step in range(30):
        model.training_step(batch, step, optim)
    assert model.validation_step(batch, torch.Generator().manual_seed(0))["val_loss"] < 0.9 * before


def test_a_run_saved_before_the_denoiser_option_loads_as_a_unet(dit_run: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    genzoo.train("ddpm", tiny_dataset(DataKind.IMAGE), steps=1, out=old, seed=0,
                 overrides=dict(genzoo.model_class("ddpm").smoke_config), **FAST)
    config = json.loads((old / "config.json").read_text())
    for key in ("denoiser", "patch", "dit_width", "dit_depth", "dit_heads", "likelihood", "ode_steps", "ode_probes"):
        config["hparams"].pop(key)
    (old / "config.json").write_text(json.dumps(config))
    model = genzoo.load(old)
    assert isinstance(model.net, UNet) and model.config.denoiser == "unet"
    assert model.sample(2, seed=0, steps=2).shape == (2, 1, 8, 8)
