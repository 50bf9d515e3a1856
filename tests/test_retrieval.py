"""Retrieval and RAG: exact vector search, BM25, rank fusion, chunking, de-duplication, the index files, prompts and
citations, and the fictional-facts task.

Most tests use a bag-of-words test encoder (hashed words, unit length: texts with the same words have cosine 1), so
only the tests about meaning load the real sentence encoder, once for the module.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from genzoo.contract import Capability
from genzoo.errors import DataError, GenzooError
from genzoo.retrieval import (
    Chunk,
    Hit,
    Index,
    augment_messages,
    build_index,
    build_prompt,
    parse_citations,
    rag_generate,
    read_documents,
    reciprocal_rank_fusion,
    write_index,
)
from genzoo.retrieval.chunking import chunk_document, chunk_spans
from genzoo.retrieval.facts import fact_world, reader_examples
from genzoo.retrieval.index import keyword_query, near_duplicates
from genzoo.retrieval.rag import strip_citations


class BagOfWords:
    """Test encoder: each word hashed to one of ``dim`` axes, counts normalised to unit length."""

    def __init__(self, dim: int = 64, name: str = "bag-of-words") -> None:
        self.dim, self.name = dim, name

    def encode(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % self.dim] += 1.0
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)


DOCS = {
    "fruit.txt": "Apples grow on trees in cold orchards. Pears ripen late in the autumn.",
    "sea.md": "The harbour of Quillon shelters forty fishing boats. Storms close it in winter.",
    "notes.jsonl": '{"text": "Kettles boil water quickly on a gas stove."}\n{"text": "Owls hunt mice at night."}\n',
}


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name, text in DOCS.items():
        (folder / name).write_text(text, encoding="utf-8")
    (folder / "ignored.bin").write_bytes(b"\x00\x01")
    return folder


@pytest.fixture
def bow_index(docs: Path, tmp_path: Path) -> Path:
    build_index(docs, tmp_path / "index", chunk_size=60, overlap=10, encoder=BagOfWords())
    return tmp_path / "index"


@pytest.fixture(scope="module")
def minilm():
    from genzoo.embed import SentenceEncoder

    encoder = SentenceEncoder()
    encoder.encode(["warm up"])  # the ~10 s load, once for the module
    return encoder


# ----- vector search ----------------------------------------------------------------------------------------------
def test_flat_index_returns_the_brute_force_nearest_neighbours_and_survives_save_load(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(300, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chunks = [Chunk(f"chunk {i}", "random", i, i + 1) for i in range(300)]
    write_index(tmp_path / "ix", chunks, vectors, "bag-of-words")
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    exact = queries @ vectors.T
    expected_ids = np.argsort(-exact, axis=1)[:, :7]
    first = Index.load(tmp_path / "ix", encoder=BagOfWords(16))
    scores, ids = first.search_vectors(queries, 7)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, expected_ids, 1), rtol=1e-5, atol=1e-6)
    again_scores, again_ids = Index.load(tmp_path / "ix", encoder=BagOfWords(16)).search_vectors(queries, 7)
    np.testing.assert_array_equal(again_ids, ids)
    np.testing.assert_array_equal(again_scores, scores)
    assert first.chunk(int(ids[0, 0]))[1] == f"chunk {ids[0, 0]}"  # FAISS id i is SQLite row i


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_find_the_exact_neighbour_of_a_stored_vector(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(400, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    write_index(tmp_path / kind, [Chunk(str(i), "r", 0, 1) for i in range(400)], vectors, "bag-of-words", kind=kind)
    index = Index.load(tmp_path / kind, encoder=BagOfWords(16))
    assert json.loads((tmp_path / kind / "manifest.json").read_text())["index"]["kind"] == kind
    _, ids = index.search_vectors(vectors[:50], 1)
    assert (ids[:, 0] == np.arange(50)).mean() >= 0.95


def test_save_load_round_trip_returns_identical_hits_in_every_mode(bow_index: Path) -> None:
    questions = ["Where do apples grow?", "Quillon harbour boats", "what hunts mice", "no match here xyzzy"]
    for mode in ("vector", "keyword", "hybrid"):
        first = [Index.load(bow_index, encoder=BagOfWords()).search(q, k=3, mode=mode) for q in questions]
        second = [Index.load(bow_index, encoder=BagOfWords()).search(q, k=3, mode=mode) for q in questions]
        assert first == second
    hits = Index.load(bow_index, encoder=BagOfWords()).search("Quillon", k=1, mode="keyword")
    assert hits[0].source == "sea.md" and "Quillon" in hits[0].text
    assert DOCS["sea.md"][hits[0].start : hits[0].end] == hits[0].text  # offsets point into the document


# ----- keyword search and fusion ----------------------------------------------------------------------------------
def test_reciprocal_rank_fusion_on_a_hand_made_example() -> None:
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1, 4]])
    assert [item for item, _ in fused] == [1, 3, 2, 4]
    scores = dict(fused)
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62, abs=1e-15)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61, abs=1e-15)
    assert scores[2] == pytest.approx(1 / 62, abs=1e-15)
    assert scores[4] == pytest.approx(1 / 63, abs=1e-15)


def test_hybrid_scores_are_the_rrf_of_the_two_rankings(bow_index: Path) -> None:
    index = Index.load(bow_index, encoder=BagOfWords())
    hits = index.search("owls hunt at night near the harbour", k=4, mode="hybrid")
    for hit in hits:
        expected = sum(1 / (60 + r) for r in (hit.vector_rank, hit.keyword_rank) if r is not None)
        assert hit.score == pytest.approx(expected, abs=1e-12)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    vector = index.search("owls hunt at night near the harbour", k=4, mode="vector")
    assert [h.vector_rank for h in vector] == [1, 2, 3, 4]
    assert vector[0].score >= vector[1].score


def test_keyword_query_quotes_words_so_fts_syntax_cannot_leak_in(bow_index: Path) -> None:
    assert keyword_query('What is "AND" NEAR(x)?') == '"what" OR "is" OR "and" OR "near" OR "x"'
    assert Index.load(bow_index, encoder=BagOfWords()).search('"OR" * ( AND', k=2, mode="keyword") == []


def test_bm25_finds_an_exact_rare_name_that_vector_search_misses(minilm, tmp_path: Path) -> None:
    world = fact_world(seed=5, entities=30)
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "gazetteer.txt").write_text(" ".join(world.documents.values()))  # ~5 entities a chunk
    build_index(tmp_path / "docs", tmp_path / "ix", chunk_size=400, overlap=80, encoder=minilm)
    index = Index.load(tmp_path / "ix", encoder=minilm)
    questions = [qa.question for qa in world.questions]
    found = {mode: [any(qa.fact in h.text for h in hits) for qa, hits in
                    zip(world.questions, index.search_batch(questions, k=1, mode=mode), strict=True)]
             for mode in ("vector", "keyword", "hybrid")}
    # a rare name is one word among many in a chunk's embedding, but an exact, rare term to BM25
    assert sum(found["keyword"]) >= sum(found["vector"]) + 10
    assert sum(found["hybrid"]) > sum(found["vector"])
    missed = found["vector"].index(False)
    assert found["keyword"][missed]
    assert index.search_batch(questions[:3], k=2) == [index.search(q, k=2) for q in questions[:3]]


# ----- chunking and documents -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "overlap"), [(50, 0), (50, 10), (37, 36), (10, 3), (1, 0)])
def test_chunks_cover_the_text_with_exactly_the_requested_overlap(size: int, overlap: int) -> None:
    rng = np.random.default_rng(size)
    words = ["".join(rng.choice(list("abcdefg"), size=int(n))) for n in rng.integers(1, 12, size=60)]
    text = " ".join(words) + " " + "x" * 75  # ends with a word longer than any chunk
    spans = chunk_spans(text, size, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    for (_, e1), (s2, e2) in itertools.pairwise(spans):
        assert s2 == e1 - overlap  # consecutive chunks share exactly `overlap` characters: nothing lost
        assert e2 > e1
    assert all(0 < e - s <= size for s, e in spans)
    cut_inside_words = [e for s, e in spans[:-1] if e - s < size]
    assert all(text[e - 1] == " " for e in cut_inside_words)  # shortened chunks end after a space
    chunks = chunk_document(text, "doc", size, overlap)
    assert all(c.text == text[c.start : c.end] for c in chunks)


def test_chunking_rejects_bad_sizes_and_reads_every_document_kind(docs: Path) -> None:
    with pytest.raises(DataError, match="overlap"):
        chunk_spans("some text", 10, 10)
    assert read_documents(docs) == {"fruit.txt": DOCS["fruit.txt"], "sea.md": DOCS["sea.md"],
                                    "notes.jsonl:1": "Kettles boil water quickly on a gas stove.",
                                    "notes.jsonl:2": "Owls hunt mice at night."}
    (docs / "bad.jsonl").write_text('{"body": "x"}\n')
    with pytest.raises(DataError, match=r"bad.jsonl:1.*'text'"):
        read_documents(docs)


# ----- de-duplication ---------------------------------------------------------------------------------------------
def test_near_duplicate_chunks_are_removed_and_distinct_ones_kept(tmp_path: Path) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    (folder / "a.txt").write_text("The capital of Veloria is Mirth.")
    (folder / "b.txt").write_text("the capital of Veloria is Mirth!")  # the same words: cosine 1
    (folder / "c.txt").write_text("Zarnak Industries was founded in 1873.")
    (folder / "d.txt").write_text("The capital of Veloria is Kesh.")  # 5 of 6 words shared: cosine 5/6
    report = build_index(folder, tmp_path / "ix", dedup_threshold=0.9, encoder=BagOfWords(4096))
    assert (report.chunks, report.duplicates, report.kept) == (4, 1, 3)
    manifest = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert manifest["counts"] == {"documents": 4, "chunks_read": 4, "duplicates_removed": 1}
    index = Index.load(tmp_path / "ix", encoder=BagOfWords(4096))
    assert sorted(index.chunk(i)[2] for i in range(len(index))) == ["a.txt", "c.txt", "d.txt"]  # the first is kept
    assert build_index(folder, tmp_path / "all", dedup_threshold=None, encoder=BagOfWords(4096)).kept == 4
    assert build_index(folder, tmp_path / "low", dedup_threshold=0.8, encoder=BagOfWords(4096)).kept == 2


def test_near_duplicates_compares_with_kept_rows_only() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    mid = np.array([0.75, np.sqrt(1 - 0.75**2)], np.float32)  # cosine exactly 0.75 with a, 0.66 with b
    assert near_duplicates(np.stack([a, mid, b, a]), 0.75).tolist() == [1, 3]  # at the threshold: a duplicate
    assert near_duplicates(np.stack([a, mid, b, a]), 0.76).tolist() == [3]


# ----- index files ------------------------------------------------------------------------------------------------
def test_missing_or_corrupt_index_files_give_one_clear_error(bow_index: Path, tmp_path: Path) -> None:
    with pytest.raises(GenzooError, match="not a genzoo index"):
        Index.load(tmp_path / "nowhere", encoder=BagOfWords())
    vectors = bow_index / "vectors.faiss"
    good = vectors.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 0xFF
    vectors.write_bytes(bytes(data))
    with pytest.raises(GenzooError, match=r"vectors.faiss is corrupt"):
        Index.load(bow_index, encoder=BagOfWords())
    vectors.write_bytes(good)
    (bow_index / "chunks.sqlite").unlink()
    with pytest.raises(GenzooError, match=r"missing index file chunks.sqlite"):
        Index.load(bow_index, encoder=BagOfWords())
    (bow_index / "manifest.json").write_text("{not json")
    with pytest.raises(GenzooError, match=r"manifest.json is corrupt"):
        Index.load(bow_index, encoder=BagOfWords())
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.txt").write_text("a user's file")
    with pytest.raises(GenzooError, match="not an index"):
        write_index(tmp_path / "mine", [Chunk("x", "s", 0, 1)], np.ones((1, 4), np.float32), "bag-of-words")


def test_an_index_refuses_another_encoder(bow_index: Path) -> None:
    with pytest.raises(GenzooError, match=r"built with text encoder 'bag-of-words'.*'other'"):
        Index.load(bow_index, encoder=BagOfWords(name="other"))
    with pytest.raises(GenzooError, match="all-MiniLM-L6-v2"):
        Index.load(bow_index)  # the default encoder is not the one it was built with
    same_name_other_dim = Index.load(bow_index, encoder=BagOfWords(dim=32))
    with pytest.raises(GenzooError, match=r"64-dimensional.*32"):
        same_name_other_dim.search("apples", mode="vector")


# ----- RAG --------------------------------------------------------------------------------------------------------
class Copier:
    """A stand-in text model: answers with the first word of passage 2, citing [2] and [9]."""

    capabilities = frozenset({Capability.GENERATE_TEXT})

    def __init__(self) -> None:
        self.prompts: list[str] = []

    def require(self, capability: Capability) -> None:
        assert capability in self.capabilities

    def generate(self, prompt: str, **options: object) -> str:
        self.prompts.append(prompt)
        self.options = options
        passage = re.search(r"^\[2\] (.*)$", prompt, re.M).group(1)
        return " " + passage.split()[0] + " [2] [9]"


def test_rag_prompt_holds_the_retrieved_chunks_and_the_answer_citations_are_parsed(bow_index: Path) -> None:
    index = Index.load(bow_index, encoder=BagOfWords())
    model = Copier()
    answer = rag_generate(model, index, "how many boats shelter in the harbour of Quillon?", k=3)
    prompt = model.prompts[0]
    assert answer.prompt == prompt and len(answer.passages) == 3
    assert answer.passages == index.search("how many boats shelter in the harbour of Quillon?", k=3)
    lines = prompt.split("\n")
    assert lines[1:4] == [f"[{n}] {' '.join(h.text.split())}" for n, h in enumerate(answer.passages, 1)]
    assert lines[-2:] == ["Question: how many boats shelter in the harbour of Quillon?", "Answer:"]
    assert answer.cited == [2] and answer.invalid_citations == [9]
    assert answer.cited_passages == [answer.passages[1]]
    assert answer.answer == answer.text.split(" [")[0]
    assert model.options["stop"] == ("\n",) and model.options["max_new_tokens"] == 64
    assert answer.to_dict()["passages"][1]["number"] == 2


def test_citation_parsing_and_stripping() -> None:
    assert parse_citations("Mirth [2], see also [1] and [2] and [0] [12]", 3) == ([2, 1], [0, 12])
    assert parse_citations("no citations", 3) == ([], [])
    assert strip_citations("Oda Fenn [1][3].") == "Oda Fenn ."
    hit = Hit(0, "a\n b", "s", 0, 4, 1.0)
    assert build_prompt("q?", [hit, "c"]).split("\n")[1:3] == ["[1] a b", "[2] c"]


def test_augment_messages_rewrites_the_last_user_message_only(bow_index: Path) -> None:
    index = Index.load(bow_index, encoder=BagOfWords())
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "old"},
                {"role": "assistant", "content": "ok"}, {"role": "user", "content": "What do owls hunt?"}]
    augmented, passages = augment_messages(messages, index, k=2)
    assert augmented[:3] == messages[:3] and len(passages) == 2
    assert augmented[3] == {"role": "user", "content": build_prompt("What do owls hunt?", passages)}
    with pytest.raises(GenzooError, match="user message"):
        augment_messages([{"role": "system", "content": "x"}], index)


def test_index_cli_builds_and_queries(docs: Path, tmp_path: Path, minilm) -> None:
    from genzoo.cli.app import app

    runner = CliRunner()
    built = runner.invoke(app, ["index", "build", str(docs), "--out", str(tmp_path / "ix"), "--chunk-size", "60",
                                       "--overlap", "10"])
    assert built.exit_code == 0, built.output
    assert "4 documents" in built.output and "indexed (flat)" in built.output
    queried = runner.invoke(app, ["index", "query", str(tmp_path / "ix"), "Quillon", "-k", "2", "--json"])
    assert queried.exit_code == 0, queried.output
    hits = json.loads(queried.output)
    assert len(hits) == 2 and hits[0]["source"] == "sea.md" and hits[0]["keyword_rank"] == 1


# ----- the fictional-facts task -----------------------------------------------------------------------------------
def test_fact_worlds_are_deterministic_answerable_and_disjoint() -> None:
    world = fact_world(seed=3, entities=30)
    assert fact_world(seed=3, entities=30) == world
    assert len(world.documents) == 30 and len(world.questions) == 60
    for qa in world.questions:
        assert qa.answer in world.documents[qa.source]
    other = fact_world(seed=4, entities=30, avoid=world.names)
    assert not world.names & other.names
    assert not any(name in text for name in world.names for text in other.documents.values() if len(name) > 3)


def test_reader_examples_cite_the_passage_that_states_the_answer() -> None:
    world = fact_world(seed=3, entities=30)
    for (prompt, target), qa in zip(reader_examples(world, seed=0), world.questions, strict=True):
        answer, number = re.fullmatch(r"(.*) \[(\d)\]", target).groups()
        assert answer == qa.answer
        passage = re.search(rf"^\[{number}\] (.*)$", prompt, re.M).group(1)
        assert passage in world.documents[qa.source] and qa.answer in passage
        assert prompt.endswith(f"Question: {qa.question}\nAnswer:")
        assert 1 <= len(re.findall(r"^\[\d\] ", prompt, re.M)) <= 2


def test_facts_splits_keep_test_entities_out_of_training() -> None:
    from genzoo.data.facts import facts_splits

    splits = facts_splits(entities=60, seed=11)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [96, 12, 12]
    asked = {s: {re.search(r"Question: (.*)", p).group(1) for p, _ in splits[s]} for s in splits}
    assert not asked["train"] & asked["test"] and not asked["train"] & asked["val"]
