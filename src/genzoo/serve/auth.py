"""API keys and per-key rate limits.

Keys are configured by their SHA-256 (``genzoo serve-key NAME`` makes a key and prints the line to configure), so
the server never holds a usable key at rest. Clients send ``Authorization: Bearer KEY`` as OpenAI's clients do.
Each key may have a rate limit in requests per minute, enforced by a token bucket (bursts up to the per-minute
count, refilled continuously). Without configured keys the server is open, which ``genzoo serve`` allows on loopback
only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time

from pydantic import BaseModel, ConfigDict, Field

from genzoo.serve.errors import APIError


class APIKey(BaseModel):
    """One client: a name (stored with its requests), the SHA-256 of its key, its rate limit."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(..., pattern=r"^[A-Za-z0-9._-]{1,32}$", description="name of the client (in the request store)")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    requests_per_minute: float | None = Field(None, gt=0, description="rate limit; None: unlimited")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str) -> tuple[str, APIKey]:
    """A fresh random key for client ``name`` and its configuration entry."""
    key = "gz-" + secrets.token_urlsafe(24)
    return key, APIKey(id=name, sha256=hash_key(key))


class KeyRing:
    """Checks a request's key and its rate limit; ``check`` returns the client's id (None when keys are off)."""

    def __init__(self, keys: list[APIKey]) -> None:
        self.keys = list(keys)
        self._buckets: dict[str, tuple[float, float]] = {}  # id -> (tokens, last refill time)
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.keys)

    def check(self, authorization: str | None) -> str | None:
        if not self.keys:
            return None
        scheme, _, key = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not key:
            raise APIError(401, "this server needs an API key: send 'Authorization: Bearer KEY'",
                           kind="invalid_request_error", code="invalid_api_key")
        digest = hash_key(key.strip())
        # compare with every key in constant time, so timing tells nothing about how much of a key matched
        found = [k for k in self.keys if hmac.compare_digest(k.sha256, digest)]
        if not found:
            raise APIError(401, "the API key is not valid", kind="invalid_request_error", code="invalid_api_key")
        client = found[0]
        if client.requests_per_minute is not None:
            self._take(client)
        return client.id

    def _take(self, client: APIKey) -> None:
        rate = client.requests_per_minute / 60.0
        now = time.monotonic()
        with self._lock:
            tokens, last = self._buckets.get(client.id, (client.requests_per_minute, now))
            tokens = min(client.requests_per_minute, tokens + (now - last) * rate)
            if tokens < 1.0:
                self._buckets[client.id] = (tokens, now)
                wait = (1.0 - tokens) / rate
                raise APIError(429, f"rate limit of {client.requests_per_minute:g} requests per minute reached for "
                               f"'{client.id}'; retry in {wait:.1f} s", kind="rate_limit_error",
                               code="rate_limit_exceeded")
            self._buckets[client.id] = (tokens - 1.0, now)
