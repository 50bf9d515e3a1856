"""maskgit: the masked-token objective, the cosine decoding schedule, infilling that never touches known tokens,
bidirectional attention, the pseudo-log-likelihood, and use as a VQ-VAE prior (token data without a tokenizer)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import genzoo
from conftest import FAST, TINY_CORPUS, tiny_dataset
from genzoo.contract import Batch, Capability, DataInfo, DataKind, Optimizers
from genzoo.data import DataOptions
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.transformer.maskgit import MaskGIT, masked_after, passes
from genzoo.registry import build_model

TINY = {"layers": 1, "heads": 2, "width": 16}
GREEDY = {"temperature": 0.0, "choice_temperature": 0.0}


@pytest.fixture(scope="module")
def text() -> genzoo.Dataset:
    return text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")


@pytest.fixture(scope="module")
def digits() -> genzoo.Dataset:
    return tiny_dataset(DataKind.IMAGE)


def _model(data: genzoo.Dataset, **hparams: object) -> MaskGIT:
    torch.manual_seed(0)
    return build_model("maskgit", data.info, {**TINY, **hparams}, tokenizer=data.tokenizer).eval()


def _record_inputs(model: MaskGIT) -> list[torch.Tensor]:
    """Every (B, N) id tensor the network reads from now on."""
    seen: list[torch.Tensor] = []
    model.register_forward_pre_hook(lambda _, args: seen.append(args[0].clone()))
    return seen


def _exact_ceil(value: float) -> int:
    return math.ceil(round(value, 9))


# ----- training -------------------------------------------------------------------------------------------------------
def test_masked_token_loss_falls_while_training(digits: genzoo.Dataset) -> None:
    model = _model(digits, lr=3e-3).train()
    optim = Optimizers(model.configure_optimizers())
    held = next(digits.batches("val", 32))

    def val() -> float:
        with torch.no_grad():
            return model.validation_step(held, torch.Generator().manual_seed(0))["val_loss"]

    before = val()
    assert before == pytest.approx(math.log(digits.info.levels), rel=0.05)  # untrained: near uniform over 17 levels
    losses = [model.training_step(digits.batch_at(step, 16, seed=0), step, optim)["loss"] for step in range(60)]
    assert sum(losses[-10:]) / 10 < 0.8 * sum(losses[:10]) / 10
    assert val() < 0.75 * before


def test_the_loss_is_the_cross_entropy_of_the_masked_tokens_given_the_rest(text: genzoo.Dataset) -> None:
    model = _model(text)
    ids = text.batch_at(0, 4, seed=0).x
    masked = model.random_mask(torch.tensor([0.3, 0.5, 0.9, 1.0]), torch.Generator().manual_seed(1))
    inputs = ids.masked_fill(masked, model.mask_id)
    log_probs = F.log_softmax(model(inputs), -1).gather(-1, ids[..., None]).squeeze(-1)
    assert model.masked_loss(ids, masked).item() == pytest.approx(-log_probs[masked].mean().item(), rel=1e-5)
    # the validation loss is this loss at the fixed ratio, with masks from the given generator
    expected = model.masked_loss(ids, model.random_mask(torch.full((4,), 0.5), torch.Generator().manual_seed(7)))
    assert model.validation_step(Batch(ids), torch.Generator().manual_seed(7))["val_loss"] == pytest.approx(
        expected.item(), rel=1e-6)


def test_random_masks_cover_ceil_r_n_positions(text: genzoo.Dataset) -> None:
    model = _model(text)  # N = 16
    ratio = torch.tensor([1e-4, 0.25, 0.26, 0.5, 1.0])
    masked = model.random_mask(ratio, torch.Generator().manual_seed(0))
    assert masked.sum(1).tolist() == [1, 4, 5, 8, 16]
    again = model.random_mask(torch.full((64,), 0.5), torch.Generator().manual_seed(0))
    assert again.float().mean(0).min() > 0.2  # positions drawn uniformly: every position gets masked


def test_training_masking_ratios_follow_the_cosine_schedule(text: genzoo.Dataset) -> None:
    """r = cos(pi/2 u), u ~ U(0, 1): P(r <= s) = 1 - (2/pi) arccos(s), mean 2/pi."""
    model = _model(text).train()
    ratios: list[torch.Tensor] = []
    draw = model.random_mask
    model.random_mask = lambda ratio, gen: ratios.append(ratio) or draw(ratio, gen)  # type: ignore[method-assign]
    optim = Optimizers(model.configure_optimizers())
    torch.manual_seed(0)
    for step in range(40):
        model.training_step(text.batch_at(step, 32, seed=0), step, optim)
    r = torch.cat(ratios).double().sort().values
    assert r.min() > 0 and r.max() <= 1
    assert r.mean().item() == pytest.approx(2 / math.pi, abs=0.02)
    cdf = 1 - 2 / math.pi * torch.arccos(r)
    empirical = torch.arange(1, len(r) + 1, dtype=torch.float64) / len(r)
    assert (cdf - empirical).abs().max() < 0.05  # Kolmogorov-Smirnov distance, 1280 draws


# ----- the decoding schedule ------------------------------------------------------------------------------------------
def test_masked_count_schedule_is_ceil_n_cos() -> None:
    n = torch.tensor([64])
    assert [int(masked_after(t, 3, n)) for t in range(4)] == [64, 56, 32, 0]  # 64 cos(pi/3) = 32 exactly
    assert [int(masked_after(t, 4, torch.tensor([10]))) for t in range(5)] == [10, 10, 8, 4, 0]
    for total, steps in itertools.product((1, 7, 64), (1, 5, 12, 64)):
        counts = [int(masked_after(t, steps, torch.tensor(total))) for t in range(steps + 1)]
        assert counts[0] == total and counts[-1] == 0 and counts == sorted(counts, reverse=True)
        assert counts == [_exact_ceil(total * math.cos(math.pi / 2 * t / steps)) for t in range(steps + 1)]
        assert passes(total, steps) == sum(a > b for a, b in itertools.pairwise(counts))
    assert passes(64, 12) == 11  # n(1) = ceil(63.45) = 64: the first iteration unmasks nothing, so it is skipped


@pytest.mark.parametrize("steps", [1, 3, 8])
def test_each_iteration_unmasks_as_the_cosine_schedule_says(digits: genzoo.Dataset, steps: int) -> None:
    model = _model(digits)
    seen = _record_inputs(model)
    out = model.sample(3, seed=0, steps=steps)
    counts = [int(masked_after(t, steps, torch.tensor(64))) for t in range(steps + 1)]
    expected = [before for before, after in itertools.pairwise(counts) if after < before]
    assert [(x == model.mask_id).sum(1).tolist() for x in seen] == [[c] * 3 for c in expected]
    assert len(seen) == model.cost(steps=steps).nfe_per_sample
    levels = out * (digits.info.levels - 1)
    assert torch.equal(levels, levels.round()) and out.min() >= 0 and out.max() <= 1  # every pixel filled


def _reference_decode(model: MaskGIT, n: int, steps: int, temperature: float, choice: float,
                      generator: torch.Generator) -> torch.Tensor:
    """MaskGIT's loop written plainly, row by row, drawing from ``generator`` in the model's order (the tokens, then
    the Gumbel noise): iteration t draws x_i ~ softmax(logits / temperature), scores it by log p(x_i) + choice *
    (1 - t/T) * Gumbel, and keeps the n(t-1) - n(t) best-scored draws among the masked positions."""
    ids = torch.full((n, model.seq_len), model.mask_id)
    counts = [_exact_ceil(model.seq_len * math.cos(math.pi / 2 * t / steps)) for t in range(steps + 1)]
    with torch.no_grad():
        for t in range(1, steps + 1):
            if counts[t] == counts[t - 1]:
                continue
            logits = model(ids)
            log_probs = F.log_softmax(logits, -1)
            if temperature == 0:
                drawn = logits.argmax(-1)
            else:
                probs = F.softmax(logits / temperature, -1).flatten(0, 1)
                drawn = torch.multinomial(probs, 1, generator=generator).view(ids.shape)
            noise = torch.zeros(ids.shape)
            if choice > 0:
                u = torch.rand(ids.shape, generator=generator).clamp(1e-20, 1 - 1e-7)
                noise = -torch.log(-torch.log(u)) * choice * (1 - t / steps)
            for row in range(n):
                masked = [i for i in range(model.seq_len) if ids[row, i] == model.mask_id]
                score = {i: log_probs[row, i, drawn[row, i]].item() + noise[row, i].item() for i in masked}
                for i in sorted(masked, key=lambda i: -score[i])[: counts[t - 1] - counts[t]]:
                    ids[row, i] = drawn[row, i]
    return ids


@pytest.mark.parametrize(("steps", "temperature", "choice"), [(64, 0.0, 0.0), (5, 0.7, 3.0)])
def test_decoding_matches_a_plain_reference_loop(digits: genzoo.Dataset, steps: int, temperature: float,
                                                 choice: float) -> None:
    model = _model(digits)
    out = model.sample(2, seed=3, steps=steps, temperature=temperature, choice_temperature=choice)
    expected = _reference_decode(model, 2, steps, temperature, choice, torch.Generator().manual_seed(3))
    assert torch.equal(model.to_ids(out), expected)


def test_greedy_decoding_with_t_equal_n_does_not_depend_on_the_seed(digits: genzoo.Dataset) -> None:
    model = _model(digits)
    first = model.sample(2, seed=0, steps=64, **GREEDY)
    assert torch.equal(first, model.sample(2, seed=5, steps=64, **GREEDY))
    sampled = model.sample(2, seed=0, steps=64)
    assert not torch.equal(sampled, model.sample(2, seed=5, steps=64))


# ----- infilling ------------------------------------------------------------------------------------------------------
def test_inpainting_fills_exactly_the_masked_pixels_and_never_changes_known_ones(digits: genzoo.Dataset) -> None:
    model = _model(digits)
    x = next(digits.batches("val", 2)).x
    x = (x + 0.01 * torch.rand(x.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)  # off the grid
    mask = torch.zeros(8, 8)
    mask[2:6, 1:5] = 1
    seen = _record_inputs(model)
    out = model.inpaint(x, mask, seed=0, steps=5)
    keep = mask == 0
    assert torch.equal(out[..., keep], x[..., keep])  # exactly as given, even off the data's grid
    known = model.to_ids(x)[:, keep.flatten()]
    for ids in seen:  # the network always reads the known pixels as they are, never masked
        assert torch.equal(ids[:, keep.flatten()], known)
    assert (seen[0][:, ~keep.flatten()] == model.mask_id).all() and len(seen) == passes(16, 5)
    # the filled pixels are on the data's grid, and come from the model: a different seed changes them
    levels = out[..., ~keep] * (digits.info.levels - 1)
    assert torch.equal(levels, levels.round())
    assert not torch.equal(out, model.inpaint(x, mask, seed=1, steps=5))


def test_text_infilling_fills_the_markers_and_keeps_the_prompt(text: genzoo.Dataset) -> None:
    model = _model(text)
    seen = _record_inputs(model)
    out = model.generate("the [MASK:3] sat[MASK]", steps=4, seed=0)
    assert isinstance(out, str) and len(out) == len("the ") + 3 + len(" sat") + 1
    assert out.startswith("the ") and out[7:11] == " sat"
    prompt = model.prompt_ids("the [MASK:3] sat[MASK]")
    assert prompt.count(model.mask_id) == 4 and len(prompt) == 12
    for ids in seen:  # the prompt's tokens never change; the 4 positions after it stay unknown, never generated
        known = torch.tensor([i != model.mask_id for i in prompt])
        assert torch.equal(ids[0, :12][known], torch.tensor(prompt)[known])
        assert (ids[0, 12:] == model.mask_id).all()
    assert model.generate("[MASK]", seed=0, **GREEDY) == model.generate("[MASK]", seed=3, **GREEDY)
    assert len(model.generate("the [MASK]", num_return_sequences=3)) == 3


def test_a_prompt_without_markers_is_continued_window_by_window(text: genzoo.Dataset) -> None:
    """Context 16, prompt of 5 tokens, 30 new in windows keeping >= 8 tokens before them: 5 known + 11 new, 8 + 8,
    8 + 8, then 13 + 3; two iterations each, except 3 tokens, where n(1) = ceil(3 cos(pi/4)) = 3 unmasks nothing."""
    model = _model(text)
    seen = _record_inputs(model)
    out = model.generate("the c", max_new_tokens=30, steps=2, seed=0)
    assert isinstance(out, str) and len(out) == 35 and out.startswith("the c")  # the prompt, then 30 new tokens
    assert [int((ids == model.mask_id).sum()) for ids in seen] == [11, 8, 8, 6, 8, 6, 3]
    full = model.prompt_ids(out)
    for ids, end in zip([seen[i] for i in (0, 2, 4, 6)], [5, 16, 24, 32], strict=True):
        keep = int((ids != model.mask_id).sum())
        assert ids[0, :keep].tolist() == full[end - keep : end]  # each window reads the text just before it
    assert model.generate("the", max_new_tokens=0) == "the"
    assert len(model.generate("", steps=3)) == 16  # the whole window
    with pytest.raises(ConfigError, match="num_beams"):
        model.generate("the", num_beams=2)


# ----- the network ----------------------------------------------------------------------------------------------------
def test_every_output_depends_on_tokens_before_and_after_it(text: genzoo.Dataset) -> None:
    """Bidirectional attention, by gradient: unlike gpt (tests/test_gpt.py), position i reads positions j > i."""
    model = _model(text, layers=2)
    h = model.embed(text.batch_at(0, 2, seed=0).x).detach().requires_grad_(True)
    out = h
    for block in model.blocks:
        out = block(out, model.rotary, 0, None)[0]
    i = 5
    out[:, i].sum().backward()
    reach = h.grad.abs().sum(-1)
    assert (reach > 0).all(), "position 5 must read every position, after it too"


@pytest.mark.parametrize("positions", ["learned", "rotary", "learned+rotary"])
def test_position_encodings(text: genzoo.Dataset, positions: str) -> None:
    model = _model(text, positions=positions)
    assert (model.pos is not None) == ("learned" in positions) and (model.rotary is not None) == ("rotary" in positions)
    assert model.sample(2, seed=0, steps=3).shape == (2, 16)
    if positions == "learned":  # nothing but the table tells the positions of an all-[MASK] input apart
        logits = model(torch.full((1, 16), model.mask_id))
        assert not torch.allclose(logits[0, 0], logits[0, 1])


# ----- pseudo-log-likelihood ------------------------------------------------------------------------------------------
def _oracle(table: torch.Tensor, mask_id: int):
    """A 'network' whose prediction at a lone [MASK] is the true conditional p(x_i | x_-i) of the joint ``table``."""
    def forward(ids: torch.Tensor) -> torch.Tensor:
        logits = torch.zeros(*ids.shape, table.shape[0])
        for row, i in (ids == mask_id).nonzero().tolist():
            index = [slice(None) if j == i else ids[row, j].item() for j in range(ids.shape[1])]
            logits[row, i] = table[tuple(index)].log()
        return logits
    return forward


def test_pseudo_log_likelihood_equals_brute_force_enumeration() -> None:
    """V = 3, N = 3: PLL(x) = sum_i log p(x) / sum_v p(x with x_i = v), enumerated over all 27 sequences; for a
    product distribution the PLL is the exact log-likelihood."""
    model = build_model("maskgit", DataInfo(kind=DataKind.TOKENS, shape=(3,), levels=3), TINY)
    xs = torch.tensor(list(itertools.product(range(3), repeat=3)))
    joint = torch.rand(3, 3, 3, generator=torch.Generator().manual_seed(0)) + 0.05
    joint /= joint.sum()
    model.forward = _oracle(joint, model.mask_id)  # type: ignore[method-assign]
    expected = torch.tensor([sum(math.log(joint[tuple(x)] / joint[tuple(
        [slice(None) if j == i else x[j] for j in range(3)])].sum()) for i in range(3)) for x in xs.tolist()])
    assert torch.allclose(model.pseudo_log_likelihood(xs), expected, atol=1e-5)
    product = torch.einsum("a,b,c->abc", torch.tensor([0.2, 0.3, 0.5]), torch.tensor([0.6, 0.3, 0.1]),
                           torch.tensor([0.1, 0.1, 0.8]))
    model.forward = _oracle(product, model.mask_id)  # type: ignore[method-assign]
    exact = torch.tensor([math.log(product[tuple(x)]) for x in xs.tolist()])
    assert torch.allclose(model.pseudo_log_likelihood(xs), exact, atol=1e-5)


def test_task_metrics_report_the_pseudo_nll_apart_from_any_likelihood(text: genzoo.Dataset) -> None:
    model = _model(text)
    caps = model.capabilities
    assert not caps & {Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND, Capability.ANOMALY_SCORE}
    with pytest.raises(GenzooError):
        model.log_likelihood(text.batch_at(0, 2, seed=0).x)
    test = Batch(next(text.batches("test", 8)).x)
    with torch.no_grad():
        metrics = model.task_metrics(test, torch.Generator().manual_seed(0))
    nats = -model.pseudo_log_likelihood(test.x).mean().item() / 16
    assert metrics["pseudo_nll_nats_per_token"] == pytest.approx(nats, rel=1e-5)
    assert metrics["pseudo_bits_per_token"] == pytest.approx(nats / math.log(2), rel=1e-5)
    assert metrics["gen_nfe_per_sequence"] == passes(16, 12) and metrics["gen_tokens_per_s"] > 0


# ----- as a VQ-VAE prior, runs, errors --------------------------------------------------------------------------------
def test_works_on_plain_token_codes_as_a_vqvae_prior() -> None:
    """A VQ-VAE builds its prior by name for a (h*w,) grid of K codes, with no tokenizer."""
    info = DataInfo(kind=DataKind.TOKENS, shape=(16,), levels=32)
    torch.manual_seed(0)
    prior = build_model("maskgit", info, TINY)
    assert prior.capabilities == {Capability.SAMPLE}
    codes = torch.randint(0, 32, (8, 16), generator=torch.Generator().manual_seed(0))
    optim = Optimizers(prior.configure_optimizers())
    assert math.isfinite(prior.training_step(Batch(codes), 0, optim)["loss"])
    assert math.isfinite(prior.validation_step(Batch(codes), torch.Generator().manual_seed(0))["val_loss"])
    samples = prior.sample(4, seed=0, steps=4)
    assert samples.shape == (4, 16) and samples.dtype == torch.long and samples.min() >= 0 and samples.max() < 32
    with pytest.raises(GenzooError, match="tokenizer"):
        prior.generate("a")


def test_a_trained_run_reloads_with_its_tokenizer_and_fills_text(text: genzoo.Dataset, tmp_path: Path) -> None:
    run = genzoo.train("maskgit", text, steps=2, out=tmp_path / "run", overrides=TINY, **FAST)
    model = genzoo.load(run)
    assert Capability.GENERATE_TEXT in model.capabilities and (run / "tokenizer.json").is_file()
    assert model.generate("the [MASK]at", seed=0).startswith("the ")


def test_bad_inputs_give_one_clear_error(text: genzoo.Dataset, digits: genzoo.Dataset) -> None:
    with pytest.raises(ConfigError, match="continuous"):
        build_model("maskgit", DataInfo(kind=DataKind.IMAGE, shape=(1, 4, 4)), TINY)
    with pytest.raises(ConfigError, match="heads"):
        build_model("maskgit", text.info, {"width": 18, "heads": 4})
    model = _model(text)
    with pytest.raises(GenzooError, match="window of 16"):
        model.generate("the cat sat on the [MASK]")
    with pytest.raises(GenzooError, match="no token"):
        model.generate("a [MASK:0]")
    with pytest.raises(ConfigError, match="steps"):
        model.generate("a [MASK]", steps=0)
    with pytest.raises(ConfigError, match="steps"):
        _model(digits).sample(2, steps=0)
