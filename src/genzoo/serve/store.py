"""The request store: every request and its response, with time, API key id, session id, model, parameters,
latency, token or sample counts, status and an optional quality score set later (``POST /v1/feedback``).

Generated outputs are kept here, apart from any training data, and every stored output is marked synthetic, so
they can never be mistaken for real data when exported. SQLite by default (WAL mode, so readers do not block the
writer), any SQLAlchemy URL by configuration (``postgresql+psycopg://...``). SQLAlchemy Core is used rather than
hand-written SQL so that the same code runs on both.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Engine

from genzoo.errors import ConfigError
from genzoo.io import atomic_path

_metadata = MetaData()
REQUESTS = Table(
    "genzoo_requests", _metadata,
    Column("id", String(64), primary_key=True),
    Column("created", Float, nullable=False, index=True),
    Column("api_key_id", String(32), index=True),
    Column("session_id", String(64), index=True),
    Column("endpoint", String(32), nullable=False),
    Column("model", String(128), nullable=False, index=True),
    Column("parameters", JSON, nullable=False),
    Column("request_hash", String(64), index=True),
    Column("response", JSON),
    Column("status", Integer, nullable=False),
    Column("latency_s", Float),
    Column("prompt_tokens", Integer),
    Column("completion_tokens", Integer),
    Column("samples", Integer),
    Column("quality", Float),
    Column("synthetic", Boolean, nullable=False, default=True),
)


def request_hash(endpoint: str, model: str, parameters: dict[str, Any]) -> str:
    """Identity of a request for de-duplication: endpoint, model and every parameter (generation is deterministic
    given its seed, so equal requests have equal answers)."""
    text = json.dumps([endpoint, model, parameters], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class RequestStore:
    """Where a server records what it answered. ``url``: an SQLAlchemy URL (``sqlite:///requests.db``)."""

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine: Engine = create_engine(url, future=True)
        except Exception as err:  # an unparsable URL or a missing database driver
            raise ConfigError(f"cannot use the request store '{url}': {err}") from None
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_wal)
        _metadata.create_all(self.engine)
        self._lock = threading.Lock()  # SQLite has one writer; serialising writes here avoids 'database is locked'

    def record(self, *, id: str, endpoint: str, model: str, parameters: dict[str, Any], response: Any, status: int,
               latency_s: float, api_key_id: str | None = None, session_id: str | None = None,
               prompt_tokens: int | None = None, completion_tokens: int | None = None,
               samples: int | None = None) -> None:
        row = {"id": id, "created": time.time(), "api_key_id": api_key_id, "session_id": session_id,
               "endpoint": endpoint, "model": model, "parameters": parameters,
               "request_hash": request_hash(endpoint, model, parameters), "response": response, "status": status,
               "latency_s": latency_s, "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
               "samples": samples, "synthetic": True}
        with self._lock, self.engine.begin() as connection:
            connection.execute(insert(REQUESTS).values(**row))

    def answered(self, endpoint: str, model: str, parameters: dict[str, Any]) -> dict[str, Any] | None:
        """The stored successful response to an identical earlier request, or None."""
        query = (select(REQUESTS.c.response).where(REQUESTS.c.request_hash == request_hash(endpoint, model, parameters))
                 .where(REQUESTS.c.status == 200).order_by(REQUESTS.c.created.desc()).limit(1))
        with self.engine.connect() as connection:
            return connection.execute(query).scalar()

    def set_quality(self, request_id: str, quality: float) -> bool:
        """Attach a quality score to a stored request; False when there is no such request."""
        with self._lock, self.engine.begin() as connection:
            done = connection.execute(update(REQUESTS).where(REQUESTS.c.id == request_id).values(quality=quality))
        return done.rowcount == 1

    def rows(self, since: float | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """Stored requests, oldest first (``since``: a Unix time)."""
        query = select(REQUESTS).order_by(REQUESTS.c.created)
        if since is not None:
            query = query.where(REQUESTS.c.created >= since)
        if limit is not None:
            query = query.limit(limit)
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                yield dict(row._mapping)

    def recent(self, limit: int = 50) -> list[dict[str, Any]]:
        """The latest ``limit`` requests, newest first."""
        query = select(REQUESTS).order_by(REQUESTS.c.created.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [dict(row._mapping) for row in connection.execute(query)]

    def export(self, path: Path, since: float | None = None) -> int:
        """Write the stored requests as JSON lines (atomically); returns how many."""
        count = 0
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
            for row in self.rows(since):
                out.write(json.dumps(row, default=str, ensure_ascii=False) + "\n")
                count += 1
        return count


def _sqlite_wal(connection: Any, _: Any) -> None:
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()
