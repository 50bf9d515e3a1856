"""Text generation shared by every language model (``gpt``, ``lstm``, pretrained Hugging Face models).

A model exposes two calls: ``prefill(ids) -> (logits, state)`` reads a (B, t) prompt and returns next-token logits,
``extend(token, state) -> (logits, state)`` feeds one more token (the KV cache / recurrent state lives in ``state``).
Without a cache, every step re-reads the whole sequence through ``prefill``: the reference the cached path must equal.

Each step turns logits into a distribution with Hugging Face's controls, in their order:
repetition penalty (CTRL: a seen token's logit is divided by the penalty when positive, multiplied when negative),
temperature (``logits / T``; ``T == 0`` is greedy), ``top_k`` (keep the k largest), ``top_p`` (keep the smallest
set whose probability reaches p), ``min_p`` (drop tokens less likely than ``min_p`` times the most likely one).
Stop strings end a completion just *before* the first occurrence (the stop string is not returned); so does any of
the model's end-of-sequence ids (``eos_ids``: a pretrained model may have several).

Generation is deterministic by default: ``seed=None`` means seed 0, like ``model.sample(seed=None)``, so the same call
gives the same text; pass a different seed for different completions.

The options are typed: :class:`TokenSampling` holds how a token is drawn (the ``SampleOptions`` of every token model,
what ``model.sample`` accepts) and :class:`GenerationConfig` adds what ``generate``/``stream`` produce
(``max_new_tokens``, ``stop``, ``seed``, ``num_return_sequences``); their field descriptions are the CLI's help.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

import torch
from pydantic import Field, ValidationError, field_validator
from torch import Tensor

from genzoo.contract import SampleOptions, eval_mode, validation_message
from genzoo.errors import ConfigError


class TokenSampling(SampleOptions):
    """How each next token is drawn: the sampling options of every token model (``model.sample(n, **options)``),
    named as in Hugging Face ``generate``."""

    temperature: float = Field(1.0, ge=0.0, description="softmax temperature; 0 = greedy (always the most likely)")
    top_k: int | None = Field(None, ge=1, description="keep only the k most likely tokens")
    top_p: float | None = Field(None, gt=0.0, le=1.0, description="nucleus sampling: keep the most likely tokens "
                                                                  "up to this total probability")
    min_p: float | None = Field(None, ge=0.0, le=1.0, description="drop tokens less likely than min_p times the "
                                                                  "most likely one")
    repetition_penalty: float = Field(1.0, gt=0.0, description="> 1 discourages tokens already in the sequence "
                                                               "(CTRL: positive logits divided, negative multiplied)")
    use_cache: bool = Field(True, description="reuse the KV cache / recurrent state (the same tokens; off only to "
                                              "measure)")


class GenerationConfig(TokenSampling):
    """Text generation controls (``model.generate(prompt, **options)``): the sampling options and what to produce."""

    max_new_tokens: int = Field(100, ge=0, description="tokens to generate")
    stop: tuple[str, ...] = Field((), description="strings that end a completion (cut just before the first)")
    seed: int | None = Field(None, description="seed of the draws; None = 0, so generation is deterministic")
    num_return_sequences: int = Field(1, ge=1, description="completions to draw")

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, stop: tuple[str, ...]) -> tuple[str, ...]:
        if "" in stop:  # it occurs at offset 0 of every text: the completion would always be empty
            raise ValueError("an empty stop string would cut every completion to nothing")
        return stop


def generation_config(**options: Any) -> GenerationConfig:
    """Validated :class:`GenerationConfig`; a clear error for unknown names or out-of-range values."""
    if isinstance(options.get("stop"), str):
        options["stop"] = (options["stop"],)
    try:
        return GenerationConfig(**options)
    except ValidationError as err:
        raise ConfigError(f"bad generation option: {validation_message(err)}") from None


def stream_config(**options: Any) -> GenerationConfig:
    """:func:`generation_config` for streaming, which produces a single sequence."""
    cfg = generation_config(**options)
    if cfg.num_return_sequences != 1:
        raise ConfigError("stream produces one sequence; use generate for num_return_sequences > 1")
    return cfg


class Autoregressive(Protocol):
    """What the generation loop needs from a model."""

    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]: ...

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]: ...


class TextModel(Protocol):
    """What text generation needs on top: a tokenizer-level prompt encoding and decoding."""

    def prompt_ids(self, prompt: str) -> list[int]: ...

    def decode_tokens(self, ids: list[int]) -> str: ...

    @property
    def eos_ids(self) -> frozenset[int]: ...


def filter_logits(logits: Tensor, seen: Tensor, cfg: GenerationConfig) -> Tensor:
    """Apply penalty, temperature, top-k, top-p, min-p to (B, V) logits; removed tokens get -inf."""
    logits = logits.float()
    if cfg.repetition_penalty != 1.0:
        penalised = torch.where(logits > 0, logits / cfg.repetition_penalty, logits * cfg.repetition_penalty)
        logits = torch.where(seen, penalised, logits)
    if cfg.temperature > 0:
        logits = logits / cfg.temperature
    if cfg.top_k is not None and cfg.top_k < logits.shape[-1]:
        kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens strictly more likely already reach top_p (so the most likely one stays)
        drop_sorted = probs.cumsum(-1) - probs >= cfg.top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    if cfg.min_p is not None and cfg.min_p > 0:
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < cfg.min_p * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def choose(logits: Tensor, cfg: GenerationConfig, generator: torch.Generator) -> Tensor:
    """Next token per row: argmax at temperature 0, else a draw from the filtered softmax (on the CPU generator)."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = logits.softmax(-1).cpu()
    return torch.multinomial(probs, 1, generator=generator).squeeze(1).to(logits.device)


def generate_tokens(model: Autoregressive, prompts: Tensor, cfg: GenerationConfig, generator: torch.Generator,
                    vocab: int) -> Iterator[Tensor]:
    """Yield the next (B,) tokens, ``cfg.max_new_tokens`` times, continuing each row of the (B, t) ``prompts``.

    ``vocab`` is the number of output logits; prompt ids at or above it (a BOS token) are not penalised.
    """
    seen = torch.zeros(prompts.shape[0], vocab, dtype=torch.bool, device=prompts.device)
    rows, cols = (prompts < vocab).nonzero(as_tuple=True)
    seen[rows, prompts[rows, cols]] = True
    ids = prompts
    logits, state = model.prefill(ids)
    for i in range(cfg.max_new_tokens):
        token = choose(filter_logits(logits, seen, cfg), cfg, generator)
        yield token
        if i + 1 == cfg.max_new_tokens:
            return
        seen[torch.arange(len(token)), token] = True
        ids = torch.cat([ids, token[:, None]], dim=1)
        logits, state = model.extend(token, state) if cfg.use_cache else model.prefill(ids)


class _Completion:
    """Incremental detokenisation of one sequence, holding back text that may still turn into a stop string."""

    def __init__(self, model: TextModel, stop: tuple[str, ...]) -> None:
        self.model, self.stop = model, stop
        self.ids: list[int] = []
        self.emitted = 0
        self.done = False

    def push(self, token: int | None) -> str:
        """Add a token (None = the end) and return the newly settled text."""
        if token is not None:
            self.ids.append(token)
        text = self.model.decode_tokens(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0 or token is None:
            self.done = True
            end = cut if cut >= 0 else len(text)
        else:
            # a trailing partial UTF-8 sequence decodes as U+FFFD: wait for the rest of it
            end = len(text.rstrip("\ufffd"))
            end -= max((k for s in self.stop for k in range(1, len(s)) if text[:end].endswith(s[:k])), default=0)
        end = max(end, self.emitted)
        new, self.emitted = text[self.emitted : end], end
        return new


def stream_steps(model: Any, prompt_ids: list[int], cfg: GenerationConfig
                 ) -> Iterator[tuple[list[str], list[str | None]]]:
    """Yield, per generated token, the new text of each of the ``num_return_sequences`` continuations of
    ``prompt_ids`` and, for a sequence that ended at this token, why: ``"stop"`` (an end-of-sequence id or a stop
    string) or ``"length"`` (``max_new_tokens`` reached); None while it runs."""
    n = cfg.num_return_sequences
    generator = torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device).expand(n, -1)
    outs = [_Completion(model, cfg.stop) for _ in range(n)]
    eos = model.eos_ids
    if cfg.max_new_tokens == 0:
        yield [""] * n, ["length"] * n
        return
    with eval_mode(model), torch.no_grad():
        for step, tokens in enumerate(generate_tokens(model, ids, cfg, generator, model.vocab_out)):
            last = step + 1 == cfg.max_new_tokens
            pieces: list[str] = []
            finished: list[str | None] = []
            for out, token in zip(outs, tokens.tolist(), strict=True):
                if out.done:
                    pieces.append("")
                    finished.append(None)
                    continue
                piece = out.push(None if token in eos else token)
                reason = "stop" if out.done else "length" if last else None
                pieces.append(piece + (out.push(None) if reason == "length" else ""))
                finished.append(reason)
            yield pieces, finished
            if all(out.done for out in outs):
                return


def stream_ids(model: Any, prompt_ids: list[int], cfg: GenerationConfig) -> Iterator[list[str]]:
    """Yield, per step, the new text of each of the ``num_return_sequences`` continuations of ``prompt_ids``."""
    for pieces, _ in stream_steps(model, prompt_ids, cfg):
        yield pieces


class TextGenerationMixin:
    """``generate``/``stream`` for a model implementing :class:`Autoregressive` and :class:`TextModel`."""

    def generate(self, prompt: str = "", **options: Any) -> str | list[str]:
        """Complete ``prompt``; a list when ``num_return_sequences > 1``. Options: see :class:`GenerationConfig`.

        Deterministic by default: ``seed=None`` is seed 0, so repeated calls return the same text; pass a different
        ``seed`` for different completions.
        """
        return self.generate_from_ids(self.prompt_ids(prompt), **options)

    def generate_from_ids(self, prompt_ids: list[int], **options: Any) -> str | list[str]:
        cfg = generation_config(**options)
        texts = [""] * cfg.num_return_sequences
        for pieces in stream_ids(self, prompt_ids, cfg):
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        return texts if cfg.num_return_sequences > 1 else texts[0]

    def stream(self, prompt: str = "", **options: Any) -> Iterator[str]:
        """Yield the completion of ``prompt`` piece by piece as it is generated (one sequence; seeds as in generate)."""
        return self.stream_from_ids(self.prompt_ids(prompt), **options)

    def stream_from_ids(self, prompt_ids: list[int], **options: Any) -> Iterator[str]:
        cfg = stream_config(**options)
        for pieces in stream_ids(self, prompt_ids, cfg):
            if pieces[0]:
                yield pieces[0]
