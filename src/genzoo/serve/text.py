"""The OpenAI-compatible text routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or streamed
as server-sent events (``data: {chunk}`` lines ending with ``data: [DONE]``), with usage counts.

Request fields are OpenAI's (model, prompt/messages, max_tokens, temperature, top_p, n, stop, seed, stream,
stream_options.include_usage, response_format with a json_schema) plus genzoo's ``top_k``, ``min_p``,
``repetition_penalty`` and the constraints ``regex``, ``grammar`` and ``choice`` (:mod:`genzoo.constrain`); fields
the server cannot honour (``logprobs``, non-zero presence/frequency penalties) are refused by name rather than ignored.
A chat goes through the model's chat template when it has one (pretrained chat models), else through a plain
transcript (``user: ...`` lines, then ``assistant:``), which is what a model trained on plain text can continue.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal, NamedTuple

from fastapi import Depends, FastAPI, Header
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from genzoo.constrain import Choice, Constraint, Grammar, JsonSchema, Regex
from genzoo.contract import Capability, GenerativeModel
from genzoo.data.grammar import GRAMMARS
from genzoo.generation import Completion, TextGenerationMixin, generation_config, stream_ids
from genzoo.serve.errors import APIError
from genzoo.serve.guardrails import Guardrail, first_offence
from genzoo.serve.registry import ModelRegistry
from genzoo.serve.tracking import Tracker

#: the roles a chat message may have
Role = Literal["system", "user", "assistant"]


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
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    user: str | None = None
    response_format: ResponseFormat | None = None
    regex: str | None = Field(None, description="extension: the completion must fully match this regular expression")
    grammar: str | None = Field(None, description="extension: a Lark grammar (or a built-in: brackets, arith, json) "
                                                  "the completion must parse under")
    choice: list[str] | None = Field(None, min_length=1, description="extension: the completion is one of these")

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
        if self.logprobs not in (None, False, 0):
            raise APIError(400, "logprobs are not available from this server yet", param="logprobs")
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


class ChatRequest(TextRequest):
    messages: list[Message] = Field(..., min_length=1)


def transcript(messages: list[Message]) -> str:
    """A conversation as plain text for a model without a chat template: one ``role: content`` line per message,
    then ``assistant:`` for the answer."""
    return "".join(f"{m.role}: {m.content}\n" for m in messages) + "assistant:"


def install_text_routes(app: FastAPI, registry: ModelRegistry, tracker: Tracker, caller: Callable[..., str | None],
                        settings: Any, guardrails: list[Guardrail]) -> None:
    """Add ``/v1/completions`` and ``/v1/chat/completions`` to ``app``."""

    def answer(endpoint: str, request: TextRequest, key: str | None, session: str | None, text: str,
               prompt_ids: Callable[[GenerativeModel], list[int]], chat: bool, echo: str
               ) -> dict[str, Any] | StreamingResponse:
        """Answer a text request whose user-written ``text`` the model reads as ``prompt_ids(model)``."""
        if request.n > settings.max_n:
            raise APIError(400, f"n is {request.n}; this server draws at most {settings.max_n} per request", param="n")
        parameters = request.model_dump(exclude_none=True)
        with tracker.track(endpoint, request.model, parameters, key, session) as tracked:
            offence = first_offence(guardrails, text)
            if offence is not None:
                raise APIError(400, f"the prompt was refused: it contains {offence[1]}", code="content_filter")
            served, model = registry.get(request.model, Capability.GENERATE_TEXT)
            options = request.generation(settings.max_tokens)
            constraint = request.constraint()
            if constraint is not None and not isinstance(model, TextGenerationMixin):
                raise APIError(400, f"model '{request.model}' does not decode token by token, so it cannot be "
                               "constrained", param="response_format")
            ids = prompt_ids(model)
            cached = None if request.stream else tracker.cached(endpoint, request.model, parameters)
            if cached is not None:
                return tracked.respond(cached, prompt_tokens=0, completion_tokens=0)
            reply = Reply(tracked.id, "chat.completion" if chat else "text_completion", request.model, len(ids),
                          request.n, guardrails)
            steps = _steps(served, model, ids, options, constraint)
            if not request.stream:
                return tracked.respond(reply.whole(steps, chat, echo), prompt_tokens=len(ids),
                                       completion_tokens=reply.completion_tokens)
            tracked.deferred = True
            include_usage = bool(request.stream_options and request.stream_options.include_usage)
            return _sse(reply.chunks(steps, chat, echo, include_usage),
                        lambda: tracker.finish(tracked, 200, reply.summary(chat)))

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

        def prompt_ids(model: GenerativeModel) -> list[int]:
            if Capability.CHAT in model.capabilities:
                return model.chat_prompt_ids(messages)
            return model.prompt_ids(transcript(request.messages))

        return answer("chat", request, key, x_session_id or session_of(messages, key),
                      "\n".join(m["content"] for m in messages), prompt_ids, chat=True, echo="")


def session_of(messages: list[dict[str, Any]], key: str | None) -> str:
    """A conversation's id when the client sends none (``X-Session-Id``): chat clients resend the whole history
    each turn, so the messages up to the first user message identify the conversation."""
    first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), len(messages) - 1)
    opening = json.dumps([key, messages[: first_user + 1]], sort_keys=True)
    return "s-" + hashlib.sha256(opening.encode()).hexdigest()[:24]


class Step(NamedTuple):
    """One decoding step: each sequence's new text, why a sequence ended at this step (``stop``/``length``; None
    while it runs) and how many tokens each has generated so far."""

    pieces: list[str]
    finished: list[str | None]
    tokens: list[int]


def _steps(served: Any, model: GenerativeModel, ids: list[int], options: dict[str, Any],
           constraint: Constraint | None) -> Iterator[Step]:
    """The generation steps; the model's lock is held while they run."""
    cfg = generation_config(**options)
    outs = [Completion(model, cfg.stop) for _ in range(cfg.num_return_sequences)]
    matchers = model.constraint_matchers(constraint, cfg) if constraint else None
    reported = [False] * len(outs)
    with served.lock:
        for pieces in stream_ids(model, ids, cfg, outs, matchers):
            finished = [out.finish_reason if out.done and not was else None for out, was in zip(outs, reported,
                                                                                                 strict=True)]
            reported = [out.done for out in outs]
            yield Step(pieces, finished, [len(out.ids) for out in outs])


class Reply:
    """One answer's text, finish reasons and usage, written whole or as stream chunks. Output guardrails cut a
    completion where it first offends (``finish_reason: "content_filter"``)."""

    def __init__(self, id: str, kind: str, model: str, prompt_tokens: int, n: int,
                 guardrails: list[Guardrail]) -> None:
        self.id, self.kind, self.model, self.guardrails = id, kind, model, guardrails
        self.created, self.prompt_tokens, self.n = int(time.time()), prompt_tokens, n
        self.tokens = [0] * n
        self.texts, self.reasons = [""] * n, [None] * n
        self.sent = [0] * n  # characters of each text already sent

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
                       else {"text": echo + self.texts[i], "logprobs": None})} for i in range(self.n)]
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def chunks(self, steps: Iterator[Step], chat: bool, echo: str,
               usage: bool) -> Iterator[dict[str, Any]]:
        kind = self.kind + ".chunk" if chat else self.kind
        yield self._chunk(kind, [{"index": i, **self._delta(chat, echo, first=True), "finish_reason": None}
                                 for i in range(self.n)])
        for pieces, finished in self._advance(steps):
            choices = [{"index": i, **self._delta(chat, p), "finish_reason": finished[i]}
                       for i, p in enumerate(pieces) if p or finished[i]]
            if choices:
                yield self._chunk(kind, choices)
        if usage:
            yield {**self._chunk(kind, []), "usage": self.usage()}

    @staticmethod
    def _delta(chat: bool, text: str, first: bool = False) -> dict[str, Any]:
        if chat:
            return {"delta": {"role": "assistant", "content": text} if first else {"content": text}}
        return {"text": text, "logprobs": None}

    def _chunk(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _advance(self, steps: Iterator[Step]
                 ) -> Iterator[Step]:
        """Run the steps: count the tokens of each running sequence, apply the output guardrails, and yield what
        is safe to send of each sequence and the finish reasons of this step."""
        for step in steps:
            running = [r is None for r in self.reasons]
            out, reasons = [""] * self.n, [None] * self.n
            for i in (i for i in range(self.n) if running[i]):
                self.tokens[i] = step.tokens[i]
                self.texts[i] += step.pieces[i]
                reason = step.finished[i]
                offence = first_offence(self.guardrails, self.texts[i])
                if offence is not None:
                    self.texts[i], reason = self.texts[i][: offence[0]], "content_filter"
                out[i] = self.texts[i][self.sent[i]:]
                self.sent[i] = len(self.texts[i])
                self.reasons[i] = reasons[i] = reason
            yield out, reasons
            if all(r is not None for r in self.reasons):
                return


def _sse(chunks: Iterator[dict[str, Any]], on_end: Callable[[], None]) -> StreamingResponse:
    """Server-sent events in OpenAI's format: one ``data:`` line per chunk, then ``data: [DONE]``; ``on_end`` runs
    when the stream is over (finished or abandoned by the client)."""

    def events() -> Iterator[str]:
        try:
            for chunk in chunks:
                yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"
        finally:
            on_end()

    return StreamingResponse(events(), media_type="text/event-stream")
