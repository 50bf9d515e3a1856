"""The request store on both of its databases: SQLite (a file) and a real PostgreSQL server started for the test
run (Debian's binaries; skipped, with the reason, where they are absent)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from genzoo.serve.store import RequestStore


def _postgres_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(versions[-1]).parent if versions else None


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """A throw-away PostgreSQL server on a Unix socket; as root it runs as the 'postgres' user (it refuses root)."""
    binaries = _postgres_bin()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not installed (apt-get install -y postgresql)")
    pytest.importorskip("psycopg", reason="the psycopg driver is not installed")
    # not under pytest's own temp folder: it is private to this user, and the server may run as another
    folder = Path(tempfile.mkdtemp(prefix="genzoo-postgres-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as another user")
        as_user = ["runuser", "-u", "postgres", "--"]
        shutil.chown(folder, "postgres")
        folder.chmod(0o700)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data, run = folder / "data", folder
    subprocess.run([*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "genzoo"],
                   check=True, capture_output=True)
    options = f"-k {run} -p {port} -c listen_addresses=''"
    subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"),
                    "-w", "start"], check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://genzoo@/postgres?host={run}&port={port}"
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> RequestStore:
    if request.param == "sqlite":
        return RequestStore(f"sqlite:///{tmp_path / 'requests.db'}")
    url = request.getfixturevalue("postgres_url")
    store = RequestStore(url)
    with store.engine.begin() as connection:  # each test starts from an empty table
        connection.exec_driver_sql("DELETE FROM genzoo_requests")
    return store


def _record(store: RequestStore, id: str, **changes: object) -> None:
    row = {"id": id, "endpoint": "completions", "model": "gpt", "parameters": {"prompt": "hi", "seed": 1},
           "response": {"id": id, "choices": [{"text": "ü ✓"}]}, "status": 200, "latency_s": 0.25,
           "api_key_id": "alice", "session_id": "s-1", "prompt_tokens": 2, "completion_tokens": 5}
    store.record(**{**row, **changes})


def test_rows_round_trip_with_feedback_and_deduplication(store: RequestStore, tmp_path: Path) -> None:
    _record(store, "cmpl-1")
    _record(store, "cmpl-2", parameters={"prompt": "other"}, status=400, response={"error": {"message": "x"}})
    rows = list(store.rows())
    assert [r["id"] for r in rows] == ["cmpl-1", "cmpl-2"]
    first = rows[0]
    assert first["response"] == {"id": "cmpl-1", "choices": [{"text": "ü ✓"}]} and first["synthetic"] is True
    assert (first["api_key_id"], first["session_id"], first["prompt_tokens"], first["completion_tokens"]) == \
        ("alice", "s-1", 2, 5)
    assert store.set_quality("cmpl-1", 0.9) and not store.set_quality("cmpl-404", 1.0)
    assert next(store.rows())["quality"] == 0.9
    assert store.answered("completions", "gpt", {"seed": 1, "prompt": "hi"})["id"] == "cmpl-1"  # key order free
    assert store.answered("completions", "gpt", {"prompt": "other"}) is None  # failed answers are not reused
    assert [r["id"] for r in store.recent(1)] == ["cmpl-2"]
    assert store.export(tmp_path / "out.jsonl") == 2
    assert len((tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()) == 2


def test_a_bad_store_url_is_one_clear_error() -> None:
    from genzoo.errors import ConfigError

    with pytest.raises(ConfigError, match="cannot use the request store"):
        RequestStore("nosuchdb://x")
