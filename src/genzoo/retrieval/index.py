"""A hybrid retrieval index on disk: FAISS vectors + SQLite chunk texts with an FTS5 (BM25) keyword table.

Building (:func:`build_index`): documents are cut into overlapping character chunks (:mod:`.chunking`), embedded by
the shared sentence encoder (unit vectors, so cosine similarity is an inner product), and near-duplicate chunks are
dropped greedily in reading order: a chunk whose cosine similarity to an already kept chunk is at least the
threshold is not kept (:func:`near_duplicates`). An index folder holds

* ``vectors.faiss``: the kept chunks' vectors, ``faiss.write_index`` format (no pickle). ``flat`` (exact inner
  product, the default), ``hnsw`` (a graph, approximate, for large corpora) or ``ivf`` (k-means cells; ``nprobe`` of
  them are searched);
* ``chunks.sqlite``: the chunk texts with their source and character offsets (row id = FAISS id) and an FTS5 table
  over the texts; SQLite's own ``bm25()`` ranks keyword matches. FTS5 ships inside Python's sqlite3, so texts,
  metadata and the keyword index live in one file updated together (``bm25s`` would be a second index to keep in
  step with the database);
* ``manifest.json``: encoder name and dimension, chunking, counts, versions and each file's SHA-256, checked on load
  (a corrupt or missing file, or an index built by another encoder, is one clear error).

Searching: ``vector`` ranks by cosine similarity, ``keyword`` by BM25 over the question's words (any of them may
match), ``hybrid`` fuses the two rankings by reciprocal rank fusion (Cormack et al. 2009):

    RRF(d) = sum over rankings r containing d of 1 / (60 + rank_r(d)),   ranks from 1,

over each ranking's top ``max(k, 50)``; a chunk found by both rankers beats one found by a single ranker at a similar
rank, and the constant 60 keeps one first place from outweighing agreement. Exact names and numbers, which embeddings
blur, are what the keyword side contributes.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from genzoo._version import __version__
from genzoo.errors import GenzooError
from genzoo.io import atomic_write_text, replace_dir_atomically
from genzoo.retrieval.chunking import Chunk, chunk_document, read_documents

MANIFEST, VECTORS, DATABASE = "manifest.json", "vectors.faiss", "chunks.sqlite"
FORMAT = 1
RRF_K = 60
#: candidates each ranker hands to the fusion (at least k)
FUSION_DEPTH = 50
Mode = Literal["hybrid", "vector", "keyword"]
IndexKind = Literal["flat", "hnsw", "ivf"]
MODES: tuple[str, ...] = ("hybrid", "vector", "keyword")


class Encoder(Protocol):
    """What the index needs of a text encoder (:class:`genzoo.embed.SentenceEncoder`)."""

    name: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


def _faiss() -> Any:
    try:
        import faiss
    except ImportError as err:
        raise GenzooError('faiss is not installed: pip install -e ".[multimodal]"') from err
    return faiss


def default_encoder() -> Encoder:
    from genzoo.embed import SentenceEncoder

    return SentenceEncoder()


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk: its id, text and origin, its score under the mode searched, and its rank in each ranker
    (None when that ranker did not return it)."""

    id: int
    text: str
    source: str
    start: int
    end: int
    score: float
    vector_rank: int | None = None
    keyword_rank: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class BuildReport:
    """What a build read, kept and dropped, and how long each part took."""

    documents: int
    chunks: int
    duplicates: int
    kept: int
    embed_seconds: float
    total_seconds: float

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / max(self.total_seconds, 1e-9)


# ----- pieces ---------------------------------------------------------------------------------------------------
def near_duplicates(vectors: np.ndarray, threshold: float) -> np.ndarray:
    """Indices of the rows to drop: row i is dropped when its inner product with an earlier kept row >= threshold."""
    faiss = _faiss()
    kept_index = faiss.IndexFlatIP(vectors.shape[1])
    dropped: list[int] = []
    for i, vector in enumerate(vectors):
        row = vector[None]
        if kept_index.ntotal and kept_index.search(row, 1)[0][0, 0] >= threshold:
            dropped.append(i)
        else:
            kept_index.add(row)
    return np.asarray(dropped, dtype=np.int64)


def reciprocal_rank_fusion(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Ids with their fused score sum 1 / (k + rank), best first (ties keep first-seen order)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def keyword_query(text: str) -> str:
    """An FTS5 query matching any word of ``text`` (each word quoted, so no FTS5 syntax leaks in)."""
    words = dict.fromkeys(re.findall(r"\w+", text.lower()))
    return " OR ".join(f'"{word}"' for word in words)


def _vector_index(vectors: np.ndarray, kind: IndexKind) -> Any:
    faiss = _faiss()
    dim = vectors.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    elif kind == "ivf":
        cells = max(1, int(np.sqrt(len(vectors))))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        index.nprobe = min(cells, 8)
    else:
        raise GenzooError(f"unknown index kind '{kind}' (known: flat, hnsw, ivf)")
    index.add(vectors)
    return index


def _write_database(path: Path, chunks: list[Chunk]) -> None:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE chunks (id INTEGER PRIMARY KEY, text TEXT, source TEXT, start INTEGER, end INTEGER)")
        db.executemany("INSERT INTO chunks VALUES (?, ?, ?, ?, ?)",
                       [(i, c.text, c.source, c.start, c.end) for i, c in enumerate(chunks)])
        db.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id')")
        db.execute("INSERT INTO chunks_fts (rowid, text) SELECT id, text FROM chunks")
    db.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----- building -------------------------------------------------------------------------------------------------
def write_index(out: str | Path, chunks: list[Chunk], vectors: np.ndarray, encoder_name: str, *,
                kind: IndexKind = "flat", extra: dict[str, Any] | None = None) -> Path:
    """Write chunks and their unit vectors as an index folder (replacing an earlier index there)."""
    if len(chunks) != len(vectors) or not len(chunks):
        raise GenzooError(f"an index needs one vector per chunk and at least one chunk ({len(chunks)} chunks, "
                          f"{len(vectors)} vectors)")
    target = Path(out)
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise GenzooError(f"{target}: a non-empty folder that is not an index; choose a new --out")
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    faiss = _faiss()

    def fill(folder: Path) -> None:
        faiss.write_index(_vector_index(vectors, kind), str(folder / VECTORS))
        _write_database(folder / DATABASE, chunks)
        manifest = {"format": FORMAT, "encoder": {"name": encoder_name, "dim": int(vectors.shape[1])},
                    "index": {"kind": kind, "metric": "inner_product"}, "chunks": len(chunks), **(extra or {}),
                    "versions": {"genzoo": __version__, "faiss": faiss.__version__, "sqlite": sqlite3.sqlite_version},
                    "files": {name: _sha256(folder / name) for name in (VECTORS, DATABASE)}}
        atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2))

    replace_dir_atomically(target, fill)
    return target


def build_index(docs: str | Path, out: str | Path, *, chunk_size: int = 400, overlap: int = 80,
                dedup_threshold: float | None = 0.95, kind: IndexKind = "flat", encoder: Encoder | None = None,
                field: str = "text") -> BuildReport:
    """Chunk, embed, de-duplicate and index every document under ``docs`` into the folder ``out``.

    ``dedup_threshold`` None keeps every chunk. ``field`` names the text field of ``.jsonl`` documents.
    """
    started = time.perf_counter()
    encoder = encoder or default_encoder()
    documents = read_documents(docs, field)
    chunks = [c for source, text in documents.items() for c in chunk_document(text, source, chunk_size, overlap)]
    if not chunks:
        raise GenzooError(f"{docs}: the documents hold no text to index")
    embed_started = time.perf_counter()
    vectors = encoder.encode([c.text for c in chunks])
    embed_seconds = time.perf_counter() - embed_started
    dropped = near_duplicates(vectors, dedup_threshold) if dedup_threshold is not None else np.zeros(0, np.int64)
    keep = np.setdiff1d(np.arange(len(chunks)), dropped)
    counts = {"documents": len(documents), "chunks_read": len(chunks), "duplicates_removed": len(dropped)}
    write_index(out, [chunks[i] for i in keep], vectors[keep], encoder.name, kind=kind,
                extra={"chunking": {"unit": "characters", "size": chunk_size, "overlap": overlap},
                       "dedup_threshold": dedup_threshold, "counts": counts})
    return BuildReport(len(documents), len(chunks), len(dropped), len(keep), embed_seconds,
                       time.perf_counter() - started)


# ----- loading and searching ------------------------------------------------------------------------------------
class Index:
    """A loaded index folder: ``search(question, k, mode)`` returns ranked :class:`Hit` objects."""

    def __init__(self, path: Path, manifest: dict[str, Any], vectors: Any, db: sqlite3.Connection,
                 encoder: Encoder | None) -> None:
        self.path, self.manifest, self.vectors, self.db = path, manifest, vectors, db
        self._encoder = encoder

    @classmethod
    def load(cls, path: str | Path, encoder: Encoder | None = None) -> Index:
        """Open an index folder, checking its files against the manifest and ``encoder`` (default: the shared
        sentence encoder, loaded at the first vector search) against the encoder it was built with."""
        folder = Path(path)
        manifest = _read_manifest(folder)
        built_with = manifest["encoder"]["name"]
        name = encoder.name if encoder is not None else _default_encoder_name()
        if name != built_with:
            raise GenzooError(f"{folder}: built with text encoder '{built_with}', but the query encoder is '{name}'; "
                              "query with the same encoder or rebuild the index")
        for file, digest in manifest["files"].items():
            if not (folder / file).is_file():
                raise GenzooError(f"{folder}: missing index file {file}; rebuild the index (genzoo index build)")
            if _sha256(folder / file) != digest:
                raise GenzooError(f"{folder}: index file {file} is corrupt (its checksum does not match the "
                                  "manifest); rebuild the index (genzoo index build)")
        try:
            vectors = _faiss().read_index(str(folder / VECTORS))
            db = sqlite3.connect(f"file:{folder / DATABASE}?mode=ro", uri=True, check_same_thread=False)
            rows = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        except (RuntimeError, sqlite3.DatabaseError) as err:
            raise GenzooError(f"{folder}: cannot read the index ({err}); rebuild it (genzoo index build)") from None
        if rows != vectors.ntotal or rows != manifest["chunks"]:
            raise GenzooError(f"{folder}: {vectors.ntotal} vectors but {rows} chunks; rebuild the index")
        return cls(folder, manifest, vectors, db, encoder)

    def __len__(self) -> int:
        return int(self.vectors.ntotal)

    @property
    def encoder(self) -> Encoder:
        if self._encoder is None:
            self._encoder = default_encoder()
        return self._encoder

    def embed(self, questions: list[str]) -> np.ndarray:
        vectors = self.encoder.encode(questions)
        if vectors.shape[1] != self.vectors.d:
            raise GenzooError(f"{self.path}: the index holds {self.vectors.d}-dimensional vectors, the encoder makes "
                              f"{vectors.shape[1]}; query with the encoder it was built with")
        return vectors

    def search_vectors(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the ``k`` nearest chunks of each query vector (ids -1 past the index's size)."""
        if isinstance(self.vectors, _faiss().IndexHNSW):
            self.vectors.hnsw.efSearch = max(64, k)
        return self.vectors.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def keyword_ranking(self, question: str, k: int) -> list[tuple[int, float]]:
        """BM25 ranking (score = -bm25(), larger is better) of the chunks sharing a word with ``question``."""
        query = keyword_query(question)
        if not query:
            return []
        rows = self.db.execute("SELECT rowid, bm25(chunks_fts) FROM chunks_fts WHERE chunks_fts MATCH ? "
                               "ORDER BY bm25(chunks_fts) LIMIT ?", (query, k)).fetchall()
        return [(int(i), -float(s)) for i, s in rows]

    def search(self, question: str, k: int = 5, mode: Mode | str = "hybrid") -> list[Hit]:
        """The ``k`` best chunks for ``question``: by vector similarity, BM25, or their reciprocal rank fusion."""
        return self.search_batch([question], k, mode)[0]

    def search_batch(self, questions: list[str], k: int = 5, mode: Mode | str = "hybrid") -> list[list[Hit]]:
        """:meth:`search` for many questions, embedded in one batch."""
        if mode not in MODES:
            raise GenzooError(f"unknown search mode '{mode}' (known: {', '.join(MODES)})")
        if k < 1:
            raise GenzooError(f"k must be at least 1, got {k}")
        depth = k if mode != "hybrid" else max(k, FUSION_DEPTH)
        by_vector: list[list[tuple[int, float]]] = [[] for _ in questions]
        if mode != "keyword" and questions:
            scores, ids = self.search_vectors(self.embed(questions), depth)
            by_vector = [[(int(i), float(s)) for i, s in zip(row_ids, row_scores, strict=True) if i >= 0]
                         for row_ids, row_scores in zip(ids, scores, strict=True)]
        return [self._hits(vector, self.keyword_ranking(q, depth) if mode != "vector" else [], k, mode)
                for q, vector in zip(questions, by_vector, strict=True)]

    def _hits(self, vector: list[tuple[int, float]], keyword: list[tuple[int, float]], k: int, mode: str) -> list[Hit]:
        if mode == "hybrid":
            ranked = reciprocal_rank_fusion([[i for i, _ in vector], [i for i, _ in keyword]])[:k]
        else:
            ranked = vector or keyword
        vector_rank = {i: r for r, (i, _) in enumerate(vector, 1)}
        keyword_rank = {i: r for r, (i, _) in enumerate(keyword, 1)}
        return [Hit(*self.chunk(i), score=s, vector_rank=vector_rank.get(i), keyword_rank=keyword_rank.get(i))
                for i, s in ranked]

    def chunk(self, chunk_id: int) -> tuple[int, str, str, int, int]:
        """(id, text, source, start, end) of one chunk."""
        row = self.db.execute("SELECT id, text, source, start, end FROM chunks WHERE id = ?", (chunk_id,)).fetchone()
        if row is None:
            raise GenzooError(f"{self.path}: no chunk {chunk_id}")
        return row


def _default_encoder_name() -> str:
    from genzoo.embed import DEFAULT_ENCODER

    return DEFAULT_ENCODER


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        raise GenzooError(f"{folder}: not a genzoo index (no {MANIFEST}); build one with genzoo index build")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        if manifest["format"] != FORMAT:
            raise GenzooError(f"{folder}: index format {manifest['format']}, this genzoo reads format {FORMAT}")
        missing = [key for key in ("encoder", "files", "chunks") if key not in manifest]
        if missing or "name" not in manifest["encoder"]:
            raise KeyError(missing[0] if missing else "encoder.name")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as err:
        raise GenzooError(f"{folder}: {MANIFEST} is corrupt ({type(err).__name__}: {err}); rebuild the "
                          "index") from None
    return manifest
