"""Text data: specs, tokenizers (round trips), splits and windows, bad input, text metrics."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import TINY_CORPUS
from genzoo.data import load_dataset
from genzoo.data.text import TextCodec, TextOptions, bpe_tokenizer, char_tokenizer, text_dataset
from genzoo.errors import DataError
from genzoo.metrics.text import text_metrics

SAMPLE = "Hello, wörld!\n\tÜnïcode → 🙂 and\r\nnewlines  "


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_CORPUS, encoding="utf-8")
    return path


def test_char_tokenizer_round_trips_and_refuses_unseen_characters() -> None:
    codec = TextCodec(char_tokenizer(SAMPLE))
    ids = codec.encode(SAMPLE)
    assert len(ids) == len(SAMPLE) and codec.vocab_size == len(set(SAMPLE))
    assert codec.decode(ids) == SAMPLE
    with pytest.raises(DataError, match="never saw"):
        codec.encode("xyz")


def test_byte_level_bpe_round_trips_any_text() -> None:
    codec = TextCodec(bpe_tokenizer(TINY_CORPUS, 300))
    assert 256 < codec.vocab_size <= 300  # fewer when the corpus runs out of pairs to merge
    for text in (SAMPLE, TINY_CORPUS[:200], "日本語のテキスト"):
        assert codec.decode(codec.encode(text)) == text
    assert len(codec.encode(TINY_CORPUS)) < len(TINY_CORPUS) / 2  # merges learned from the corpus compress it


def test_text_spec_options_and_splits(corpus: Path) -> None:
    data = load_dataset(f"text:{corpus}#context=8,tokenizer=bpe,vocab_size=280")
    assert data.info.kind is genzoo.DataKind.TOKENS and data.info.shape == (8,) and data.info.levels == 280
    assert data.info.spec.endswith("vocab_size=280")
    # splits are the corpus in order: 90% / 5% / 5%
    text = "".join(data.codec.decode(data.streams[s].tolist()) for s in ("train", "val", "test"))
    assert text == TINY_CORPUS
    assert data.info.extra["chars"]["train"] == int(len(TINY_CORPUS) * 0.9)


def test_batches_are_deterministic_windows_of_the_train_stream() -> None:
    data = text_dataset(TINY_CORPUS, TextOptions(context=12), "tiny")
    a, b = data.batch_at(5, 4, seed=1), data.batch_at(5, 4, seed=1)
    assert torch.equal(a.x, b.x) and a.x.shape == (4, 12) and a.x.dtype == torch.long
    assert not torch.equal(a.x, data.batch_at(6, 4, seed=1).x)
    train = data.codec.decode(data.streams["train"].tolist())
    for row in a.x:
        assert data.codec.decode(row.tolist()) in train
    windows = torch.cat([batch.x for batch in data.batches("val", 3)])
    assert windows.shape[0] == data.size("val") == len(data.streams["val"]) // 12
    assert torch.equal(windows.flatten(), data.streams["val"][: windows.numel()])


def test_folder_and_jsonl_specs(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha " * 100)
    (folder / "b.txt").write_text("beta " * 100)
    data = load_dataset(f"text:{folder}#context=8")
    assert set(data.codec.tokenizer.get_vocab()) == set("alphbet \n")
    lines = [json.dumps({"body": f"record {i} says hello"}) for i in range(60)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    data = load_dataset(f"jsonl:{tmp_path / 'd.jsonl'}#body,context=8")
    assert "record 0 says hello" in data.codec.decode(data.streams["train"].tolist())
    with pytest.raises(DataError, match="no string field 'text'"):
        load_dataset(f"jsonl:{tmp_path / 'd.jsonl'}")


@pytest.mark.parametrize(("content", "spec_suffix", "message"), [
    (b"", "", "empty"),
    (b"   \n\n", "", "empty"),
    (b"caf\xe9 " * 50, "", r"not UTF-8 text \(byte 0xe9 at offset 3\)"),
    (b"short text", "#context=64", "fewer than one context window"),
    (b"x" * 500, "#context=abc", "must be an integer"),
    (b"x" * 500, "#window=3", "unknown text spec option 'window'"),
    (b"x" * 500, "#context=1", "context must be at least 2, got 1"),
    (b"x" * 500, "#vocab_size=100,tokenizer=bpe", "vocab_size must be at least 256 for tokenizer=bpe, got 100"),
    (b"x" * 500, "#tokenizer=bpe,vocab_size=0", "vocab_size must be at least 256 for tokenizer=bpe, got 0"),
])
def test_bad_text_input_gives_a_clear_error(tmp_path: Path, content: bytes, spec_suffix: str, message: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_dataset(f"text:{path}{spec_suffix}")


def test_missing_path_and_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        load_dataset(f"text:{tmp_path / 'nope.txt'}")
    with pytest.raises(DataError, match=r"no \.txt files"):
        load_dataset(f"text:{tmp_path}")


def test_text_metrics_are_consistent() -> None:
    data = text_dataset(TINY_CORPUS, TextOptions(context=16), "tiny")
    model = genzoo.create("gpt", data, layers=1, heads=2, width=16)
    metrics = text_metrics(model, data, split="val")
    assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]), rel=1e-5)
    # char level: a token is a character (and ASCII: a byte)
    assert metrics["bits_per_char"] == pytest.approx(metrics["bits_per_token"], rel=1e-5)
    assert metrics["bits_per_byte"] == pytest.approx(metrics["bits_per_token"], rel=1e-5)
    # an untrained model is close to uniform over the vocabulary
    assert abs(metrics["loss"] - math.log(data.info.levels)) < 0.5


def test_byte_tokenizer_reads_any_bytes_and_matches_its_text_encoding(tmp_path: Path) -> None:
    raw = bytes(range(256)) * 4 + "café 🙂".encode() + b"caf\xe9 \xff\xfe" * 40
    path = tmp_path / "latin1.txt"
    path.write_bytes(raw)
    data = load_dataset(f"text:{path}#tokenizer=byte,context=8")
    ids = torch.cat([data.streams[s] for s in ("train", "val", "test")])
    assert data.info.levels == 256 and len(ids) == len(raw)  # one token per byte, nothing lost or replaced
    assert ids.tolist() == data.codec.encode_bytes(raw)
    # the same ids the tokenizer gives text through its own UTF-8 path, so prompts and generation agree
    text = SAMPLE + "".join(map(chr, range(1, 0x800))) + "日本語"
    assert data.codec.encode_bytes(text.encode()) == data.codec.encode(text)
    assert data.codec.decode(ids[:256].tolist()) == bytes(range(256)).decode("utf-8", errors="replace")


@pytest.mark.parametrize("tokenizer", ["char", "bpe"])
def test_non_utf8_text_names_the_file_the_offset_and_the_byte_fallback(tmp_path: Path, tokenizer: str) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9 " * 50)
    with pytest.raises(DataError, match=r"latin1\.txt: not UTF-8 .* offset 3\).*#tokenizer=byte"):
        load_dataset(f"text:{path}#tokenizer={tokenizer}")


def test_jsonl_lines_split_at_newlines_only(tmp_path: Path) -> None:
    body = "first line\u2028still the same record\u0085 too"
    lines = [json.dumps({"text": f"{body} {i}"}, ensure_ascii=False) for i in range(60)]
    path = tmp_path / "d.jsonl"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    data = load_dataset(f"jsonl:{path}#context=8")
    assert data.codec.decode(data.streams["train"].tolist()).startswith(f"{body} 0\n\n{body} 1\n\n")
