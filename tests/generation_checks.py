"""Generation properties every language model must have (used by test_gpt.py and test_hf.py)."""

from __future__ import annotations

from typing import Any

import torch

from genzoo.generation import choose, filter_logits, generate_tokens, generation_config


def greedy_by_hand(model: Any, prompt: str, n: int) -> list[int]:
    """n argmax steps through the full forward of ``prefill`` (no cache, no sampling code)."""
    ids = torch.tensor([model.prompt_ids(prompt)])
    out = []
    with torch.no_grad():
        for _ in range(n):
            token = int(model.prefill(ids)[0].argmax(-1))
            out.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return out


def check_cache_equals_no_cache(model: Any, prompt: str, n: int) -> None:
    for seed in (0, 1):
        cached = model.generate(prompt, max_new_tokens=n, seed=seed, use_cache=True)
        plain = model.generate(prompt, max_new_tokens=n, seed=seed, use_cache=False)
        assert cached == plain and len(model.prompt_ids(cached)) > 1


def check_temperature_zero_is_greedy(model: Any, prompt: str, n: int) -> None:
    expected = model.decode(greedy_by_hand(model, prompt, n))
    assert model.generate(prompt, max_new_tokens=n, temperature=0) == expected
    assert model.generate(prompt, max_new_tokens=n, temperature=1e-6, seed=3) == expected
    assert model.generate(prompt, max_new_tokens=n, top_k=1, seed=5) == expected


def check_filters_keep_to_the_allowed_set(model: Any, prompt: str) -> None:
    """Sampled tokens under top-k / top-p / min-p always lie in the set each rule allows at that step."""
    ids = torch.tensor([model.prompt_ids(prompt)])
    with torch.no_grad():
        logits = model.prefill(ids)[0].float()
    probs = logits.softmax(-1)[0]
    order = probs.argsort(descending=True)
    mass_before = probs[order].cumsum(0) - probs[order]
    rules = {
        "top_k": (dict(top_k=3), set(order[:3].tolist())),
        "top_p": (dict(top_p=0.5), set(order[mass_before < 0.5].tolist())),
        "min_p": (dict(min_p=0.5), set((probs >= 0.5 * probs.max()).nonzero().flatten().tolist())),
    }
    for options, allowed in rules.values():
        cfg = generation_config(max_new_tokens=1, **options)
        seen = torch.zeros_like(logits, dtype=torch.bool)
        filtered = filter_logits(logits, seen, cfg)
        assert set(torch.isfinite(filtered[0]).nonzero().flatten().tolist()) == allowed
        gen = torch.Generator().manual_seed(0)
        draws = {int(choose(filtered, cfg, gen)) for _ in range(200)}
        assert draws <= allowed


def check_stop_strings_cut_exactly(model: Any, prompt: str, n: int) -> None:
    full = model.generate(prompt, max_new_tokens=n, seed=7)
    stop = full[len(full) // 2 : len(full) // 2 + 2]
    expected = full[: full.find(stop)]
    assert model.generate(prompt, max_new_tokens=n, seed=7, stop=[stop]) == expected
    assert "".join(model.stream(prompt, max_new_tokens=n, seed=7, stop=[stop])) == expected
    assert "".join(model.stream(prompt, max_new_tokens=n, seed=7)) == full


def check_multiple_sequences_and_repetition_penalty(model: Any, prompt: str, n: int) -> None:
    outs = model.generate(prompt, max_new_tokens=n, seed=2, num_return_sequences=3)
    assert isinstance(outs, list) and len(outs) == 3 and len(set(outs)) > 1
    # CTRL penalty on the prompt's tokens: positive logits divided, negative multiplied, others untouched
    ids = torch.tensor([model.prompt_ids(prompt)])
    with torch.no_grad():
        logits = model.prefill(ids)[0].float()
    seen = torch.zeros_like(logits, dtype=torch.bool)
    seen[0, ids[0][ids[0] < model.vocab_out]] = True
    penalised = filter_logits(logits, seen, generation_config(repetition_penalty=2.0))
    expected = torch.where(seen, torch.where(logits > 0, logits / 2, logits * 2), logits)
    assert torch.allclose(penalised, expected)
    tokens = list(generate_tokens(model, ids, generation_config(max_new_tokens=3, temperature=0,
                                                                repetition_penalty=2.0), torch.Generator(),
                                  model.vocab_out))
    assert int(tokens[0]) == int(expected.argmax())


def check_all(model: Any, prompt: str, n: int) -> None:
    model.eval()
    check_cache_equals_no_cache(model, prompt, n)
    check_temperature_zero_is_greedy(model, prompt, n)
    check_filters_keep_to_the_allowed_set(model, prompt)
    check_stop_strings_cut_exactly(model, prompt, n)
    check_multiple_sequences_and_repetition_penalty(model, prompt, n)
