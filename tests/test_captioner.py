"""``captioner``: image -> caption on ``scenes``, its decoding and how its captions are scored."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genzoo
from genzoo.cli import app
from genzoo.contract import Optimizers
from genzoo.data import load_dataset
from genzoo.data.scenes import Scene, Thing
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import save_png
from genzoo.models.transformer.captioner import agreement, attribute_accuracy
from genzoo.registry import build_model

SMALL = {"width": 32, "heads": 2, "encoder_layers": 1, "decoder_layers": 1, "lr": 3e-3}


@pytest.fixture(scope="module")
def scenes() -> object:
    return load_dataset("scenes:#n=600,image_size=16,caption=tokens")


def _model(scenes: object, **overrides: object) -> object:
    torch.manual_seed(0)
    return build_model("captioner", scenes.info, {**SMALL, **overrides}, tokenizer=scenes.tokenizer)


@pytest.fixture(scope="module")
def trained(scenes: object) -> object:
    """Trained for a few seconds (300 steps of 32 scenes)."""
    model = _model(scenes)
    optim = Optimizers(model.configure_optimizers())
    for step in range(300):
        model.training_step(scenes.batch_at(step, 32, seed=0), step, optim)
    return model.eval()


def test_a_caption_token_does_not_depend_on_later_tokens(scenes: object) -> None:
    """d logits_j / d (input embedding k) is zero for every later input k > j and not for k <= j."""
    model = _model(scenes)
    batch = scenes.batch_at(0, 4, seed=0)
    inputs: list[torch.Tensor] = []

    def keep(module: torch.nn.Module, args: object, out: torch.Tensor) -> None:
        out.retain_grad()
        inputs.append(out)

    model.embed.register_forward_hook(keep)
    logits = model.caption_logits(batch.x, batch.cond)
    length = batch.cond.shape[1]
    for j in (0, 3, length - 2):
        inputs[0].grad = None
        logits[:, j].masked_fill(torch.isinf(logits[:, j]), 0).sum().backward(retain_graph=True)
        grad = inputs[0].grad.abs().sum(dim=(0, 2))
        assert torch.all(grad[j + 1 :] == 0), f"logits at {j} see later tokens"
        assert torch.all(grad[: j + 1] > 0), f"logits at {j} ignore earlier tokens"


def test_the_image_conditions_every_caption_token(scenes: object) -> None:
    model = _model(scenes)
    batch = scenes.batch_at(0, 2, seed=0)
    images = batch.x.clone().requires_grad_(True)
    logits = model.caption_logits(images, batch.cond)
    for j in range(batch.cond.shape[1]):
        (grad,) = torch.autograd.grad(logits[0, j, 2:].sum(), images, retain_graph=True)  # ids 0, 1: pad, </s>
        assert grad[0].abs().sum() > 0 and grad[1].abs().sum() == 0  # its own image only


def test_padding_is_never_predicted_and_the_loss_skips_it(scenes: object) -> None:
    model = _model(scenes)
    batch = scenes.batch_at(0, 8, seed=0)
    logits = model.caption_logits(batch.x, batch.cond)
    assert torch.isneginf(logits[..., model.pad]).all()
    keep = batch.cond != model.pad
    manual = -logits.log_softmax(-1).gather(-1, batch.cond[..., None])[..., 0][keep].mean()
    assert model.validation_step(batch, torch.Generator())["val_loss"] == pytest.approx(manual.item(), rel=1e-5)


def test_cached_greedy_decoding_equals_the_argmax_of_a_full_pass(trained: object, scenes: object) -> None:
    images = scenes.examples("test").x[:8]
    rows = trained.caption_ids(images)
    for image, ids in zip(images, rows, strict=True):
        full = torch.tensor([[*ids, trained.eos]])  # the greedy answer, re-read without the KV cache
        logits = trained.caption_logits(image[None], full)
        assert logits[0].argmax(-1).tolist() == full[0].tolist()


def test_beam_search_finds_a_caption_at_least_as_probable_as_greedy(trained: object, scenes: object) -> None:
    images = scenes.examples("test").x[:4]

    def mean_logp(image: torch.Tensor, ids: list[int]) -> float:
        full = torch.tensor([[*ids, trained.eos]])
        with torch.no_grad():
            logp = trained.caption_logits(image[None], full).log_softmax(-1)
        return logp[0].gather(-1, full[0][:, None]).mean().item()

    greedy, beam = trained.caption_ids(images), trained.caption_ids(images, num_beams=4)
    for image, g, b in zip(images, greedy, beam, strict=True):
        assert mean_logp(image, b) >= mean_logp(image, g) - 1e-5
    assert trained.caption(images[0]) == [trained.decode_tokens(greedy[0])]
    assert trained.cost(num_beams=4).nfe_per_sample == 4 * trained.length


def test_a_briefly_trained_captioner_beats_chance_and_reads_the_image(trained: object, scenes: object) -> None:
    test = scenes.examples("test")
    metrics = trained.task_metrics(test, torch.Generator().manual_seed(0))
    # one object of six colours: a guess is right 1/6 of the time, and less on two-object scenes
    assert metrics["colour_accuracy"] > 0.3
    assert metrics["grammatical_accuracy"] > 0.9
    captions = trained.caption(test.x)
    assert metrics["exact_match_accuracy"] == sum(c == r for c, r in zip(captions, scenes.captions["test"],
                                                                          strict=True)) / len(captions)
    assert len(set(captions)) >= 8  # different images, different captions


def test_attribute_scoring_of_captions() -> None:
    red, blue = Thing("small", "red", "circle"), Thing("large", "blue", "square")
    ref = Scene((red, blue), "above")
    assert agreement(Scene((blue, red), "below"), ref)["relation"]  # the same scene, told from the other object
    wrong = agreement(Scene((red, blue), "below"), ref)
    assert wrong["colour"] and wrong["count"] and not wrong["relation"] and not wrong["scene"]
    swapped = agreement(Scene((Thing("small", "blue", "circle"), Thing("large", "red", "square")), "above"), ref)
    assert swapped["colour"] and swapped["shape"] and not swapped["scene"]
    assert agreement(Scene((red,) * 2), Scene((red,) * 3))["count"] is False
    assert agreement(Scene((red,)), Scene((red,)))["relation"] is None
    scores = attribute_accuracy(["a small red circle", "not a caption"], ["a small red circle", "a small red square"])
    assert scores["grammatical_accuracy"] == 0.5 and scores["colour_accuracy"] == 0.5
    assert scores["scene_accuracy"] == 0.5 and "relation_accuracy" not in scores


def test_bad_data_and_inputs_give_one_clear_error(scenes: object) -> None:
    with pytest.raises(ConfigError, match="caption=tokens"):
        build_model("captioner", load_dataset("digits").info, SMALL)
    with pytest.raises(ConfigError, match="patch 3 must divide"):
        _model(scenes, patch=3)
    model = _model(scenes)
    with pytest.raises(GenzooError, match=r"shape \(3, 16, 16\)"):
        model.caption(torch.rand(1, 3, 8, 8))
    with pytest.raises(ConfigError, match="num_beams"):
        model.caption(torch.rand(1, 3, 16, 16), num_beams=0)
    with pytest.raises(GenzooError, match="cannot caption"):
        build_model("sr3", scenes.info, {"factor": 2}).caption(torch.rand(1, 3, 16, 16))


def test_train_asks_for_tokens_and_the_cli_prints_the_caption(tmp_path: Path) -> None:
    """``genzoo train captioner --data scenes:`` needs no caption=tokens (the model asks for it); ``genzoo sample
    RUN --image`` prints what ``model.caption`` says."""
    run = genzoo.train("captioner", "scenes:#n=60,image_size=16", steps=2, out=tmp_path / "run", overrides=SMALL,
                       progress=False, batch_size=8, sample_every=10_000, eval_every=10_000,
                       checkpoint_every=10_000, val_examples=8)
    image = load_dataset("scenes:#n=60,image_size=16,caption=none").examples("test").x[0]
    path = tmp_path / "in.png"
    save_png(path, (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    result = CliRunner().invoke(app, ["sample", str(run), "--image", str(path)])
    assert result.exit_code == 0, result.output
    model = genzoo.load(run)
    assert result.output.strip() == model.caption(image)[0]
    beams = CliRunner().invoke(app, ["sample", str(run), "--image", str(path), "--num-beams", "3"])
    assert beams.exit_code == 0 and beams.output.strip() == model.caption(image, num_beams=3)[0]
