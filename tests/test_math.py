"""Analytic checks of shared pieces of math that the family tests lean on: the VAE's KL term, cached decoding
against re-reading the whole sequence (on perturbed weights, for every position scheme), the learning-rate schedule
and the EMA. Each test compares with an answer computed independently (torch.distributions, closed forms)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from conftest import tiny_dataset
from genzoo.contract import DataKind
from genzoo.registry import build_model
from genzoo.training.ema import EMA
from genzoo.training.trainer import LRSchedule


def test_vae_kl_term_equals_torch_distributions() -> None:
    from genzoo.models.vae.vae import VAE

    gen = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    expected = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(VAE.kl_to_prior(mu, logvar), expected, rtol=1e-6, atol=1e-6)


def _perturbed(name: str, **overrides: object) -> nn.Module:
    """A small token model whose weights are all randomised well away from their initialisation, so every position
    and every weight matters for the logits (an untrained model hides off-by-one positions)."""
    data = tiny_dataset(DataKind.TOKENS)
    model = build_model(name, data.info, {"layers": 2, "width": 16, **overrides}, tokenizer=data.tokenizer)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize(("name", "overrides"), [("gpt", {"positions": "learned", "heads": 2}),
                                                 ("gpt", {"positions": "rotary", "heads": 2}),
                                                 ("lstm", {})], ids=["gpt-learned", "gpt-rotary", "lstm"])
def test_cached_decoding_gives_the_logits_of_rereading_the_sequence(name: str, overrides: dict) -> None:
    model = _perturbed(name, **overrides)
    ids = torch.randint(0, model.data.levels, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        logits, state = model.prefill(ids[:, :3])
        for t in range(3, ids.shape[1]):
            reread, _ = model.prefill(ids[:, : t])
            torch.testing.assert_close(logits, reread, rtol=1e-5, atol=1e-5, msg=f"{name}: position {t}")
            logits, state = model.extend(ids[:, t], state)


def test_rotary_attention_scores_depend_only_on_relative_position() -> None:
    from genzoo.models.transformer.gpt import Rotary

    rotary = Rotary(8, 32)
    gen = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 1, 1, 8, generator=gen), torch.randn(1, 1, 1, 8, generator=gen)
    scores = {(m, n): float((rotary(q, m) * rotary(k, n)).sum()) for m, n in [(5, 2), (13, 10), (3, 0), (7, 7)]}
    assert scores[(5, 2)] == pytest.approx(scores[(13, 10)], abs=1e-5) == pytest.approx(scores[(3, 0)], abs=1e-5)
    assert scores[(7, 7)] == pytest.approx(float((q * k).sum()), abs=1e-5)  # no rotation at equal positions
    assert abs(scores[(5, 2)] - scores[(7, 7)]) > 1e-3  # and a different offset scores differently


@pytest.mark.parametrize("kind", ["constant", "cosine"])
def test_learning_rate_schedule_values(kind: str) -> None:
    schedule = LRSchedule(kind, warmup_steps=4, steps=24)
    assert [schedule.factor(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    if kind == "constant":
        assert schedule.factor(23) == 1.0
        return
    # cosine from 1 at the end of warm-up to 10% at the last step, halfway at the midpoint of the decay
    assert schedule.factor(4) == pytest.approx(1.0)
    assert schedule.factor(14) == pytest.approx(0.1 + 0.9 * 0.5)
    assert schedule.factor(9) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert schedule.factor(24) == pytest.approx(0.1)


def test_ema_follows_the_closed_form_average() -> None:
    """theta_ema(t) = d_t theta_ema(t-1) + (1 - d_t) theta(t), d_t = min(decay, (1 + t) / (10 + t))."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, decay=0.5)
    expected = 0.0
    for step, value in enumerate([1.0, 2.0, 4.0, 8.0, 16.0, -3.0, 5.0, 0.5, 2.5, 7.0, -1.0]):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(step)
        d = min(0.5, (1 + step) / (10 + step))
        expected = d * expected + (1 - d) * value
        assert float(ema.shadow["weight"]) == pytest.approx(expected, rel=1e-6)
    assert d == 0.5  # the warm-up cap gave way to the decay


@pytest.mark.parametrize(("name", "overrides"), [("gpt", {"heads": 2}), ("lstm", {}), ("lstm", {"cell": "gru"})],
                         ids=["gpt", "lstm", "gru"])
def test_beam_search_reorders_the_decoding_state_of_every_model(name: str, overrides: dict) -> None:
    """Beams that reuse the cache (reordered between steps) find the same answers, with the same scores, as beams
    that re-read their whole sequence: a state reordered along the wrong dimension would mix beams up."""
    from genzoo.generation import beam_search, generation_config

    model = _perturbed(name, **overrides)
    prompt = [int(i) for i in torch.randint(0, model.data.levels, (4,), generator=torch.Generator().manual_seed(5))]
    cached, reread = (beam_search(model, prompt, generation_config(num_beams=3, max_new_tokens=6, use_cache=c))
                      for c in (True, False))
    assert [tokens for tokens, _ in cached] == [tokens for tokens, _ in reread]
    assert [score for _, score in cached] == pytest.approx([score for _, score in reread], abs=1e-5)
