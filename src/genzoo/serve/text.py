"""The OpenAI-compatible text routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or streamed
as server-sent events (``data: {chunk}`` lines ending with ``data: [DONE]``), with usage counts.

Request fields are OpenAI's (model, prompt/messages, max_tokens, temperature, top_p, n, stop, seed, stream,
stream_options.include_usage, response_format with a json_schema, logprobs: ``logprobs: N`` for completions in
OpenAI's legacy shape, ``logprobs: true, top_logprobs: N`` for chats) plus genzoo's ``top_k``, ``min_p``,
``repetition_penalty``, the constraints ``regex``, ``grammar`` and ``choice`` (:mod:`genzoo.constrain`) and a
``timeout`` in seconds (capped by the server's ``request_timeout``); fields the server cannot honour (non-zero
presence/frequency penalties) are refused by name rather than ignored.

Log-probabilities are the model's own (its raw next-token distribution, before a constraint's mask and the sampling
controls: what OpenAI reports). Each token's text is the token decoded alone and ``text_offset`` its position in the
returned text; tokens of a stop string, the end-of-sequence token and text cut by a guardrail are not listed.

A request naming a cascade (:mod:`genzoo.serve.cascade`) runs its models in order; the answer names the cascade as
``model``, the model that answered as ``answered_by``, and lists every attempt (``escalations``) and the ``cost``.
A cascade decides after a whole answer, so a streamed cascade answer arrives once the answering model is known.
A chat goes through the model's chat template when it has one (pretrained chat models), else through a plain
transcript (``user: ...`` lines, then ``assistant:``), which is what a model trained on plain text can continue.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from fastapi import Depends, FastAPI, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from genzoo.constrain import Choice, Constraint, Grammar, JsonSchema, Regex
from genzoo.constrain.verify import verdict, verifier_from_spec
from genzoo.contract import Capability, GenerativeModel
from genzoo.data.grammar import GRAMMARS
from genzoo.generation import Completion, TextGenerationMixin, TokenLogprob, generation_config, start_decoding
from genzoo.retrieval import Hit, Index, augment_messages, cite
from genzoo.serve.cascade import Cascade, CascadeStep, Outcome, cost_report, escalations, request_flops, text_confidence
from genzoo.serve.deadline import Deadline
from genzoo.serve.errors import APIError, error_body
from genzoo.serve.guardrails import Guardrail, first_offence
from genzoo.serve.registry import ModelRegistry
from genzoo.serve.tracking import Tracker

#: the roles a chat message may have
Role = Literal["system", "user", "assistant"]
#: most alternatives listed per token (OpenAI's limit)
MAX_TOP_LOGPROBS = 20


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] = Field(..., alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: ``text``, or ``json_schema`` (the completion is JSON valid under it)."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_usage: bool = False


class TextRequest(BaseModel):
    """Fields shared by completions and chats."""

    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int | None = Field(None, ge=0)
    max_completion_tokens: int | None = Field(None, ge=0)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=1)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0)
    n: int = Field(1, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    response_format: ResponseFormat | None = None
    regex: str | None = Field(None, description="extension: the completion must fully match this regular expression")
    grammar: str | None = Field(None, description="extension: a Lark grammar (or a built-in: brackets, arith, json) "
                                                  "the completion must parse under")
    choice: list[str] | None = Field(None, min_length=1, description="extension: the completion is one of these")
    timeout: float | None = Field(None, gt=0, description="extension: seconds this request may take (capped by the "
                                                          "server's request_timeout)")

    def wanted_logprobs(self) -> int | None:
        """How many most likely tokens to list per token (0: the chosen one only); None: no log-probabilities."""
        return None

    def constraint(self) -> Constraint | None:
        """The constraint the request asks for (at most one of response_format json_schema, regex, grammar,
        choice)."""
        schema = None
        if self.response_format is not None and self.response_format.type == "json_object":
            raise APIError(400, "response_format json_object is not supported: give a json_schema",
                           param="response_format")
        if self.response_format is not None and self.response_format.type == "json_schema":
            if self.response_format.json_schema is None:
                raise APIError(400, "response_format json_schema needs its 'json_schema'", param="response_format")
            schema = self.response_format.json_schema.schema_
        given = {k: v for k, v in (("response_format", schema), ("regex", self.regex), ("grammar", self.grammar),
                                   ("choice", self.choice)) if v is not None}
        if len(given) > 1:
            raise APIError(400, f"give one constraint, not {' and '.join(given)}", param=next(iter(given)))
        if schema is not None:
            return JsonSchema(schema)
        if self.regex is not None:
            return Regex(self.regex)
        if self.choice is not None:
            return Choice(self.choice)
        if self.grammar is not None:
            return Grammar.builtin(self.grammar) if self.grammar in GRAMMARS else Grammar(self.grammar)
        return None

    def generation(self, limit: int) -> dict[str, Any]:
        """The genzoo generation options of this request (refusing what cannot be honoured)."""
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported; use repetition_penalty", param=name)
        tokens = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        tokens = 16 if tokens is None else tokens
        if tokens > limit:
            raise APIError(400, f"max_tokens is {tokens}; this server generates at most {limit}", param="max_tokens")
        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        options = {"max_new_tokens": tokens, "temperature": self.temperature, "top_p": self.top_p,
                   "top_k": self.top_k, "min_p": self.min_p, "repetition_penalty": self.repetition_penalty,
                   "stop": tuple(stop), "seed": self.seed, "num_return_sequences": self.n}
        generation_config(**options)  # a clear 400 for values genzoo refuses (e.g. an empty stop string)
        return options


class CompletionRequest(TextRequest):
    prompt: str | list[str] = ""
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS, description="list each token's log-probability "
                                                                            "and the N most likely tokens")

    def wanted_logprobs(self) -> int | None:
        return self.logprobs

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, prompt: str | list[str]) -> str | list[str]:
        if isinstance(prompt, list) and len(prompt) != 1:
            raise ValueError("one prompt per request (a list of one string is accepted)")
        return prompt


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    name: str | None = None


class RagOption(BaseModel):
    """genzoo's ``rag`` extension of a chat request: answer the last user message from retrieved passages."""

    model_config = ConfigDict(extra="forbid")

    index: str = Field(..., description="name of a retrieval index of the server's config (indexes: {NAME: PATH})")
    k: int = Field(3, ge=1, le=20, description="passages retrieved and shown to the model")
    mode: Literal["hybrid", "vector", "keyword"] = Field("hybrid", description="how passages are retrieved")


class ChatRequest(TextRequest):
    messages: list[Message] = Field(..., min_length=1)
    rag: RagOption | None = Field(None, description="genzoo: answer from retrieved passages, cited as [n]")
    logprobs: bool = Field(False, description="list each token's log-probability")
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS,
                                     description="with logprobs: the N most likely tokens at each position")

    def wanted_logprobs(self) -> int | None:
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        return (self.top_logprobs or 0) if self.logprobs else None


def transcript(messages: list[dict[str, Any]]) -> str:
    """A conversation as plain text for a model without a chat template: one ``role: content`` line per message,
    then ``assistant:`` for the answer."""
    return "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"


def install_text_routes(app: FastAPI, registry: ModelRegistry, tracker: Tracker, caller: Callable[..., str | None],
                        settings: Any, guardrails: list[Guardrail]) -> None:
    """Add ``/v1/completions`` and ``/v1/chat/completions`` to ``app``."""
    indexes = {name: Index.load(path) for name, path in settings.indexes.items()}

    def answer(endpoint: str, request: TextRequest, key: str | None, session: str | None, text: str,
               prompt_ids: Callable[[GenerativeModel], list[int]], chat: bool, echo: str,
               retrieved: tuple[str, list[Hit]] | None = None) -> dict[str, Any] | StreamingResponse:
        """Answer a text request whose user-written ``text`` the model reads as ``prompt_ids(model)``; with
        ``retrieved`` (the RAG prompt and its passages) each choice says which passages it cites."""
        if request.n > settings.max_n:
            raise APIError(400, f"n is {request.n}; this server draws at most {settings.max_n} per request", param="n")
        parameters = request.model_dump(exclude_none=True)
        deadline = Deadline.of(settings.request_timeout, request.timeout)
        with tracker.track(endpoint, request.model, parameters, key, session) as tracked:
            offence = first_offence(guardrails, text)
            if offence is not None:
                raise APIError(400, f"the prompt was refused: it contains {offence[1]}", code="content_filter")
            job = TextJob(request.generation(settings.max_tokens), request.constraint(), request.wanted_logprobs(),
                          deadline, prompt_ids)
            cascade = registry.cascades.get(request.model)
            if cascade is None:  # checked before the store answers, so a bad request never gets a stored answer
                served, model = _text_model(registry, request.model, job.constraint)
            cached = None if request.stream else tracker.cached(endpoint, request.model, parameters)
            if cached is not None:
                return tracked.respond(cached, prompt_tokens=0, completion_tokens=0)
            if cascade is None:
                ids = prompt_ids(model)
                steps, extra = job.steps(served, model, ids), {}
            else:
                model, ids, steps, extra = _cascade(cascade, registry, job, request.n)
            if retrieved is not None and request.stream:  # the passages up front; citations are in the text
                extra = {**extra, "rag": {"passages": [{"number": n, **hit.to_dict()}
                                                       for n, hit in enumerate(retrieved[1], 1)]}}
            reply = Reply(tracked.id, "chat.completion" if chat else "text_completion", request.model, len(ids),
                          request.n, guardrails, extra, TokenText(model, job.top, len(echo)))
            if not request.stream:
                body = reply.whole(steps, chat, echo)
                if retrieved is not None:
                    for choice in body["choices"]:
                        choice["rag"] = cite(choice["message"]["content"], *retrieved).to_dict()
                return tracked.respond(body, prompt_tokens=len(ids), completion_tokens=reply.completion_tokens)
            tracked.deferred = True
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return _sse(reply.chunks(steps, chat, echo, include_usage),
                        lambda status, error: tracker.finish(tracked, status, error or reply.summary(chat)))

    @app.post("/v1/completions", response_model=None)
    def completions(request: CompletionRequest, key: str | None = Depends(caller)
                    ) -> dict[str, Any] | StreamingResponse:
        prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
        return answer("completions", request, key, None, prompt, lambda model: model.prompt_ids(prompt),
                      chat=False, echo=prompt if request.echo else "")

    @app.post("/v1/chat/completions", response_model=None)
    def chat(request: ChatRequest, key: str | None = Depends(caller),
             x_session_id: str | None = Header(None, max_length=64)) -> dict[str, Any] | StreamingResponse:
        messages = [m.model_dump(exclude_none=True) for m in request.messages]
        user_text = "\n".join(m["content"] for m in messages)  # guardrails read what the user wrote
        session = x_session_id or session_of(messages, key)
        retrieved = None
        if request.rag is not None:
            index = indexes.get(request.rag.index)
            if index is None:
                raise APIError(404, f"no retrieval index named '{request.rag.index}' (this server has: "
                                    f"{', '.join(sorted(indexes)) or 'none'})", param="rag.index")
            messages, passages = augment_messages(messages, index, k=request.rag.k, mode=request.rag.mode)
            retrieved = (messages[-1]["content"], passages)

        def prompt_ids(model: GenerativeModel) -> list[int]:
            if Capability.CHAT in model.capabilities:
                return model.chat_prompt_ids(messages)
            # a plain text model reads the bare RAG prompt: the format a reader model is trained on
            return model.prompt_ids(retrieved[0] if retrieved is not None else transcript(messages))

        return answer("chat", request, key, session, user_text, prompt_ids, chat=True, echo="", retrieved=retrieved)


def session_of(messages: list[dict[str, Any]], key: str | None) -> str:
    """A conversation's id when the client sends none (``X-Session-Id``): chat clients resend the whole history
    each turn, so the messages up to the first user message identify the conversation."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages) - 1)
    opening = json.dumps([key, messages[: first_user + 1]], sort_keys=True)
    return "s-" + hashlib.sha256(opening.encode()).hexdigest()[:24]


def _text_model(registry: ModelRegistry, name: str, constraint: Constraint | None) -> tuple[Any, GenerativeModel]:
    """The served text model ``name``, checked to take ``constraint``."""
    served, model = registry.get(name, Capability.GENERATE_TEXT)
    if constraint is not None and not isinstance(model, TextGenerationMixin):
        raise APIError(400, f"model '{name}' does not decode token by token, so it cannot be constrained",
                       param="response_format")
    return served, model


class Step(NamedTuple):
    """One decoding step: each sequence's new text, why a sequence ended at this step (``stop``/``length``; None
    while it runs), how many tokens each has generated so far, and each one's token log-probabilities so far."""

    pieces: list[str]
    finished: list[str | None]
    tokens: list[int]
    logprobs: list[list[TokenLogprob]]


@dataclass
class TextJob:
    """What a text request asks of a model, whichever model answers it."""

    options: dict[str, Any]
    constraint: Constraint | None
    top: int | None  # alternatives listed per token; None: no log-probabilities
    deadline: Deadline
    prompt_ids: Callable[[GenerativeModel], list[int]]

    def steps(self, served: Any, model: GenerativeModel, ids: list[int]) -> Iterator[Step]:
        """The generation steps of ``model`` (set up now, so a bad constraint fails before a stream starts); the
        model's lock is held while they run, and the deadline is checked after every token."""
        cfg = generation_config(**self.options)
        outs, texts = start_decoding(model, ids, cfg, self.constraint, top_logprobs=self.top or 0)
        return _locked(served, outs, texts, self.deadline)

    def attempt(self, registry: ModelRegistry, step: CascadeStep) -> Outcome:
        """One cascade step: the whole answer of its model, its confidence and compute."""
        served, model = _text_model(registry, step.model, self.constraint)
        ids = self.prompt_ids(model)
        steps = list(self.steps(served, model, ids))
        text = "".join(piece for s in steps for piece in s.pieces)
        records = steps[-1].logprobs[0] if steps else []  # every model call's token, the end-of-sequence id too
        failure = None
        if self.constraint is not None and not self.constraint.matches(text):
            failure = "constraint"
        elif step.verify is not None and not verdict(verifier_from_spec(step.verify)(text)).accepted:
            failure = "verify"
        value = text_confidence(step.signal, records)
        return Outcome((model, ids, steps), value, failure, request_flops(model, len(ids) + len(records)))


def _locked(served: Any, outs: list[Completion], texts: Iterator[list[str]], deadline: Deadline) -> Iterator[Step]:
    reported = [False] * len(outs)
    with served.lock:
        for pieces in texts:
            deadline.check()
            finished = [out.finish_reason if out.done and not was else None
                        for out, was in zip(outs, reported, strict=True)]
            reported = [out.done for out in outs]
            yield Step(pieces, finished, [len(out.ids) for out in outs], [out.logprobs for out in outs])


def _cascade(cascade: Cascade, registry: ModelRegistry, job: TextJob, n: int
             ) -> tuple[GenerativeModel, list[int], Iterator[Step], dict[str, Any]]:
    """Run ``cascade`` on ``job``: the answering model, its prompt ids, its steps (replayed) and the response's
    extension fields (``answered_by``, ``escalations``, ``cost``)."""
    if n != 1:
        raise APIError(400, f"a cascade answers one completion per request, not n={n}", param="n")
    step, outcome, tried = cascade.run(registry, lambda s: job.attempt(registry, s))
    model, ids, steps = outcome.result
    last = registry.model(cascade.config.steps[-1].model)
    tokens = len(ids) + (len(steps[-1].logprobs[0]) if steps else 0)
    return model, ids, iter(steps), {"answered_by": step.model, "escalations": escalations(tried),
                                     "cost": cost_report(tried, request_flops(last, tokens))}


@dataclass
class Logprob:
    """One listed token: its text (decoded alone), offset in the answer, log-probability and alternatives."""

    text: str
    offset: int
    logprob: float
    top: list[tuple[str, float]]


class TokenText:
    """Turns a sequence's token log-probabilities into listed tokens with their text offsets."""

    def __init__(self, model: GenerativeModel, top: int | None, start: int) -> None:
        self.model, self.top, self.start = model, top, start

    def listed(self, records: list[TokenLogprob], start: int, offset: int) -> tuple[list[Logprob], int]:
        """The entries of ``records[start:]`` (end-of-sequence tokens left out) from text ``offset`` on, and the
        offset after them."""
        entries = []
        for record in records[start:]:
            if record.token in self.model.eos_ids:
                continue
            text = self.model.decode_tokens([record.token])
            entries.append(Logprob(text, offset, record.logprob,
                                   [(self.model.decode_tokens([t]), lp) for t, lp in record.top]))
            offset += len(text)
        return entries, offset


def legacy_logprobs(entries: list[Logprob]) -> dict[str, Any]:
    """Completions' shape: parallel lists of tokens, their log-probabilities, alternatives and text offsets."""
    return {"tokens": [e.text for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [dict(e.top) for e in entries], "text_offset": [e.offset for e in entries]}


def chat_logprobs(entries: list[Logprob]) -> dict[str, Any]:
    """Chats' shape: one entry per token with its UTF-8 bytes and alternatives."""
    def one(text: str, logprob: float) -> dict[str, Any]:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}

    return {"content": [{**one(e.text, e.logprob), "top_logprobs": [one(t, lp) for t, lp in e.top]}
                        for e in entries]}


class Reply:
    """One answer's text, finish reasons, usage and log-probabilities, written whole or as stream chunks. Output
    guardrails cut a completion where it first offends (``finish_reason: "content_filter"``); ``extra`` fields (a
    cascade's) go into the answer and the first chunk (``answered_by`` into every chunk)."""

    def __init__(self, id: str, kind: str, model: str, prompt_tokens: int, n: int, guardrails: list[Guardrail],
                 extra: dict[str, Any], tokens: TokenText) -> None:
        self.id, self.kind, self.model, self.guardrails, self.extra = id, kind, model, guardrails, extra
        self.created, self.prompt_tokens, self.n, self.token_text = int(time.time()), prompt_tokens, n, tokens
        self.tokens = [0] * n
        self.texts, self.reasons = [""] * n, [None] * n
        self.sent = [0] * n  # characters of each text already sent
        self.listed: list[list[Logprob]] = [[] for _ in range(n)]  # log-probabilities of the text sent
        self.pending: list[list[Logprob]] = [[] for _ in range(n)]  # of tokens whose text is not sent yet
        self.read, self.offsets = [0] * n, [tokens.start] * n  # token records read, text offset after them

    @property
    def completion_tokens(self) -> int:
        return sum(self.tokens)

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def whole(self, steps: Iterator[Step], chat: bool, echo: str) -> dict[str, Any]:
        for _ in self._advance(steps):
            pass
        return self.summary(chat, echo)

    def summary(self, chat: bool, echo: str = "") -> dict[str, Any]:
        """The whole answer so far, in the non-streamed shape."""
        choices = [{"index": i, "finish_reason": self.reasons[i] or "length",
                    **({"message": {"role": "assistant", "content": self.texts[i]}} if chat
                       else {"text": echo + self.texts[i]}), "logprobs": self._logprobs(chat, self.listed[i])}
                   for i in range(self.n)]
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage(), **self.extra}

    def chunks(self, steps: Iterator[Step], chat: bool, echo: str,
               usage: bool) -> Iterator[dict[str, Any]]:
        kind = self.kind + ".chunk" if chat else self.kind
        yield self._chunk(kind, [{"index": i, **self._delta(chat, echo, first=True), "logprobs": None,
                                  "finish_reason": None} for i in range(self.n)], first=True)
        for pieces, finished, listed in self._advance(steps):
            choices = [{"index": i, **self._delta(chat, p), "logprobs": self._logprobs(chat, listed[i]),
                        "finish_reason": finished[i]} for i, p in enumerate(pieces) if p or finished[i]]
            if choices:
                yield self._chunk(kind, choices)
        if usage:
            yield {**self._chunk(kind, []), "usage": self.usage()}

    def _logprobs(self, chat: bool, entries: list[Logprob]) -> dict[str, Any] | None:
        if self.token_text.top is None:
            return None
        return chat_logprobs(entries) if chat else legacy_logprobs(entries)

    @staticmethod
    def _delta(chat: bool, text: str, first: bool = False) -> dict[str, Any]:
        if chat:
            return {"delta": {"role": "assistant", "content": text} if first else {"content": text}}
        return {"text": text}

    def _chunk(self, kind: str, choices: list[dict[str, Any]], first: bool = False) -> dict[str, Any]:
        extra = self.extra if first else {k: v for k, v in self.extra.items() if k == "answered_by"}
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    def _advance(self, steps: Iterator[Step]
                 ) -> Iterator[tuple[list[str], list[str | None], list[list[Logprob]]]]:
        """Run the steps: count the tokens of each running sequence, apply the output guardrails, and yield what
        is safe to send of each sequence, the finish reasons of this step and the log-probabilities of the tokens
        whose text is sent now."""
        for step in steps:
            out, reasons, listed = [""] * self.n, [None] * self.n, [[] for _ in range(self.n)]
            for i in (i for i in range(self.n) if self.reasons[i] is None):
                self.tokens[i] = step.tokens[i]
                self.texts[i] += step.pieces[i]
                reason = step.finished[i]
                offence = first_offence(self.guardrails, self.texts[i])
                if offence is not None:
                    self.texts[i], reason = self.texts[i][: offence[0]], "content_filter"
                out[i] = self.texts[i][self.sent[i]:]
                self.sent[i] = len(self.texts[i])
                self.reasons[i] = reasons[i] = reason
                listed[i] = self._list(i, step.logprobs[i])
            yield out, reasons, listed
            if all(r is not None for r in self.reasons):
                return

    def _list(self, i: int, records: list[TokenLogprob]) -> list[Logprob]:
        """The log-probabilities of sequence ``i``'s tokens whose text has been sent by now."""
        if self.token_text.top is None:
            return []
        new, self.offsets[i] = self.token_text.listed(records, self.read[i], self.offsets[i])
        self.read[i] = len(records)
        self.pending[i] += new
        end = self.token_text.start + self.sent[i]
        ready = [e for e in self.pending[i] if e.offset < end]
        self.pending[i] = self.pending[i][len(ready):]
        self.listed[i] += ready
        return ready


def _sse(chunks: Iterator[dict[str, Any]], on_end: Callable[[int, dict[str, Any] | None], None]
         ) -> StreamingResponse:
    """Server-sent events in OpenAI's format: one ``data:`` line per chunk, then ``data: [DONE]``. An error once the
    stream has started (a timeout) is sent as a last ``data: {"error": ...}`` event. ``on_end(status, error)`` runs
    when the stream is over (finished, failed or abandoned by the client)."""

    def events() -> Iterator[str]:
        status, error = 200, None
        try:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        except APIError as err:
            status, error = err.status, error_body(err.message, err.kind, err.param, err.code)
            yield f"data: {json.dumps(error, ensure_ascii=False)}\n\n"
        finally:
            on_end(status, error)
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
