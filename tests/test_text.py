"""Text data: specs, typed options, tokenizers (round trips), splits and windows, bad input, text metrics."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import TINY_CORPUS
from genzoo.data import DataOptions, load_dataset
from genzoo.data.specs import absolute_spec, recorded_options, register_loader
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError, DataError, GenzooError
from genzoo.metrics.text import text_metrics
from genzoo.tokenizer import Tokenizer, bpe_tokenizer, char_tokenizer, load_tokenizer

SAMPLE = "Hello, wörld!\n\tÜnïcode → 🙂 and\r\nnewlines  "


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text(TINY_CORPUS, encoding="utf-8")
    return path


def test_char_tokenizer_round_trips_and_refuses_unseen_characters() -> None:
    tok = char_tokenizer(SAMPLE)
    ids = tok.encode(SAMPLE)
    assert len(ids) == len(SAMPLE) and tok.vocab_size == len(set(SAMPLE))
    assert tok.decode(ids) == SAMPLE
    with pytest.raises(DataError, match="never saw"):
        tok.encode("xyz")


def test_byte_level_bpe_round_trips_any_text() -> None:
    tok = bpe_tokenizer(TINY_CORPUS, 300)
    assert 256 < tok.vocab_size <= 300  # fewer when the corpus runs out of pairs to merge
    for text in (SAMPLE, TINY_CORPUS[:200], "日本語のテキスト"):
        assert tok.decode(tok.encode(text)) == text
    assert len(tok.encode(TINY_CORPUS)) < len(TINY_CORPUS) / 2  # merges learned from the corpus compress it


def test_text_spec_options_and_splits(corpus: Path) -> None:
    data = load_dataset(f"text:{corpus}#context=8,tokenizer=bpe,vocab_size=280")
    assert data.info.kind is genzoo.DataKind.TOKENS and data.info.shape == (8,) and data.info.levels == 280
    assert data.info.spec.endswith("vocab_size=280")
    # splits are the corpus in order: 90% / 5% / 5%
    text = "".join(data.tokenizer.decode(data.streams[s].tolist()) for s in ("train", "val", "test"))
    assert text == TINY_CORPUS
    assert data.info.extra["chars"]["train"] == int(len(TINY_CORPUS) * 0.9)


def test_batches_are_deterministic_windows_of_the_train_stream() -> None:
    data = text_dataset(TINY_CORPUS, DataOptions(context=12), "tiny")
    a, b = data.batch_at(5, 4, seed=1), data.batch_at(5, 4, seed=1)
    assert torch.equal(a.x, b.x) and a.x.shape == (4, 12) and a.x.dtype == torch.long
    assert not torch.equal(a.x, data.batch_at(6, 4, seed=1).x)
    train = data.tokenizer.decode(data.streams["train"].tolist())
    for row in a.x:
        assert data.tokenizer.decode(row.tolist()) in train
    windows = torch.cat([batch.x for batch in data.batches("val", 3)])
    assert windows.shape[0] == data.size("val") == len(data.streams["val"]) // 12
    assert torch.equal(windows.flatten(), data.streams["val"][: windows.numel()])


def test_folder_and_jsonl_specs(tmp_path: Path) -> None:
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "a.txt").write_text("alpha " * 100)
    (folder / "b.txt").write_text("beta " * 100)
    data = load_dataset(f"text:{folder}#context=8")
    assert set(data.tokenizer.backend.get_vocab()) == set("alphbet \n")
    lines = [json.dumps({"body": f"record {i} says hello"}) for i in range(60)]
    (tmp_path / "d.jsonl").write_text("\n".join(lines))
    data = load_dataset(f"jsonl:{tmp_path / 'd.jsonl'}#body,context=8")
    assert "record 0 says hello" in data.tokenizer.decode(data.streams["train"].tolist())
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
    data = text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")
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
    assert ids.tolist() == data.tokenizer.encode_bytes(raw)
    # the same ids the tokenizer gives text through its own UTF-8 path, so prompts and generation agree
    text = SAMPLE + "".join(map(chr, range(1, 0x800))) + "日本語"
    assert data.tokenizer.encode_bytes(text.encode()) == data.tokenizer.encode(text)
    assert data.tokenizer.decode(ids[:256].tolist()) == bytes(range(256)).decode("utf-8", errors="replace")


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
    assert data.tokenizer.decode(data.streams["train"].tolist()).startswith(f"{body} 0\n\n{body} 1\n\n")


# ----- typed data options -------------------------------------------------------------------------------------------
@pytest.fixture
def probe() -> list[tuple[str | None, DataOptions]]:
    """A loader that records what it is called with (registered for the test only)."""
    from genzoo.data import specs

    calls: list[tuple[str | None, DataOptions]] = []

    @register_loader("probe", "probe:ARG  test loader", options=("context", "tokenizer", "vocab_size", "field"),
                     bare="field")
    def load_probe(arg: str | None, options: DataOptions) -> genzoo.Dataset:
        calls.append((arg, options))
        return text_dataset(TINY_CORPUS, options.merged(tokenizer="char"), "probe")

    yield calls
    specs._LOADERS.pop("probe")


def test_spec_options_are_parsed_once_into_typed_options(probe: list) -> None:
    data = load_dataset("probe:some/where#body,context=8,vocab_size=300")
    (arg, options), = probe
    assert arg == "some/where"  # the loader gets the argument without the options
    assert isinstance(options, DataOptions) and options.context == 8 and options.vocab_size == 300
    assert options.field == "body" and options.tokenizer == "char"  # a bare word is the field; the rest: defaults
    assert data.info.spec == "probe:some/where#body,context=8,vocab_size=300"  # the spec as written


def test_options_given_by_code_are_defaults_the_spec_overrides(probe: list) -> None:
    defaults = DataOptions(context=16, tokenizer="bpe", field="body")
    load_dataset("probe:x#context=8", options=defaults)
    load_dataset("probe:x", options=defaults, image_size=5)
    (_, first), (_, second) = probe
    assert (first.context, first.tokenizer, first.field) == (8, "bpe", "body")
    assert (second.context, second.tokenizer, second.image_size) == (16, "bpe", 5)


@pytest.mark.parametrize(("spec", "message"), [
    ("probe:x#window=3", "unknown text spec option 'window'"),
    ("probe:x#context=many", "context must be an integer, got 'many'"),
    ("probe:x#context=1", "context must be at least 2, got 1"),
    ("probe:x#tokenizer=bpe,vocab_size=12", "vocab_size must be at least 256 for tokenizer=bpe, got 12"),
    ("digits#context=5", "unknown data spec option 'context'"),
    ("toy:moons#tokenizer=bpe", "toy data takes no #options"),
])
def test_bad_options_are_one_clear_data_error(probe: list, spec: str, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_dataset(spec)
    assert not probe  # refused before the loader runs


def test_data_options_check_values_given_by_code_too() -> None:
    with pytest.raises(DataError, match="unknown data option 'window'"):
        DataOptions(window=3)
    with pytest.raises(DataError, match="context must be at least 2"):
        DataOptions(context=0)
    with pytest.raises(DataError, match="image size must be at least 1"):
        DataOptions(image_size=0)
    assert DataOptions(context="12").context == 12
    # text options given by code do not bother other loaders (fine-tuning passes them whatever the data)
    assert load_dataset("digits", options=DataOptions(context=5)).info.shape == (1, 8, 8)


def test_a_token_dataset_records_the_options_it_was_read_with(corpus: Path, tmp_path: Path) -> None:
    data = load_dataset(f"text:{corpus}#context=8")
    data.tokenizer.save(tmp_path / "tokenizer.json")
    reused = load_dataset(f"text:{corpus}", options=DataOptions(tokenizer=str(tmp_path), context=12))
    options = recorded_options(reused.info)
    assert options.context == 12 and options.tokenizer == str(tmp_path.absolute())
    again = load_dataset(reused.info.spec, options=options)
    assert torch.equal(again.streams["train"], reused.streams["train"]) and again.info.extra == reused.info.extra
    assert recorded_options(load_dataset("digits").info) is None


# ----- tokenizers cross from data to models explicitly -------------------------------------------------------------
def test_no_module_keeps_tokenizers_and_models_never_mix_them(tmp_path: Path) -> None:
    import genzoo.data.text as text_module
    import genzoo.tokenizer as tokenizer_module

    for name in ("_TOKENIZERS", "remember_tokenizer", "find_tokenizer"):
        assert not hasattr(text_module, name) and not hasattr(tokenizer_module, name)
    a = text_dataset("abc " * 200, DataOptions(context=8), "a")
    b = text_dataset("xyz " * 200, DataOptions(context=8), "b")
    # same vocabulary size, different tokenizers: each model keeps the one of its own dataset
    assert a.info.levels == b.info.levels and a.tokenizer.sha256 != b.tokenizer.sha256
    model_a = genzoo.create("gpt", a, layers=1, heads=2, width=16)
    model_b = genzoo.create("gpt", b, layers=1, heads=2, width=16)
    assert model_a.tokenizer is a.tokenizer and model_b.tokenizer is b.tokenizer
    assert set(model_a.generate("a", max_new_tokens=20)) <= set("abc ")
    assert set(model_b.generate("x", max_new_tokens=20)) <= set("xyz ")
    with pytest.raises(ConfigError, match="not the one the data was tokenised with"):
        genzoo.build_model("gpt", a.info, {"layers": 1, "heads": 2, "width": 16}, tokenizer=b.tokenizer)
    # nothing anywhere in the package holds on to a tokenizer: no module-level registry or cache
    for module in [m for name, m in sys.modules.items() if name.startswith("genzoo") and m is not None]:
        for value in vars(module).values():
            held = value.values() if isinstance(value, dict) else value if isinstance(value, list | tuple) else ()
            assert not any(isinstance(v, Tokenizer) for v in held), module.__name__


def test_a_model_without_a_tokenizer_refuses_text_clearly() -> None:
    data = text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")
    model = genzoo.build_model("gpt", data.info, {"layers": 1, "heads": 2, "width": 16})
    assert model.tokenizer is None and genzoo.Capability.GENERATE_TEXT not in model.capabilities
    with pytest.raises(GenzooError, match="has no tokenizer"):
        model.generate("the cat")
    assert model.sample(2, seed=0).shape == (2, 16)  # ids still sample and score
    image_model = genzoo.create("gpt", "digits", layers=1, heads=2, width=16)
    with pytest.raises(GenzooError, match="image data"):
        image_model.generate("x")
    with pytest.raises(ConfigError, match="image data, which has no tokenizer"):
        image_model.use_tokenizer(data.tokenizer)


def test_run_assets_keep_the_tokenizer_and_check_it(tmp_path: Path) -> None:
    data = text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")
    model = genzoo.create("lstm", data, layers=1, width=8)
    model.save_assets(tmp_path)
    assert load_tokenizer(tmp_path).sha256 == data.tokenizer.sha256
    fresh = genzoo.build_model("lstm", data.info, {"layers": 1, "width": 8})
    fresh.load_assets(tmp_path)
    assert fresh.tokenizer.sha256 == data.tokenizer.sha256
    char_tokenizer("other text").save(tmp_path / "tokenizer.json")
    with pytest.raises(genzoo.RunDirError, match="does not match"):
        genzoo.build_model("lstm", data.info, {"layers": 1, "width": 8}).load_assets(tmp_path)


# ----- absolute specs -----------------------------------------------------------------------------------------------
def test_absolute_spec_makes_paths_absolute_and_leaves_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("x")
    (tmp_path / "images").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "odd#name.txt").write_text("x")
    here = str(tmp_path)
    cases = {
        "text:corpus.txt": f"text:{here}/corpus.txt",
        "text:./corpus.txt#context=8,tokenizer=run": f"text:{here}/corpus.txt#context=8,tokenizer={here}/run",
        "jsonl:corpus.txt#body,tokenizer=bpe": f"jsonl:{here}/corpus.txt#body,tokenizer=bpe",
        "images": f"{here}/images",
        "folder:images/../images": f"folder:{here}/images",
        "mnist:images": f"mnist:{here}/images",
        "text:odd#name.txt": f"text:{here}/odd#name.txt",
        "text:corpus.txt#tokenizer=hf:gpt2": f"text:{here}/corpus.txt#tokenizer=hf:gpt2",
        "text:corpus.txt#tokenizer=char": f"text:{here}/corpus.txt#tokenizer=char",
    }
    unchanged = ["digits", "mnist", "toy:moons", "text:missing.txt", f"text:{here}/corpus.txt#tokenizer=byte",
                 "text:/elsewhere/corpus.txt#tokenizer=missing-run"]
    for spec, expected in cases.items():
        assert absolute_spec(spec) == expected, spec
        assert absolute_spec(expected) == expected  # idempotent
    for spec in unchanged:
        assert absolute_spec(spec) == spec
