"""The HTTP server: every route answers in OpenAI's shapes, limits and malformed requests get one clear 4xx, and
the server stays up."""

from __future__ import annotations

import base64
import io
import json
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import genzoo
import genzoo.registry
from conftest import FAST, TINY_CORPUS
from genzoo.errors import ConfigError
from genzoo.serve import ModelRegistry, ServeSettings, create_app
from genzoo.serve.registry import expand_sources, source_name


@pytest.fixture(scope="session")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny runs, trained once per session (tests/test_serve_cascade.py imports this fixture too)."""
    folder = tmp_path_factory.mktemp("runs")
    genzoo.train("vae", "digits", steps=5, out=folder / "vae", seed=0, overrides={"latent_dim": 4}, **FAST)
    genzoo.train("dcgan", "digits", steps=3, out=folder / "dcgan", seed=0,
                 overrides={"latent_dim": 8, "width": 8}, **FAST)
    genzoo.train("ddpm", "digits", steps=3, out=folder / "ddpm", seed=0,
                 overrides=dict(genzoo.registry.model_class("ddpm").smoke_config), **FAST)
    genzoo.train("made", "digits", steps=5, out=folder / "made", seed=0,
                 overrides=dict(genzoo.registry.model_class("made").smoke_config), **FAST)
    corpus = tmp_path_factory.mktemp("text") / "corpus.txt"
    corpus.write_text(TINY_CORPUS + "user: hi\nassistant: hello, the bird sang.\n" * 10)  # chats as transcripts
    genzoo.train("gpt", f"text:{corpus}#context=32", steps=30, out=folder / "gpt", seed=0,
                 overrides={"layers": 1, "width": 32, "heads": 2}, **FAST)
    return folder


@pytest.fixture(scope="module")
def client(runs: Path, tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    registry = ModelRegistry.from_sources(expand_sources([str(runs)]))
    settings = ServeSettings(max_images=8, max_score_examples=16, max_body_bytes=64 * 1024,
                             files_dir=tmp_path_factory.mktemp("files"))
    return TestClient(create_app(registry, settings), raise_server_exceptions=False)


def _png_b64(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _error(response: object, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_models_and_health_list_every_run_loaded_lazily(client: TestClient) -> None:
    health = client.get("/health").json()
    assert health["status"] == "ok" and set(health["models"]) == {"dcgan", "ddpm", "gpt", "made", "vae"}
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["dcgan", "ddpm", "gpt", "made", "vae"]
    assert all(m["object"] == "model" for m in listed["data"])


def test_images_come_back_as_pngs_deterministic_by_seed_and_as_urls(client: TestClient) -> None:
    body = {"model": "vae", "n": 3, "seed": 7}
    first, again = client.post("/v1/images/generations", json=body), client.post("/v1/images/generations", json=body)
    assert first.status_code == 200, first.text
    pngs = [base64.b64decode(d["b64_json"]) for d in first.json()["data"]]
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert pngs == [base64.b64decode(d["b64_json"]) for d in again.json()["data"]]
    image = np.asarray(Image.open(io.BytesIO(pngs[0])))
    assert image.shape == (8, 8)
    # the same pixels as the library's own samples of that seed
    expected = genzoo.load(client.app.state.registry.models["vae"].source).sample(3, seed=7)
    assert np.array_equal(image, (expected[0, 0].numpy() * 255).round().astype(np.uint8))
    other = client.post("/v1/images/generations", json={**body, "seed": 8}).json()["data"]
    assert [base64.b64decode(d["b64_json"]) for d in other] != pngs
    url = client.post("/v1/images/generations", json={**body, "response_format": "url"}).json()["data"][0]["url"]
    assert client.get(url).content == pngs[0]


def test_scores_match_the_library_for_arrays_and_pngs(client: TestClient) -> None:
    x = genzoo.load_dataset("digits").examples("test").x[:4]
    as_arrays = client.post("/v1/score", json={"model": "vae", "input": x.tolist()})
    assert as_arrays.status_code == 200, as_arrays.text
    got = as_arrays.json()
    expected = genzoo.score(genzoo.load(client.app.state.registry.models["vae"].source), x)
    assert got["score_name"] == expected.score_name
    assert [d["score"] for d in got["data"]] == pytest.approx(expected.scores.tolist(), rel=1e-5)
    images = [_png_b64((im[0].numpy() * 255).round().astype(np.uint8)) for im in x]
    as_pngs = client.post("/v1/score", json={"model": "vae", "images": images}).json()
    assert [d["score"] for d in as_pngs["data"]] == pytest.approx([d["score"] for d in got["data"]], rel=1e-5)


@pytest.mark.parametrize(("path", "body", "status", "fragment"), [
    ("/v1/images/generations", {"model": "nope"}, 404, "does not exist"),
    ("/v1/images/generations", {"model": "../../etc/passwd"}, 404, "does not exist"),
    ("/v1/images/generations", {"model": "vae", "n": 9}, 400, "at most 8"),
    ("/v1/images/generations", {"model": "vae", "n": "many"}, 400, "n"),
    ("/v1/images/generations", {"model": "vae", "options": {"steps": 3}}, 400, "steps"),
    ("/v1/images/generations", {"model": "vae", "prompt": "a cat"}, 400, "takes no prompt"),
    ("/v1/images/generations", {"model": "vae", "class": 3}, 400, "labels"),
    ("/v1/images/generations", {"model": "vae", "colour": 1}, 400, "colour"),
    ("/v1/score", {"model": "dcgan", "input": [[0.0]]}, 400, "cannot anomaly score"),
    ("/v1/score", {"model": "vae", "input": [[1, 2], [3]]}, 400, "regular array"),
    ("/v1/score", {"model": "vae", "input": [[[float("nan")] * 8] * 8]}, 400, "NaN"),
    ("/v1/score", {"model": "vae", "images": ["not base64!"]}, 400, "images[0]"),
    ("/v1/score", {"model": "vae"}, 400, "give the examples"),
    ("/v1/score", {"model": "vae", "input": [[[0.0] * 8] * 8] * 17}, 400, "1 to 16"),
])
def test_bad_requests_get_one_clear_error_in_openai_format(client: TestClient, path: str, body: dict, status: int,
                                                           fragment: str) -> None:
    response = client.post(path, content=_json(body), headers={"content-type": "application/json"})
    assert fragment in _error(response, status)["message"]
    assert client.get("/health").status_code == 200  # and the server is still up


def _json(body: dict) -> str:
    return json.dumps(body)  # NaN as JavaScript's NaN, which Python's JSON reader accepts


def test_malformed_json_and_huge_bodies_are_rejected(client: TestClient) -> None:
    assert _error(client.post("/v1/score", content="{not json", headers={"content-type": "application/json"}), 400)
    huge = client.post("/v1/score", content="x" * (65 * 1024), headers={"content-type": "application/json"})
    assert "larger than" in _error(huge, 413)["message"]
    assert _error(client.get("/v1/files/../../secret.png"), 404)


def test_metrics_count_requests_latency_and_batches(client: TestClient) -> None:
    client.post("/v1/images/generations", json={"model": "dcgan", "n": 2})
    client.post("/v1/images/generations", json={"model": "nope"})
    text = client.get("/metrics").text
    assert 'genzoo_requests_total{endpoint="images",model="dcgan",status="200"}' in text
    assert 'genzoo_request_seconds_bucket{endpoint="images",le="0.005",model="dcgan"}' in text
    assert 'genzoo_batch_size_sum{endpoint="images",model="dcgan"}' in text
    assert 'genzoo_requests_total{endpoint="images",model="(unknown)",status="404"}' in text


def test_sources_are_named_and_checked(runs: Path) -> None:
    assert source_name(str(runs / "vae")) == ("vae", str(runs / "vae"))
    assert source_name(f"small={runs / 'vae'}") == ("small", str(runs / "vae"))
    assert expand_sources([str(runs)]) == [str(runs / name) for name in ("dcgan", "ddpm", "gpt", "made", "vae")]
    registry = ModelRegistry()
    registry.add("vae", str(runs / "vae"))
    with pytest.raises(ConfigError, match="two models"):
        registry.add("vae", str(runs / "dcgan"))
    with pytest.raises(ConfigError, match="not allowed"):
        registry.add("../x", str(runs / "vae"))
    with pytest.raises(ConfigError, match="neither a run directory"):
        registry.add("ghost", str(runs / "ghost"))
    served = registry.models["vae"]
    assert not served.loaded and torch.is_tensor(served.get().sample(1))


def _gpt(client: TestClient) -> genzoo.GenerativeModel:
    return client.app.state.registry.models["gpt"].get()


def test_completions_are_the_library_s_text_with_finish_reasons_and_usage(client: TestClient) -> None:
    model = _gpt(client)
    body = {"model": "gpt", "prompt": "the cat", "max_tokens": 12, "temperature": 0.8, "seed": 3}
    answer = client.post("/v1/completions", json=body).json()
    expected = model.generate("the cat", max_new_tokens=12, temperature=0.8, seed=3)
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == expected
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer["usage"] == {"prompt_tokens": len(model.prompt_ids("the cat")), "completion_tokens": 12,
                               "total_tokens": len(model.prompt_ids("the cat")) + 12}
    stopped = client.post("/v1/completions", json={**body, "stop": expected[3:5]}).json()["choices"][0]
    assert stopped == {"index": 0, "text": expected[:3], "logprobs": None, "finish_reason": "stop"}
    two = client.post("/v1/completions", json={**body, "n": 2}).json()["choices"]
    assert [c["index"] for c in two] == [0, 1] and two[0]["text"] != two[1]["text"]
    echoed = client.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == "the cat" + expected


def _events(response: object) -> list[object]:
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_streamed_completions_and_chats_add_up_to_the_whole_answer(client: TestClient) -> None:
    body = {"model": "gpt", "prompt": "the dog", "max_tokens": 10, "seed": 1}
    whole = client.post("/v1/completions", json=body).json()
    chunks = _events(client.post("/v1/completions", json={**body, "stream": True,
                                                          "stream_options": {"include_usage": True}}))
    assert "".join(c["text"] for chunk in chunks for c in chunk["choices"]) == whole["choices"][0]["text"]
    assert [c["finish_reason"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]] == ["length"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    chat = {"model": "gpt", "messages": [{"role": "user", "content": "the bird"}], "max_tokens": 8, "seed": 2}
    answer = client.post("/v1/chat/completions", json=chat).json()
    content = answer["choices"][0]["message"]["content"]
    assert answer["object"] == "chat.completion" and answer["choices"][0]["message"]["role"] == "assistant"
    assert content == _gpt(client).generate("user: the bird\nassistant:", max_new_tokens=8, seed=2)
    streamed = _events(client.post("/v1/chat/completions", json={**chat, "stream": True}))
    assert streamed[0]["object"] == "chat.completion.chunk"
    assert streamed[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["delta"].get("content", "") for chunk in streamed for c in chunk["choices"]) == content


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": "vae", "prompt": "x"}, "cannot generate text"),
    ({"model": "gpt", "prompt": "x", "logprobs": 21}, "logprobs"),
    ({"model": "gpt", "prompt": "x", "presence_penalty": 0.5}, "presence_penalty"),
    ({"model": "gpt", "prompt": "x", "max_tokens": 5000}, "at most 1024"),
    ({"model": "gpt", "prompt": "x", "n": 99}, "at most 16"),
    ({"model": "gpt", "prompt": "x", "stop": [""]}, "stop"),
    ({"model": "gpt", "prompt": ["a", "b"]}, "one prompt"),
    ({"model": "gpt", "prompt": "x", "temperature": -1}, "temperature"),
    ({"model": "gpt", "prompt": "x", "timeout": 0}, "timeout"),
])
def test_bad_text_requests_get_one_clear_error(client: TestClient, body: dict, fragment: str) -> None:
    assert fragment in _error(client.post("/v1/completions", json=body), 400)["message"]


def test_the_openai_client_works_unchanged_against_a_live_server(runs: Path) -> None:
    openai = pytest.importorskip("openai")
    with live_server(ModelRegistry.from_sources([str(runs / "gpt")])) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        assert [m.id for m in client.models.list()] == ["gpt"]
        done = client.completions.create(model="gpt", prompt="the", max_tokens=6, seed=0)
        assert done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 6
        chat = client.chat.completions.create(model="gpt", messages=[{"role": "user", "content": "hi"}],
                                              max_tokens=5, seed=0)
        assert isinstance(chat.choices[0].message.content, str)
        pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="gpt", messages=[{"role": "user", "content": "hi"}], max_tokens=5, seed=0, stream=True)
            if c.choices]
        assert "".join(pieces) == chat.choices[0].message.content
        with pytest.raises(openai.NotFoundError):
            client.completions.create(model="nope", prompt="x")


@contextmanager
def live_server(registry: ModelRegistry, settings: ServeSettings | None = None) -> Iterator[str]:
    """A real uvicorn server on a free loopback port, in a thread, for the duration of the block."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(registry, settings), host="127.0.0.1", port=port, log_level="error")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_the_cli_refuses_to_expose_models_beyond_loopback(runs: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    refused = CliRunner().invoke(app, ["serve", str(runs / "vae"), "--host", "0.0.0.0", "--no-store"])
    assert refused.exit_code != 0 and "api_keys" in str(refused.exception)


def test_edits_inpaint_like_the_library_and_keep_known_pixels(client: TestClient) -> None:
    image = genzoo.load_dataset("digits").examples("test").x[0]
    mask = np.zeros((8, 8), dtype=np.uint8)
    mask[:, :4] = 255
    body = {"model": "ddpm", "image": _png_b64((image[0].numpy() * 255).round().astype(np.uint8)),
            "mask": _png_b64(mask), "seed": 5, "options": {"steps": 4}}
    answer = client.post("/v1/edits", json=body)
    assert answer.status_code == 200, answer.text
    result = np.asarray(Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"]))))
    original = (image[0].numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(result[:, 4:], original[:, 4:])  # black pixels of the mask are kept exactly
    model = client.app.state.registry.models["ddpm"].get()
    expected = genzoo.edit(model, torch.from_numpy(original / 255.0).float()[None], torch.from_numpy(mask > 0).float(),
                           seed=5, steps=4)
    assert np.array_equal(result, (expected[0, 0].numpy() * 255).round().astype(np.uint8))
    translated = client.post("/v1/edits", json={**body, "mask": None, "strength": 0.3})
    assert translated.status_code == 200, translated.text
    assert "cannot inpaint" in _error(client.post("/v1/edits", json={**body, "model": "vae"}), 400)["message"]
    assert "mask" in _error(client.post("/v1/edits", json={**body, "mask": "???"}), 400)["param"]


@pytest.fixture
def stored(runs: Path, tmp_path: Path) -> TestClient:
    settings = ServeSettings(store=f"sqlite:///{tmp_path / 'requests.db'}", dedupe=True, block_list=["parrot"])
    return TestClient(create_app(ModelRegistry.from_sources([str(runs / "gpt"), str(runs / "vae")]), settings),
                      raise_server_exceptions=False)


def test_every_request_is_stored_with_its_numbers_and_feedback(stored: TestClient, tmp_path: Path) -> None:
    store = stored.app.state.store
    body = {"model": "gpt", "prompt": "the cat", "max_tokens": 5, "seed": 4}
    answer = stored.post("/v1/completions", json=body).json()
    stored.post("/v1/images/generations", json={"model": "vae", "n": 2})
    stored.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    rows = {row["id"]: row for row in store.rows()}
    row = rows[answer["id"]]
    assert row["endpoint"] == "completions" and row["model"] == "gpt" and row["status"] == 200
    assert row["parameters"]["prompt"] == "the cat" and row["response"] == answer and row["synthetic"] is True
    assert (row["prompt_tokens"], row["completion_tokens"]) == (answer["usage"]["prompt_tokens"], 5)
    assert row["latency_s"] > 0 and row["api_key_id"] is None
    assert sorted((r["endpoint"], r["status"], r["samples"]) for r in rows.values() if r["endpoint"] != "completions"
                  or r["status"] != 200) == [("completions", 404, None), ("images", 200, 2)]
    assert stored.post("/v1/feedback", json={"id": answer["id"], "score": 4.5}).status_code == 200
    assert next(r for r in store.rows() if r["id"] == answer["id"])["quality"] == 4.5
    assert "no stored answer" in _error(stored.post("/v1/feedback", json={"id": "cmpl-x", "score": 1}), 404)["message"]
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


def test_identical_requests_are_answered_from_the_store(stored: TestClient) -> None:
    body = {"model": "gpt", "prompt": "a bird", "max_tokens": 6, "seed": 9}
    first = stored.post("/v1/completions", json=body).json()
    again = stored.post("/v1/completions", json=body).json()
    assert again == first
    last = stored.app.state.store.recent(1)[0]
    assert last["completion_tokens"] == 0 and last["response"] == first  # no tokens were generated for it
    other = stored.post("/v1/completions", json={**body, "seed": 10}).json()
    assert other["id"] != first["id"]


def test_block_list_refuses_prompts_and_cuts_completions(stored: TestClient) -> None:
    assert _error(stored.post("/v1/completions", json={"model": "gpt", "prompt": "a Parrot sat"}), 400)["code"] \
        == "content_filter"
    free = stored.post("/v1/completions", json={"model": "gpt", "prompt": "the", "max_tokens": 30, "seed": 0}).json()
    word = next(w for w in free["choices"][0]["text"].split() if w.isalpha())
    settings = ServeSettings(block_list=[word])
    guarded = TestClient(create_app(ModelRegistry.from_sources([str(stored.app.state.registry.models["gpt"].source)]),
                                    settings))
    body = {"model": "gpt", "prompt": "the", "max_tokens": 30, "seed": 0}
    cut = guarded.post("/v1/completions", json=body).json()["choices"][0]
    assert cut["finish_reason"] == "content_filter" and word.lower() not in cut["text"].lower().split()
    assert free["choices"][0]["text"].startswith(cut["text"])
    streamed = _events(guarded.post("/v1/completions", json={**body, "stream": True}))
    assert "".join(c["text"] for chunk in streamed for c in chunk["choices"]) == cut["text"]


def test_chats_are_stored_under_a_session_id(stored: TestClient) -> None:
    opening = [{"role": "user", "content": "hi"}]
    stored.post("/v1/chat/completions", json={"model": "gpt", "messages": opening, "max_tokens": 3})
    follow = [*opening, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "hi"}]
    stored.post("/v1/chat/completions", json={"model": "gpt", "messages": follow, "max_tokens": 3})
    stored.post("/v1/chat/completions", json={"model": "gpt", "messages": opening, "max_tokens": 3},
                headers={"X-Session-Id": "mine"})
    sessions = [r["session_id"] for r in stored.app.state.store.rows() if r["endpoint"] == "chat"]
    assert len(sessions) == 3 and sessions[0] == sessions[1] != sessions[2] == "mine"


def test_api_keys_and_rate_limits(runs: Path) -> None:
    from genzoo.serve.auth import APIKey, hash_key

    keys = [APIKey(id="alice", sha256=hash_key("secret-a"), requests_per_minute=2),
            APIKey(id="bob", sha256=hash_key("secret-b"))]
    client = TestClient(create_app(ModelRegistry.from_sources([str(runs / "vae")]), ServeSettings(api_keys=keys)))
    assert client.get("/health").status_code == 200  # health checks need no key
    assert _error(client.get("/v1/models"), 401)["code"] == "invalid_api_key"
    assert _error(client.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)["code"] \
        == "invalid_api_key"
    alice = {"Authorization": "Bearer secret-a"}
    assert [client.get("/v1/models", headers=alice).status_code for _ in range(2)] == [200, 200]
    throttled = client.get("/v1/models", headers=alice)
    assert _error(throttled, 429)["code"] == "rate_limit_exceeded"
    assert "retry in" in throttled.json()["error"]["message"]
    assert all(client.get("/v1/models", headers={"Authorization": "Bearer secret-b"}).status_code == 200
               for _ in range(5))  # bob has no limit, and alice's does not touch him


def test_keys_are_made_hashed_and_requests_exported(tmp_path: Path, runs: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app
    from genzoo.serve.auth import hash_key

    made = CliRunner().invoke(app, ["serve-key", "carol"])
    key = made.stdout.split("client): ")[1].split()[0]
    assert f"sha256: {hash_key(key)}" in made.stdout and "id: carol" in made.stdout
    url = f"sqlite:///{tmp_path / 'r.db'}"
    client = TestClient(create_app(ModelRegistry.from_sources([str(runs / "vae")]), ServeSettings(store=url)))
    client.post("/v1/images/generations", json={"model": "vae"})
    done = CliRunner().invoke(app, ["requests", "export", "--store", url, "--out", str(tmp_path / "r.jsonl")])
    assert done.exit_code == 0, done.output
    lines = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["endpoint"] == "images" and lines[0]["synthetic"] is True
    missing = CliRunner().invoke(app, ["requests", "export", "--store", f"sqlite:///{tmp_path / 'none.db'}",
                                       "--out", str(tmp_path / "x.jsonl")])
    assert missing.exit_code != 0 and "no request store" in str(missing.exception)


BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install -y chromium)")
def test_the_playground_generates_text_and_images_in_headless_chromium(runs: Path, tmp_path: Path) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    registry = ModelRegistry.from_sources([str(runs / "gpt"), f"gpt-b={runs / 'gpt'}", str(runs / "vae")])
    cascade = {"name": "duo", "steps": [{"model": "gpt", "threshold": 1e9}, {"model": "gpt-b"}]}  # always escalates
    settings = ServeSettings(store=f"sqlite:///{tmp_path / 'requests.db'}", cascades=[cascade])
    with live_server(registry, settings) as url, sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelectorAll('#model option').length === 4")
            page.select_option("#model", "gpt")
            page.fill("#prompt", "the cat")
            page.fill("#max_tokens", "12")
            page.click("#generate-text")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('answered by gpt')")
            expected = registry.models["gpt"].get().generate("the cat", max_new_tokens=12, temperature=0.8, seed=0)
            assert page.inner_text("#output") == "the cat" + expected
            page.select_option("#model", "duo")
            assert "cascade of gpt, gpt-b" in page.inner_text("#about")
            page.click("#generate-text")
            page.wait_for_function("document.getElementById('status').textContent.startsWith('answered by gpt-b')")
            assert "cascade duo: gpt ↑ → gpt-b" in page.inner_text("#status")
            assert page.inner_text("#output") == "the cat" + expected  # gpt-b is the same run
            page.select_option("#model", "vae")
            assert page.is_visible("#image-panel") and not page.is_visible("#text-panel")
            page.fill("#n", "4")
            page.click("#generate-images")
            page.wait_for_function("document.querySelectorAll('#images img').length === 4")
            page.wait_for_function("document.querySelectorAll('#requests tbody tr').length === 3")
            assert "images" in page.inner_text("#requests") and "completions" in page.inner_text("#requests")
            assert page.inner_text("#error") == ""
        finally:
            browser.close()


def test_concurrent_score_requests_are_batched_and_answered_exactly(client: TestClient) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = genzoo.load_dataset("digits").examples("test").x[:24]
    single = [client.post("/v1/score", json={"model": "made", "input": x[i : i + 3].tolist()}).json()
              for i in range(0, 24, 3)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda i: client.post("/v1/score", json={"model": "made",
                                                                         "input": x[i : i + 3].tolist()}).json(),
                                 range(0, 24, 3)))
    assert [d["score"] for r in together for d in r["data"]] == \
        pytest.approx([d["score"] for r in single for d in r["data"]], rel=1e-5)
    text = client.get("/metrics").text
    batches = float(text.split('genzoo_batch_size_count{endpoint="score",model="made"} ')[1].split()[0])
    examples = float(text.split('genzoo_batch_size_sum{endpoint="score",model="made"} ')[1].split()[0])
    assert examples / batches > 3  # some calls carried more than one request's 3 examples
    # the VAE's bound draws noise per call: it is scored request by request, so values never depend on neighbours
    stochastic = [client.post("/v1/score", json={"model": "vae", "input": x[:3].tolist()}).json() for _ in range(2)]
    assert stochastic[0]["data"] == stochastic[1]["data"]


def test_the_batcher_keeps_shapes_apart_and_passes_errors_to_every_caller() -> None:
    import threading

    from genzoo.serve.batching import Batcher

    sizes: list[int] = []
    batcher = Batcher(lambda x: x.flatten(1).sum(1), max_batch=64, max_wait_s=0.05, on_batch=sizes.append)
    inputs = [torch.full((2, 3), float(i)) for i in range(4)] + [torch.ones(1, 5)]
    results: dict[int, torch.Tensor] = {}
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher(inputs[i]))) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, x in enumerate(inputs):
        assert torch.equal(results[i], x.flatten(1).sum(1))
    assert sum(sizes) == 9 and len(sizes) < 5
    failing = Batcher(lambda x: (_ for _ in ()).throw(ValueError("bad rows")))
    with pytest.raises(ValueError, match="bad rows"):
        failing(torch.zeros(1, 2))


def test_constrained_completions_always_satisfy_their_constraint(client: TestClient) -> None:
    import re

    base = {"model": "gpt", "prompt": "the ", "max_tokens": 20, "temperature": 1.5}
    for seed in range(4):
        choice = client.post("/v1/completions", json={**base, "seed": seed, "choice": ["cat sat", "dog ran"]}).json()
        assert choice["choices"][0]["text"] in {"cat sat", "dog ran"}
        assert choice["choices"][0]["finish_reason"] == "stop"
        regex = client.post("/v1/completions", json={**base, "seed": seed, "regex": "(cat|dog) (sat|ran)"}).json()
        assert re.fullmatch("(cat|dog) (sat|ran)", regex["choices"][0]["text"])
    streamed = _events(client.post("/v1/completions", json={**base, "seed": 1, "regex": "(cat|dog) (sat|ran)",
                                                            "stream": True}))
    text = "".join(c["text"] for chunk in streamed for c in chunk["choices"])
    assert text == client.post("/v1/completions", json={**base, "seed": 1, "regex": "(cat|dog) (sat|ran)"}
                               ).json()["choices"][0]["text"]
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "integer"}}}
    refused = client.post("/v1/completions", json={**base, "response_format": schema})
    assert _error(refused, 400)["message"]  # the char tokenizer of this corpus has no digits: a clear refusal
    both = client.post("/v1/completions", json={**base, "regex": "a", "choice": ["b"]})
    assert "one constraint" in _error(both, 400)["message"]
    assert "json_schema" in _error(client.post("/v1/completions", json={**base, "response_format": {
        "type": "json_object"}}), 400)["message"]
