"""`rag` in the chat endpoint: the model reads the retrieved passages, the answer lists them and its citations."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

import genzoo
from genzoo.retrieval import build_index, build_prompt
from genzoo.serve import ModelRegistry, ServeSettings, create_app
from test_serve import _error, _events

pytest.importorskip("faiss")
pytest.importorskip("sentence_transformers")

FACTS = {
    "veloria.txt": "The capital of Veloria is Mirth. Veloria exports glass.",
    "zarnak.txt": "Zarnak Industries was founded in 1873 by Oda Fenn.",
    "quillon.txt": "Quillon is a river that floods every spring.",
}
QUESTION = "Who founded Zarnak Industries?"


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    docs = tmp_path_factory.mktemp("docs")
    for name, text in FACTS.items():
        (docs / name).write_text(text)
    out = tmp_path_factory.mktemp("rag") / "index"
    build_index(docs, out, chunk_size=200, overlap=20)
    return out


@pytest.fixture(scope="module")
def reader(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny byte-level gpt: it can read any prompt (what it answers does not matter here)."""
    corpus = tmp_path_factory.mktemp("text") / "corpus.txt"
    corpus.write_text(" ".join(FACTS.values()) * 12)
    out = tmp_path_factory.mktemp("runs") / "gpt"
    genzoo.train("gpt", f"text:{corpus}#context=32,tokenizer=byte", steps=2, out=out, seed=0,
                 overrides={"layers": 1, "width": 16, "heads": 2}, progress=False, eval_every=10_000,
                 sample_every=10_000)
    return out


@pytest.fixture(scope="module")
def client(reader: Path, index_dir: Path) -> TestClient:
    registry = ModelRegistry.from_sources([str(reader)])
    settings = ServeSettings(indexes={"facts": index_dir})
    return TestClient(create_app(registry, settings), raise_server_exceptions=False)


def _chat(client: TestClient, **extra: object) -> object:
    return client.post("/v1/chat/completions", json={
        "model": "gpt", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 4, "seed": 0, **extra})


def test_the_model_reads_the_rag_prompt_and_the_answer_lists_the_passages(client: TestClient, reader: Path,
                                                                          index_dir: Path) -> None:
    response = _chat(client, rag={"index": "facts", "k": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    rag = body["choices"][0]["rag"]
    expected = genzoo.Index.load(index_dir).search(QUESTION, k=2)
    assert [p["text"] for p in rag["passages"]] == [hit.text for hit in expected]
    assert "Oda Fenn" in rag["passages"][0]["text"]  # hybrid retrieval puts the answer's passage first
    assert [p["number"] for p in rag["passages"]] == [1, 2]
    assert rag["text"] == body["choices"][0]["message"]["content"]
    # the plain text model read exactly the RAG prompt (passages, question), not a chat transcript
    prompt = build_prompt(QUESTION, expected)
    assert body["usage"]["prompt_tokens"] == len(genzoo.load(reader).prompt_ids(prompt))
    plain = _chat(client).json()
    assert "rag" not in plain["choices"][0] and plain["usage"]["prompt_tokens"] < body["usage"]["prompt_tokens"]


def test_a_streamed_rag_answer_sends_the_passages_first(client: TestClient) -> None:
    chunks = _events(_chat(client, rag={"index": "facts", "k": 1}, stream=True))
    assert len(chunks[0]["rag"]["passages"]) == 1 and "Oda Fenn" in chunks[0]["rag"]["passages"][0]["text"]


def test_unknown_index_and_bad_rag_fields_are_clear_errors(client: TestClient) -> None:
    error = _error(_chat(client, rag={"index": "nope"}), 404)
    assert error["param"] == "rag.index" and "facts" in error["message"]
    _error(_chat(client, rag={"index": "facts", "k": 0}), 400)
    _error(_chat(client, rag={"index": "facts", "extra": 1}), 400)
