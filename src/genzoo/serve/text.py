"""The OpenAI-compatible text routes: ``POST /v1/completions`` and ``POST /v1/chat/completions``, whole or streamed
as server-sent events (``data: {chunk}`` lines ending with ``data: [DONE]``), with usage counts.

Request fields are OpenAI's (model, prompt/messages, max_tokens, temperature, top_p, n, stop, seed, stream,
stream_options.include_usage) plus genzoo's ``top_k``, ``min_p`` and ``repetition_penalty``; fields the server
cannot honour (``logprobs``, non-zero presence/frequency penalties) are refused by name rather than ignored.
A chat goes through the model's chat template when it has one (pretrained chat models), else through a plain
transcript (``user: ...`` lines, then ``assistant:``), which is what a model trained on plain text can continue.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, Literal

from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator

from genzoo.contract import Capability, GenerativeModel
from genzoo.generation import generation_config, stream_steps
from genzoo.serve.errors import APIError
from genzoo.serve.registry import ModelRegistry

#: the roles a chat message may have
Role = Literal["system", "user", "assistant"]


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


def install_text_routes(app: FastAPI, registry: ModelRegistry, max_n: int, max_tokens: int,
                        timed: Callable[[str, str], Any]) -> None:
    """Add ``/v1/completions`` and ``/v1/chat/completions`` to ``app``."""

    def prepare(request: TextRequest, endpoint: str) -> tuple[Any, GenerativeModel, dict[str, Any]]:
        if request.n > max_n:
            raise APIError(400, f"n is {request.n}; this server draws at most {max_n} per request", param="n")
        served, model = registry.get(request.model, Capability.GENERATE_TEXT)
        return served, model, request.generation(max_tokens)

    @app.post("/v1/completions", response_model=None)
    def completions(request: CompletionRequest) -> dict[str, Any] | StreamingResponse:
        with timed("completions", request.model):
            served, model, options = prepare(request, "completions")
            prompt = request.prompt if isinstance(request.prompt, str) else request.prompt[0]
            ids = model.prompt_ids(prompt)
            echo = prompt if request.echo else ""
            reply = Reply("cmpl", "text_completion", request.model, len(ids), request.n)
            steps = _steps(served, model, ids, options)
            if request.stream:
                return _sse(reply.chunks(steps, chat=False, echo=echo,
                                         usage=bool(request.stream_options and request.stream_options.include_usage)))
            return reply.whole(steps, chat=False, echo=echo)

    @app.post("/v1/chat/completions", response_model=None)
    def chat(request: ChatRequest) -> dict[str, Any] | StreamingResponse:
        with timed("chat", request.model):
            served, model, options = prepare(request, "chat")
            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            ids = (model.chat_prompt_ids(messages) if Capability.CHAT in model.capabilities
                   else model.prompt_ids(transcript(request.messages)))
            reply = Reply("chatcmpl", "chat.completion", request.model, len(ids), request.n)
            steps = _steps(served, model, ids, options)
            if request.stream:
                return _sse(reply.chunks(steps, chat=True, echo="",
                                         usage=bool(request.stream_options and request.stream_options.include_usage)))
            return reply.whole(steps, chat=True, echo="")


def _steps(served: Any, model: GenerativeModel, ids: list[int], options: dict[str, Any]
           ) -> Iterator[tuple[list[str], list[str | None]]]:
    """The generation steps (new text and finish reason per sequence), holding the model's lock while they run."""
    cfg = generation_config(**options)
    with served.lock:
        yield from stream_steps(model, ids, cfg)


class Reply:
    """One answer's id, timestamps and usage, written whole or as stream chunks."""

    def __init__(self, prefix: str, kind: str, model: str, prompt_tokens: int, n: int) -> None:
        self.id, self.kind, self.model = f"{prefix}-{uuid.uuid4().hex[:24]}", kind, model
        self.created, self.prompt_tokens, self.n = int(time.time()), prompt_tokens, n
        self.completion_tokens = 0

    def usage(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}

    def whole(self, steps: Iterator[tuple[list[str], list[str | None]]], chat: bool, echo: str) -> dict[str, Any]:
        texts, reasons = [echo] * self.n, [None] * self.n
        for pieces, finished in self._counted(steps):
            texts = [t + p for t, p in zip(texts, pieces, strict=True)]
            reasons = [r or f for r, f in zip(reasons, finished, strict=True)]
        choices = [{"index": i, "finish_reason": reasons[i] or "length",
                    **({"message": {"role": "assistant", "content": texts[i]}} if chat
                       else {"text": texts[i], "logprobs": None})} for i in range(self.n)]
        return {"id": self.id, "object": self.kind, "created": self.created, "model": self.model,
                "choices": choices, "usage": self.usage()}

    def chunks(self, steps: Iterator[tuple[list[str], list[str | None]]], chat: bool, echo: str,
               usage: bool) -> Iterator[dict[str, Any]]:
        kind = self.kind + ".chunk" if chat else self.kind
        first = [{"index": i, **({"delta": {"role": "assistant", "content": ""}} if chat
                                 else {"text": echo, "logprobs": None}), "finish_reason": None}
                 for i in range(self.n)]
        yield self._chunk(kind, first)
        for pieces, finished in self._counted(steps):
            choices = [{"index": i, **({"delta": {"content": p}} if chat else {"text": p, "logprobs": None}),
                        "finish_reason": finished[i]}
                       for i, p in enumerate(pieces) if p or finished[i]]
            if choices:
                yield self._chunk(kind, choices)
        if usage:
            yield {**self._chunk(kind, []), "usage": self.usage()}

    def _chunk(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def _counted(self, steps: Iterator[tuple[list[str], list[str | None]]]
                 ) -> Iterator[tuple[list[str], list[str | None]]]:
        """The steps, counting one generated token per sequence still running at each step."""
        running = [True] * self.n
        for pieces, finished in steps:
            self.completion_tokens += sum(running)
            running = [r and f is None for r, f in zip(running, finished, strict=True)]
            yield pieces, finished


def _sse(chunks: Iterator[dict[str, Any]]) -> StreamingResponse:
    """Server-sent events in OpenAI's format: one ``data:`` line per chunk, then ``data: [DONE]``."""

    def events() -> Iterator[str]:
        for chunk in chunks:
            yield f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")
