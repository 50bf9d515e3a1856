"""Caption conditioning of the diffusion models and ``ldm``: prompts, guidance, latent scaling, a brief training run.

Captions are embedded here by a bag-of-words stand-in for the sentence encoder (the scenes vocabulary, one
dimension per word, unit length): the models see only vectors, and the tests stay fast and offline.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import genzoo.data.captions as captions_module
from genzoo.contract import Batch, Capability, DataInfo, DataKind, Optimizers
from genzoo.data import TensorDataset
from genzoo.data.scenes import COLOURS, VOCABULARY, check, make_scenes, parse
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.diffusion.ldm import LDM, latent_halvings
from genzoo.registry import build_model

DIM = len(VOCABULARY)


def bag_of_words(texts: list[str], encoder: str | None = None) -> torch.Tensor:
    index = {w: i for i, w in enumerate(VOCABULARY)}
    out = torch.zeros(len(texts), DIM)
    for row, text in enumerate(texts):
        for word in text.split():
            out[row, index[word]] += 1.0
    return out / out.norm(dim=1, keepdim=True)


@pytest.fixture(autouse=True)
def _offline_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(captions_module, "caption_embeddings", bag_of_words)


def _info(size: int = 16, caption: dict | None = None) -> DataInfo:
    caption = {"form": "embedding", "encoder": "bag-of-words", "dim": DIM} if caption is None else caption
    return DataInfo(kind=DataKind.IMAGE, shape=(3, size, size), levels=2, spec="scenes-test",
                    extra={"caption": caption})


SMALL = {"timesteps": 100, "width": 16, "channel_mult": [1, 2], "ae_width": 16, "latent_channels": 4, "downsample": 1}


def _perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Untrained networks start with zero output layers (every prompt would give the same image): jitter them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


@pytest.mark.parametrize("name", ["ldm", "ddpm"])
def test_each_sample_follows_its_own_prompt(name: str) -> None:
    model = _perturbed(build_model(name, _info(), SMALL if name == "ldm" else {"width": 8, "channel_mult": [1, 2]}))
    assert Capability.TEXT_TO_IMAGE in model.capabilities
    a, b = "a small red circle", "a large blue square above a small green triangle"
    fast = {"steps": 4}
    one = model.sample(2, seed=3, prompt=a, **fast)
    assert torch.equal(one, model.sample(2, seed=3, prompt=[a, a], **fast))
    assert torch.equal(one, model.sample(2, seed=3, prompt=a, **fast))
    mixed = model.sample(2, seed=3, prompt=[a, b], **fast)
    assert torch.equal(mixed[0], one[0]) and not torch.equal(mixed[1], one[1])
    assert not torch.equal(one, model.sample(2, seed=3, **fast)), "no prompt is the unconditional model"
    with pytest.raises(GenzooError, match="one non-empty prompt or 2"):
        model.sample(2, seed=3, prompt=[a], **fast)


def test_guidance_extrapolates_from_the_unconditional_to_the_conditional_prediction() -> None:
    """D_w = D_0 + w (D_1 - D_0), with D_0 the prediction for the null (zero) caption."""
    model = _perturbed(build_model("ldm", _info(), SMALL)).eval()
    x, cond = torch.randn(3, *model.diffusion_shape), bag_of_words(["a small red circle"] * 3)
    with torch.no_grad():
        plain, uncond = model.denoiser(cond=cond, clip=False)(x, 40), model.denoiser(clip=False)(x, 40)
        zero_caption = model.denoiser(cond=torch.zeros_like(cond), clip=False)(x, 40)
        guided = {w: model.denoiser(cond=cond, guidance=w, clip=False)(x, 40) for w in (0.0, 1.0, 3.0)}
    assert not torch.allclose(plain, uncond)
    torch.testing.assert_close(zero_caption, uncond)
    torch.testing.assert_close(guided[0.0], uncond, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guided[1.0], plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(guided[3.0], uncond + 3.0 * (plain - uncond), atol=1e-4, rtol=1e-4)
    with pytest.raises(GenzooError, match="guidance needs a condition"):
        model.denoiser(guidance=2.0)


def test_caption_dropout_replaces_whole_captions_by_the_null_one() -> None:
    model = build_model("ddpm", _info(8), {"width": 8, "channel_mult": [1, 2], "label_dropout": 0.5})
    cond = bag_of_words(["a small red circle"] * 2000)
    torch.manual_seed(0)
    _, dropped = model._dropped(None, cond, len(cond))
    kept = dropped.norm(dim=1) > 0
    assert torch.equal(dropped[kept], cond[kept]) and torch.all(dropped[~kept] == 0)
    assert kept.float().mean().item() == pytest.approx(0.5, abs=0.04)
    model.config.label_dropout = 0.0
    assert torch.equal(model._dropped(None, cond, len(cond))[1], cond)


def test_models_without_caption_embeddings_refuse_prompts() -> None:
    plain = build_model("ldm", DataInfo(kind=DataKind.IMAGE, shape=(3, 16, 16), levels=2), SMALL)
    assert Capability.TEXT_TO_IMAGE not in plain.capabilities
    with pytest.raises(GenzooError, match="cannot draw from a text prompt"):
        plain.sample(1, prompt="a small red circle")
    with pytest.raises(ConfigError, match="caption=embedding"):
        build_model("ddpm", _info(caption={"form": "tokens", "length": 12, "pad": 0, "eos": 1}), {})
    unconditional = build_model("ddpm", _info(), {"conditional": False, "width": 8})
    assert Capability.TEXT_TO_IMAGE not in unconditional.capabilities


def test_latent_grid_and_scaling() -> None:
    assert [latent_halvings(32, 32, k) for k in (0, 1, 2, 3)] == [0, 1, 2, 3]
    assert latent_halvings(8, 8, 5) == 2 and latent_halvings(28, 28, 3) == 2 and latent_halvings(9, 9, 2) == 0
    model = build_model("ldm", _info(), {**SMALL, "downsample": 2})
    assert model.diffusion_shape == (4, 4, 4)
    x = torch.from_numpy(make_scenes(32, 16)[0])
    optim = Optimizers(model.configure_optimizers())
    model.training_step(Batch(x), 0, optim)  # no stage: an autoencoder step
    assert model.latent_scale == 0
    optim.stage = LDM.stages[1]
    model.training_step(Batch(x, cond=bag_of_words(make_scenes(32, 16)[1])), 1, optim)
    mean, _ = model.encoder(model.preprocess(x))
    assert model.latent_scale.item() == pytest.approx(1 / mean.std().item(), rel=1e-5)
    z = model.encode(x)
    assert z.std().item() == pytest.approx(1.0, rel=1e-4)  # unit variance on the batch that measured it
    torch.testing.assert_close(model.decode(z), torch.sigmoid(model.decoder(mean)))
    torch.testing.assert_close(model.reconstruct(x), model.decode(z))


def test_a_briefly_trained_ldm_draws_the_prompted_colour_more_often_than_chance() -> None:
    """Single-object scenes (an easy subset), 16x16: after a short run, the checker finds the prompt's colour in
    most images drawn for held-out prompts, against 1/6 for a right-looking image of a random colour."""
    images, texts = make_scenes(900, 16, seed=7)
    single = [i for i, t in enumerate(texts) if len(parse(t).things) == 1]
    x, y = torch.from_numpy(images[single]), [texts[i] for i in single]
    data = TensorDataset(_info(), Batch(x, cond=bag_of_words(y)), Batch(x[:8], cond=bag_of_words(y[:8])),
                         Batch(x[:8], cond=bag_of_words(y[:8])))
    torch.manual_seed(0)
    model = build_model("ldm", data.info, {**SMALL, "ae_width": 32, "lr": 5e-3, "ae_lr": 1e-2})  # fast, for 150 steps
    optim = Optimizers(model.configure_optimizers())
    for step in range(350):  # 150 autoencoder steps, 200 diffusion steps
        optim.stage = LDM.stages[0] if step < 150 else LDM.stages[1]
        model.training_step(data.batch_at(step, 32, seed=0), step, optim)
    prompts = [f"a large {colour} {shape}" for colour in COLOURS for shape in ("circle", "square")] * 2
    drawn = model.sample(len(prompts), seed=0, prompt=prompts, guidance=3.0, steps=10)
    right = np.mean([check(image, text)["colour"] for image, text in zip(drawn, prompts, strict=True)])
    assert right >= 0.4, f"colour right in {right:.0%} of images (chance 1/6)"
