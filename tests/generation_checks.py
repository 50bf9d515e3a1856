"""Generation properties every language model must have (used by test_gpt.py and test_hf.py)."""

from __future__ import annotations

from typing import Any

import torch

from genzoo.generation import filter_logits, generate_tokens, generation_config


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


def sampled_ids(model: Any, prompt: str, rows: int = 2, **options: Any) -> torch.Tensor:
    """(rows, n) token ids drawn by the shared loop (no detokenisation, no stopping), seed 0."""
    ids = torch.tensor([model.prompt_ids(prompt)]).expand(rows, -1)
    with torch.no_grad():
        steps = generate_tokens(model, ids, generation_config(**options), torch.Generator().manual_seed(0),
                                model.vocab_out)
        return torch.stack(list(steps), dim=1)


def check_cache_equals_no_cache(model: Any, prompt: str, n: int) -> None:
    for temperature in (0.0, 1.0):
        cached = sampled_ids(model, prompt, max_new_tokens=n, temperature=temperature, use_cache=True)
        plain = sampled_ids(model, prompt, max_new_tokens=n, temperature=temperature, use_cache=False)
        assert cached.shape == (2, n) and torch.equal(cached, plain)


def check_default_seed_is_zero(model: Any, prompt: str, n: int) -> None:
    """Deterministic by default: no seed means seed 0; another seed gives another completion."""
    zero, one = (model.generate(prompt, max_new_tokens=n, seed=seed) for seed in (0, 1))
    assert model.generate(prompt, max_new_tokens=n) == zero != one


def check_temperature_zero_is_greedy(model: Any, prompt: str, n: int) -> None:
    expected = model.decode_tokens(greedy_by_hand(model, prompt, n))
    assert model.generate(prompt, max_new_tokens=n, temperature=0) == expected
    assert model.generate(prompt, max_new_tokens=n, temperature=1e-6, seed=3) == expected
    assert model.generate(prompt, max_new_tokens=n, top_k=1, seed=5) == expected


def allowed_set(logits: torch.Tensor, top_k: int | None = None, top_p: float | None = None,
                min_p: float | None = None) -> set[int]:
    """The tokens one rule keeps, by its definition, from one step's (V,) logits (temperature 1)."""
    probs = logits.float().softmax(-1)
    order = probs.argsort(descending=True)
    if top_k is not None:
        return set(order[:top_k].tolist())
    if top_p is not None:
        return set(order[probs[order].cumsum(0) - probs[order] < top_p].tolist())
    return set((probs >= min_p * probs.max()).nonzero().flatten().tolist())


class LogitsRecorder:
    """The model as the generation loop sees it, keeping the logits of every step."""

    def __init__(self, model: Any) -> None:
        self.model, self.steps = model, []

    def __getattr__(self, name: str) -> Any:  # prompt_ids, vocab_out ...
        return getattr(self.model, name)

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, Any]:
        return self._keep(self.model.prefill(ids))

    def extend(self, token: torch.Tensor, state: Any) -> tuple[torch.Tensor, Any]:
        return self._keep(self.model.extend(token, state))

    def _keep(self, out: tuple[torch.Tensor, Any]) -> tuple[torch.Tensor, Any]:
        self.steps.append(out[0])
        return out


RULES = ({"top_k": 3}, {"top_p": 0.5}, {"min_p": 0.5})


def check_filters_keep_to_the_allowed_set(model: Any, prompt: str, n: int) -> None:
    """At every step of a generation, top-k / top-p / min-p keep exactly the allowed set, and draw from it."""
    for options in RULES:
        recorder = LogitsRecorder(model)
        tokens = sampled_ids(recorder, prompt, rows=3, max_new_tokens=n, **options)
        assert len(recorder.steps) == n
        for step, logits in enumerate(recorder.steps):
            kept = torch.isfinite(filter_logits(logits, torch.zeros_like(logits, dtype=torch.bool),
                                                generation_config(**options)))
            for row, row_logits in enumerate(logits):
                allowed = allowed_set(row_logits, **options)
                assert set(kept[row].nonzero().flatten().tolist()) == allowed, (options, step)
                assert int(tokens[row, step]) in allowed, (options, step)


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
    check_default_seed_is_zero(model, prompt, n)
    check_temperature_zero_is_greedy(model, prompt, n)
    check_filters_keep_to_the_allowed_set(model, prompt, n)
    check_stop_strings_cut_exactly(model, prompt, n)
    check_multiple_sequences_and_repetition_penalty(model, prompt, n)
