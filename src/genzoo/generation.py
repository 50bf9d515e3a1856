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

A *logits processor* (:class:`LogitsProcessor`) runs first, before all of these: a constraint
(``generate(prompt, constraint=Regex(...))``, :mod:`genzoo.constrain`) sets the logits of the tokens that cannot
lead to a valid text to -inf, so the penalty, temperature, top-k, top-p and min-p act on the allowed tokens only
(top-k=1 picks the most likely *allowed* token) and sampling draws from the model's distribution renormalised over
them. Each completion has a finish reason: ``"stop"`` (an end-of-sequence id, a stop string, or a constrained text
nothing can extend) or ``"length"`` (``max_new_tokens`` ran out first: a constrained text is then unfinished, which
``GenerationResult.complete`` says). ``generate(..., return_details=True)`` returns :class:`GenerationResult` objects.
With a constraint, a stop string ends the text only inside one token, and only where the text before it is complete.

Every generated token's log-probability is kept (:class:`TokenLogprob`, in ``GenerationResult.logprobs``): under the
model's own distribution, i.e. its raw logits before the constraint's mask and the sampling controls -- what OpenAI's
``logprobs`` report, what a teacher-forced likelihood of the same text gives, and a confidence signal that does not
move with the temperature (the server's cascades read it).

Detokenisation is incremental (linear in the completion's length): each step decodes only the tokens since the last
settled text, as Hugging Face streamers do, and holds back a partial UTF-8 character or the start of a stop string.

Generation is deterministic by default: ``seed=None`` means seed 0, like ``model.sample(seed=None)``, so the same call
gives the same text; pass a different seed for different completions.

The options are typed: :class:`TokenSampling` holds how a token is drawn (the ``SampleOptions`` of every token model,
what ``model.sample`` accepts) and :class:`GenerationConfig` adds what ``generate``/``stream`` produce
(``max_new_tokens``, ``stop``, ``seed``, ``num_return_sequences``); their field descriptions are the CLI's help.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from pydantic import Field, ValidationError, field_validator
from torch import Tensor

from genzoo.constrain import Constraint, Engine, Matcher, compile_constraint
from genzoo.contract import SampleOptions, eval_mode, validation_message
from genzoo.errors import ConfigError, GenzooError


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
    num_beams: int = Field(1, ge=1, description="beam search with this many beams (> 1: deterministic, the most "
                                                "probable answers per token; sampling controls do not apply)")

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
    if cfg.num_beams != 1:
        raise ConfigError("beam search finds whole answers at the end; use generate for num_beams > 1")
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


class LogitsProcessor(Protocol):
    """Runs on the raw (B, V) logits of each step, before the sampling controls, and sees the chosen tokens."""

    def __call__(self, logits: Tensor) -> Tensor: ...

    def advance(self, tokens: Tensor) -> None: ...


class ConstraintProcessor:
    """Masks each row's logits to the tokens its constraint matcher allows (finished rows are left alone)."""

    def __init__(self, matchers: list[Matcher]) -> None:
        self.matchers = matchers

    def __call__(self, logits: Tensor) -> Tensor:
        full = torch.ones(logits.shape[-1], dtype=torch.bool)
        masks = torch.stack([full if m.finished else _fit(m.allowed(), len(full)) for m in self.matchers])
        if not masks.any(-1).all():  # a dead end: no token of this vocabulary continues the text validly
            raise GenzooError("the constraint allows no token the model's vocabulary can write at this point (its "
                              "tokenizer lacks the characters the constraint needs next)")
        return logits.masked_fill(~masks.to(logits.device), float("-inf"))

    def advance(self, tokens: Tensor) -> None:
        for matcher, token in zip(self.matchers, tokens.tolist(), strict=True):
            if not matcher.finished:
                matcher.advance(token)


def _fit(mask: Tensor, size: int) -> Tensor:
    """A vocabulary mask padded with False (or cut) to the model's number of logits."""
    if len(mask) >= size:
        return mask[:size]
    return torch.cat([mask, mask.new_zeros(size - len(mask))])


def generate_steps(model: Autoregressive, prompts: Tensor, cfg: GenerationConfig, generator: torch.Generator,
                   vocab: int, processor: LogitsProcessor | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(tokens, logits)`` ``cfg.max_new_tokens`` times, continuing each row of the (B, t) ``prompts``: the
    next (B,) tokens and the model's raw (B, V) logits they were drawn from (before the processor and the sampling
    controls, so ``logits.log_softmax(-1)`` is the model's own next-token distribution).

    ``vocab`` is the number of output logits; prompt ids at or above it (a BOS token) are not penalised. The
    ``processor`` (a constraint) masks the raw logits before the sampling controls and is told each chosen token.
    """
    seen = torch.zeros(prompts.shape[0], vocab, dtype=torch.bool, device=prompts.device)
    rows, cols = (prompts < vocab).nonzero(as_tuple=True)
    seen[rows, prompts[rows, cols]] = True
    ids = prompts
    logits, state = model.prefill(ids)
    for i in range(cfg.max_new_tokens):
        allowed = processor(logits) if processor is not None else logits
        token = choose(filter_logits(allowed, seen, cfg), cfg, generator)
        if processor is not None:
            processor.advance(token)
        yield token, logits
        if i + 1 == cfg.max_new_tokens:
            return
        seen[torch.arange(len(token)), token] = True
        ids = torch.cat([ids, token[:, None]], dim=1)
        logits, state = model.extend(token, state) if cfg.use_cache else model.prefill(ids)


def generate_tokens(model: Autoregressive, prompts: Tensor, cfg: GenerationConfig, generator: torch.Generator,
                    vocab: int, processor: LogitsProcessor | None = None) -> Iterator[Tensor]:
    """The tokens of :func:`generate_steps` alone."""
    for token, _ in generate_steps(model, prompts, cfg, generator, vocab, processor):
        yield token


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token under the model's own distribution p (its raw logits: before a constraint's mask, the
    repetition penalty, temperature and truncation, as OpenAI reports them): ``logprob`` = log p(token), the
    ``entropy`` -sum p log p of that step, and the ``top`` most likely (token, log p), most likely first."""

    token: int
    logprob: float
    entropy: float
    top: tuple[tuple[int, float], ...] = ()


def token_logprobs(logits: Tensor, tokens: Tensor, top: int = 0) -> list[TokenLogprob]:
    """Per row of the raw (B, V) ``logits``: the chosen token's log-probability, the entropy and the ``top`` best."""
    logp = logits.float().log_softmax(-1)
    chosen = logp.gather(-1, tokens[:, None]).squeeze(1).tolist()
    entropy = torch.special.entr(logp.exp()).sum(-1).tolist()  # entr(0) = 0: tokens ruled out (-inf) add nothing
    best: list[tuple[tuple[int, float], ...]] = [()] * len(chosen)
    if top > 0:
        values, ids = logp.topk(min(top, logp.shape[-1]), dim=-1)
        best = [tuple(zip(i, v, strict=True)) for i, v in zip(ids.tolist(), values.tolist(), strict=True)]
    return [TokenLogprob(*fields) for fields in zip(tokens.tolist(), chosen, entropy, best, strict=True)]


@dataclass
class GenerationResult:
    """One completion with how it ended: ``finish_reason`` is ``"stop"`` (an end-of-sequence id, a stop string, or
    a constrained text nothing can extend) or ``"length"`` (``max_new_tokens`` ran out first); ``tokens`` counts
    the generated tokens (model calls); ``complete`` says whether a constraint accepts the text (None without one);
    ``logprobs`` holds each generated token's :class:`TokenLogprob` (the end-of-sequence id included; tokens past a
    stop string too, since they were generated)."""

    text: str
    finish_reason: str
    tokens: int
    complete: bool | None = None
    logprobs: list[TokenLogprob] = field(default_factory=list)

    @property
    def mean_logprob(self) -> float:
        """Mean log-probability per generated token (0 for an empty completion)."""
        return sum(t.logprob for t in self.logprobs) / max(1, len(self.logprobs))


class Completion:
    """Incremental detokenisation of one sequence, holding back text that may still turn into a stop string.

    Linear in the length: each token decodes only the ids since the last settled text (``ids[prefix:]``, minus the
    text of ``ids[prefix:read]``, which gives a tokenizer that writes a word's leading space by context its
    context), and stop strings are searched in the held-back tail only.
    """

    def __init__(self, model: TextModel, stop: tuple[str, ...]) -> None:
        self.model, self.stop = model, stop
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read] wrote the text already settled into `held` or emitted
        self.held = ""  # decoded text not returned yet: the start of a stop string
        self.logprobs: list[TokenLogprob] = []  # every generated token's, the end-of-sequence id included
        self.done = False
        self.finish_reason = "length"

    def _delta(self, final: bool) -> str:
        """The text the ids since ``read`` add (empty while it ends in a partial UTF-8 character, unless final)."""
        before = self.model.decode_tokens(self.ids[self.prefix : self.read])
        after = self.model.decode_tokens(self.ids[self.prefix :])
        if len(after) <= len(before) or (after.endswith("\ufffd") and not final):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return after[len(before) :]

    def push(self, token: int | None, reason: str = "stop") -> str:
        """Add a token (None = the end, for ``reason``) and return the newly settled text."""
        if token is not None:
            self.ids.append(token)
        self.held += self._delta(final=token is None)
        cut = min((i for i in (self.held.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0 or token is None:
            self.done = True
            self.finish_reason = "stop" if cut >= 0 else reason
            end = cut if cut >= 0 else len(self.held)
        else:
            end = len(self.held) - max((k for s in self.stop for k in range(1, len(s)) if self.held.endswith(s[:k])),
                                       default=0)
        new, self.held = self.held[:end], self.held[end:]
        return new


def stream_ids(model: Any, prompt_ids: list[int], cfg: GenerationConfig, outs: list[Completion] | None = None,
               matchers: list[Matcher] | None = None, top_logprobs: int = 0) -> Iterator[list[str]]:
    """Yield, per step, the new text of each of the ``num_return_sequences`` continuations of ``prompt_ids``.

    ``outs`` (one :class:`Completion` per sequence) receive the finish reasons and each token's log-probability
    (with the ``top_logprobs`` most likely tokens); ``matchers`` constrain each sequence (a matcher that finishes by
    itself ends its sequence with reason ``"stop"``).
    """
    generator = torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device).expand(cfg.num_return_sequences, -1)
    outs = outs if outs is not None else [Completion(model, cfg.stop) for _ in range(cfg.num_return_sequences)]
    processor = ConstraintProcessor(matchers) if matchers else None
    eos = model.eos_ids
    with eval_mode(model), torch.no_grad():
        for tokens, logits in generate_steps(model, ids, cfg, generator, model.vocab_out, processor):
            pieces = []
            for row, (out, record) in enumerate(zip(outs, token_logprobs(logits, tokens, top_logprobs), strict=True)):
                piece = ""
                if not out.done:
                    out.logprobs.append(record)
                    piece = out.push(None if record.token in eos else record.token)
                if matchers and matchers[row].finished and not out.done:
                    piece += out.push(None)
                pieces.append(piece)
            yield pieces
            if all(out.done for out in outs):
                return
        yield [out.push(None, "length") if not out.done else "" for out in outs]


def start_decoding(model: Any, prompt_ids: list[int], cfg: GenerationConfig, constraint: Constraint | None = None,
                   engine: Engine = "auto", top_logprobs: int = 0) -> tuple[list[Completion], Iterator[list[str]]]:
    """One :class:`Completion` per sequence and the steps that fill them (:func:`stream_ids`): the set-up shared by
    ``generate`` and the server."""
    outs = [Completion(model, cfg.stop) for _ in range(cfg.num_return_sequences)]
    return outs, stream_ids(model, prompt_ids, cfg, outs, model.constraint_matchers(constraint, cfg, engine),
                            top_logprobs)


class TextGenerationMixin:
    """``generate``/``stream`` for a model implementing :class:`Autoregressive` and :class:`TextModel`."""

    @classmethod
    def generation_options(cls, **options: Any) -> GenerationConfig:
        """The validated options of :meth:`generate`."""
        return generation_config(**options)

    def generate(self, prompt: str = "", constraint: Constraint | None = None, engine: Engine = "auto",
                 return_details: bool = False, **options: Any) -> str | list[str] | Any:
        """Complete ``prompt``; a list when ``num_return_sequences > 1``. Options: see :class:`GenerationConfig`.

        Deterministic by default: ``seed=None`` is seed 0, so repeated calls return the same text; pass a different
        ``seed`` for different completions. ``constraint`` (``Choice``, ``Regex``, ``Grammar``, ``JsonSchema`` from
        :mod:`genzoo.constrain`) restricts the completion to its language; ``engine`` picks the constraint engine
        (``auto``, ``reference``, ``fast``). ``return_details=True`` returns :class:`GenerationResult` objects (text,
        finish reason, tokens, whether the constraint accepts the text, each token's log-probability) instead of
        strings.
        """
        return self.generate_from_ids(self.prompt_ids(prompt), constraint=constraint, engine=engine,
                                      return_details=return_details, **options)

    def generate_from_ids(self, prompt_ids: list[int], constraint: Constraint | None = None, engine: Engine = "auto",
                          return_details: bool = False, **options: Any) -> str | list[str] | Any:
        cfg = generation_config(**options)
        if cfg.num_beams > 1:
            if constraint is not None or return_details:
                raise ConfigError("beam search (num_beams > 1) does not take a constraint or return_details; "
                                  "sample instead (num_beams=1)")
            return beam_texts(self, prompt_ids, cfg)
        outs, steps = start_decoding(self, prompt_ids, cfg, constraint, engine)
        texts = [""] * cfg.num_return_sequences
        for pieces in steps:
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
        if return_details:
            results = [GenerationResult(text, out.finish_reason, len(out.ids),
                                        None if constraint is None else constraint.matches(text), out.logprobs)
                       for text, out in zip(texts, outs, strict=True)]
            return results if cfg.num_return_sequences > 1 else results[0]
        return texts if cfg.num_return_sequences > 1 else texts[0]

    def constraint_matchers(self, constraint: Constraint | None, cfg: GenerationConfig, engine: Engine = "auto"
                            ) -> list[Matcher] | None:
        """One matcher per sequence for ``constraint`` compiled for this model's tokenizer (None without one)."""
        if constraint is None:
            return None
        tokenizer = getattr(self, "tokenizer", None)
        if tokenizer is None:
            raise ConfigError("constrained generation needs the model's tokenizer, and this model has none")
        compiled = compile_constraint(constraint, tokenizer, self.vocab_out, self.eos_ids, cfg.stop, engine)
        return [compiled.matcher() for _ in range(cfg.num_return_sequences)]

    def stream(self, prompt: str = "", constraint: Constraint | None = None, engine: Engine = "auto",
               **options: Any) -> Iterator[str]:
        """Yield the completion of ``prompt`` piece by piece as it is generated (one sequence; seeds and
        ``constraint`` as in generate)."""
        return self.stream_from_ids(self.prompt_ids(prompt), constraint=constraint, engine=engine, **options)

    def stream_from_ids(self, prompt_ids: list[int], constraint: Constraint | None = None, engine: Engine = "auto",
                        **options: Any) -> Iterator[str]:
        cfg = stream_config(**options)
        for pieces in stream_ids(self, prompt_ids, cfg, matchers=self.constraint_matchers(constraint, cfg, engine)):
            if pieces[0]:
                yield pieces[0]


# ----- beam search --------------------------------------------------------------------------------------------------
def reorder_state(model: Any, state: Any, index: Tensor) -> Any:
    """The decoding state of rows ``index`` (beam search keeps the best beams): the model's own ``reorder_state``
    when it has one, else every tensor indexed along its first (batch) dimension and Hugging Face caches through
    their ``reorder_cache``."""
    if hasattr(model, "reorder_state"):
        return model.reorder_state(state, index)
    if isinstance(state, Tensor):
        return state.index_select(0, index)
    if isinstance(state, list | tuple):
        return type(state)(reorder_state(model, part, index) for part in state)
    if hasattr(state, "reorder_cache"):
        state.reorder_cache(index)
    return state


def beam_search(model: Any, prompt_ids: list[int], cfg: GenerationConfig) -> list[tuple[list[int], float]]:
    """The best continuations of ``prompt_ids`` by beam search, best first: (token ids without the end-of-sequence
    id, log-probability per generated token).

    Keeps the ``num_beams`` most probable unfinished continuations (sum of log-probabilities). One that ends in an
    end-of-sequence id (``model.eos_ids``) among the ``num_beams`` best candidates is finished and scored by its
    mean log-probability per token, EOS included, so longer answers are not penalised for their length. The search
    stops once ``num_beams`` are finished and no unfinished one scores better per token than the worst of them, or
    after ``max_new_tokens`` (unfinished continuations then compete too). Deterministic: the sampling controls
    (temperature, top-k/p, min-p, repetition penalty) do not apply.
    """
    k, eos = cfg.num_beams, model.eos_ids
    if cfg.num_return_sequences > k:
        raise ConfigError(f"num_return_sequences ({cfg.num_return_sequences}) cannot exceed num_beams ({k})")
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=model.device)
    beams, scores, finished = [[]], torch.zeros(1), []
    with eval_mode(model), torch.no_grad():
        logits, state = model.prefill(ids)
        for step in range(cfg.max_new_tokens):
            total = (scores[:, None] + logits.float().log_softmax(-1).cpu()).flatten()
            top = torch.topk(total, min(2 * k, len(total)))
            rows, tokens, kept = [], [], []
            for rank, (score, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist(), strict=True)):
                if score == float("-inf"):  # a token the model rules out (seq2seq's padding) never enters a beam
                    break
                row, token = divmod(flat, logits.shape[-1])
                if token in eos:
                    if rank < k:
                        finished.append((beams[row], score / (step + 1)))
                elif len(kept) < k:
                    rows, tokens, kept = [*rows, row], [*tokens, token], [*kept, score]
            beams, scores = [beams[r] + [t] for r, t in zip(rows, tokens, strict=True)], torch.tensor(kept)
            worst = sorted(s for _, s in finished)[-k] if len(finished) >= k else float("-inf")
            if not beams or step + 1 == cfg.max_new_tokens or max(kept) / (step + 1) <= worst:
                break
            index = torch.tensor(rows, device=model.device)
            token = index.new_tensor(tokens)
            ids = torch.cat([ids[index], token[:, None]], dim=1)
            logits, state = (model.extend(token, reorder_state(model, state, index)) if cfg.use_cache
                             else model.prefill(ids))
    hypotheses = finished + [(b, s / max(1, len(b))) for b, s in zip(beams, scores.tolist(), strict=True)]
    return sorted(hypotheses, key=lambda h: -h[1])


def beam_texts(model: Any, prompt_ids: list[int], cfg: GenerationConfig) -> str | list[str]:
    """The ``num_return_sequences`` best beam-search answers as text, each cut before its first stop string."""
    texts = []
    for tokens, _ in beam_search(model, prompt_ids, cfg)[: cfg.num_return_sequences]:
        text = model.decode_tokens(tokens)
        texts.append(text[: min((i for i in (text.find(s) for s in cfg.stop) if i >= 0), default=len(text))])
    return texts if cfg.num_return_sequences > 1 else texts[0]
