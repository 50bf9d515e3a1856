"""Bookkeeping around every model request: Prometheus metrics (count, latency, in flight, batch size) and the
request store, in one place, so each route only says what it answered."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from genzoo.errors import GenzooError
from genzoo.serve.errors import APIError, error_body
from genzoo.serve.metrics import ServerMetrics
from genzoo.serve.registry import ModelRegistry, UnknownModelError
from genzoo.serve.store import RequestStore

#: the prefix of a response id per endpoint (OpenAI's for text)
ID_PREFIX = {"completions": "cmpl", "chat": "chatcmpl", "images": "img", "edits": "edit", "score": "score"}


@dataclass
class Tracked:
    """One request being answered: the route fills in the response and its counts."""

    endpoint: str
    model: str  # the metrics label: the requested name when served, else "(unknown)"
    requested: str
    parameters: dict[str, Any]
    key_id: str | None
    session_id: str | None
    id: str = ""
    started: float = field(default_factory=time.perf_counter)
    response: Any = None
    counts: dict[str, int | None] = field(default_factory=dict)
    deferred: bool = False

    def respond(self, response: Any, **counts: int | None) -> Any:
        """Record the response (and prompt_tokens/completion_tokens/samples) and return it."""
        self.response, self.counts = response, counts
        return response


class Tracker:
    def __init__(self, registry: ModelRegistry, metrics: ServerMetrics, store: RequestStore | None,
                 dedupe: bool = False) -> None:
        self.registry, self.metrics, self.store, self.dedupe = registry, metrics, store, dedupe

    @contextmanager
    def track(self, endpoint: str, requested: str, parameters: dict[str, Any], key_id: str | None = None,
              session_id: str | None = None) -> Iterator[Tracked]:
        """Count, time and store one request. Unknown model names share one metrics label, so clients cannot
        create label values. A route that streams calls ``defer`` and its stream calls :meth:`finish` at the end."""
        model = requested if requested in self.registry.models else "(unknown)"
        tracked = Tracked(endpoint, model, requested, parameters, key_id, session_id,
                          id=f"{ID_PREFIX.get(endpoint, endpoint)}-{uuid.uuid4().hex[:24]}")
        self.metrics.in_flight.labels(model).inc()
        try:
            yield tracked
        except Exception as err:
            self.finish(tracked, _status(err), error_body(str(getattr(err, "message", err)), "error"))
            raise
        if not tracked.deferred:
            self.finish(tracked, 200, tracked.response)

    def finish(self, tracked: Tracked, status: int = 200, response: Any = None) -> None:
        """Close the books on ``tracked``: metrics, and the store row."""
        latency = time.perf_counter() - tracked.started
        self.metrics.in_flight.labels(tracked.model).dec()
        self.metrics.latency.labels(tracked.endpoint, tracked.model).observe(latency)
        self.metrics.requests.labels(tracked.endpoint, tracked.model, str(status)).inc()
        if self.store is not None:
            answer = tracked.response if response is None else response
            self.store.record(id=tracked.id, endpoint=tracked.endpoint, model=tracked.requested[:128],
                              parameters=tracked.parameters, response=answer, status=status, latency_s=latency,
                              api_key_id=tracked.key_id, session_id=tracked.session_id, **tracked.counts)

    def cached(self, endpoint: str, model: str, parameters: dict[str, Any]) -> dict[str, Any] | None:
        """An identical earlier request's answer, when de-duplication is on."""
        if not (self.dedupe and self.store is not None):
            return None
        return self.store.answered(endpoint, model, parameters)


def _status(err: Exception) -> int:
    if isinstance(err, APIError):
        return err.status
    if isinstance(err, UnknownModelError):
        return 404
    return 400 if isinstance(err, GenzooError) else 500
