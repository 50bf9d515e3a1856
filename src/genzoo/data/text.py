"""Text corpora as token sequences: ``text:FILE``, ``text:DIR`` (every ``*.txt`` inside) and ``jsonl:FILE``.

Spec options follow a ``#``, comma-separated: ``text:input.txt#context=64,tokenizer=bpe,vocab_size=512``;
``jsonl:data.jsonl#body`` (or ``#field=body``) names the JSON field holding the text (default ``text``).

* ``context`` (default 64): tokens in one example, ``DataInfo.shape == (context,)``.
* ``tokenizer``: ``char`` (default; one token per character seen anywhere in the corpus), ``bpe`` (byte-level BPE
  with ``vocab_size`` tokens, default 512, at least the 256 bytes, trained on the training split only), ``byte`` (one
  token per byte, 256 tokens: ``text:`` files are read as raw bytes, so any file works), ``hf:NAME`` (a Hugging
  Face model's tokenizer), or a path to a ``tokenizer.json`` / run directory to reuse an existing vocabulary
  (fine-tuning).

The character stream is cut in order: the first 90% trains, the next 5% validates (best checkpoint), the last 5% is
the test split; each part is tokenised on its own so no token straddles a cut. Training examples are random windows
(start offsets drawn from a generator seeded by training seed and step, so resumes see the same batches); held-out
examples are consecutive non-overlapping windows. Files must be UTF-8 (except with ``tokenizer=byte``, which cuts the
byte stream instead): other encodings are rejected with the byte offset of the first bad byte (convert with
``iconv``, or use ``tokenizer=byte``) rather than silently guessed.

Tokenizers are Hugging Face ``tokenizers`` objects, saved by the models as ``tokenizer.json`` next to their weights.
``DataInfo.extra["tokenizer"]`` records source and SHA-256 of the tokenizer so a model built from this ``DataInfo`` in
the same process finds the tokenizer object (:func:`find_tokenizer`); a model loaded from a run directory reads its
``tokenizer.json`` instead.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import SPLITS, Dataset
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError

TRAIN_FRACTION, VAL_FRACTION = 0.90, 0.05
BPE_MIN_VOCAB = 256  # byte-level BPE starts from one token per byte
_TOKENIZERS: dict[str, Any] = {}  # sha256 of tokenizer JSON -> tokenizers.Tokenizer built in this process


@dataclass(frozen=True)
class TextOptions:
    context: int = 64
    tokenizer: str = "char"
    vocab_size: int = 512
    field: str = "text"


def parse_options(fragment: str, default_key: str | None = None) -> TextOptions:
    """Parse ``context=64,tokenizer=bpe``; a bare word is the value of ``default_key`` (jsonl's field)."""
    values: dict[str, Any] = {}
    known = {f.name: f.type for f in fields(TextOptions)}
    for item in filter(None, (part.strip() for part in fragment.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            if default_key is None:
                raise DataError(f"text spec option '{item}' is not key=value (known keys: context, tokenizer, "
                                "vocab_size)")
            key, value = default_key, item
        if key not in known or (key == "field" and default_key is None):
            raise DataError(f"unknown text spec option '{key}' (known: context, tokenizer, vocab_size"
                            + (", field" if default_key else "") + ")")
        if key in ("context", "vocab_size"):
            try:
                values[key] = int(value)
            except ValueError:
                raise DataError(f"text spec option {key} must be an integer, got '{value}'") from None
        else:
            values[key] = value
    options = TextOptions(**values)
    if options.context < 2:
        raise DataError(f"text spec option context must be at least 2, got {options.context}")
    if options.tokenizer == "bpe" and options.vocab_size < BPE_MIN_VOCAB:
        raise DataError(f"text spec option vocab_size must be at least {BPE_MIN_VOCAB} for tokenizer=bpe, got "
                        f"{options.vocab_size} (byte-level BPE starts from one token per byte)")
    return options


# ----- reading ------------------------------------------------------------------------------------------------------
def _decode(raw: bytes, source: str, alternative: str = ", or read it as raw bytes with `#tokenizer=byte`") -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{source}: not UTF-8 text (byte 0x{raw[err.start]:02x} at offset {err.start}); convert it, "
                        f"e.g. `iconv -f latin1 -t utf-8`{alternative}") from None


def _text_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(path.rglob("*.txt"))
        if not files:
            raise DataError(f"{path}: folder has no .txt files")
        return files
    if not path.is_file():
        raise DataError(f"{path}: no such file or folder")
    return [path]


def read_text(path: Path, raw: bool = False) -> str | bytes:
    """The text of one file, or of every ``*.txt`` in a folder (sorted by name, joined by a blank line).

    UTF-8 text, or with ``raw`` the bytes as they are (for the byte tokenizer: any byte sequence is valid).
    """
    files = _text_files(path)
    blobs = [f.read_bytes() for f in files]
    if raw:
        return b"\n\n".join(blobs)
    return "\n\n".join(_decode(blob, str(f)) for blob, f in zip(blobs, files, strict=True))


def read_jsonl(path: Path, field: str) -> str:
    """The ``field`` of every JSON object line of ``path``, joined by a blank line."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    docs = []
    # "\n" only: str.splitlines() would also split at U+2028 or U+0085, which JSON strings may hold unescaped
    lines = _decode(path.read_bytes(), str(path), " (JSON is UTF-8)").split("\n")
    for number, line in enumerate((line.removesuffix("\r") for line in lines), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise DataError(f"{path}:{number}: no string field '{field}' (pick one with jsonl:{path}#FIELD)")
        docs.append(record[field])
    return "\n\n".join(docs)


# ----- tokenizers ---------------------------------------------------------------------------------------------------
def char_tokenizer(text: str) -> Any:
    """One token per distinct character: a BPE model with no merges over the corpus alphabet."""
    from tokenizers import Tokenizer, decoders, models

    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.decoder = decoders.Fuse()
    return tok


def bpe_tokenizer(text: str, vocab_size: int) -> Any:
    """Byte-level BPE (GPT-2 style): 256 byte tokens plus ``vocab_size - 256`` learned merges; any text encodes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < BPE_MIN_VOCAB:
        raise DataError(f"byte-level BPE needs vocab_size >= {BPE_MIN_VOCAB} (the byte alphabet), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    tok.train_from_iterator([text], trainer=trainer)
    return tok


def byte_symbols() -> list[str]:
    """The character that stands for each byte 0..255 in byte-level tokenizers (GPT-2's table).

    Printable bytes stand for themselves; the others take the alphabet's characters from U+0100 on, in byte order.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    shifted = iter(sorted(ch for ch in alphabet if ord(ch) > 255))
    return [chr(b) if chr(b) in alphabet else next(shifted) for b in range(256)]


def load_tokenizer(path: str | Path) -> Any:
    """A ``tokenizer.json`` file, or the one inside a run directory (``best/`` or ``last/``)."""
    from tokenizers import Tokenizer

    path = Path(path)
    candidates = [path] if path.is_file() else [path / "tokenizer.json", path / "best" / "tokenizer.json",
                                                 path / "last" / "tokenizer.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return Tokenizer.from_file(str(candidate))
            except Exception as err:  # tokenizers raises plain Exception on malformed JSON
                raise DataError(f"{candidate}: not a valid tokenizer.json ({err})") from None
    raise DataError(f"{path}: no tokenizer.json found")


def tokenizer_key(tok: Any) -> str:
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


def remember_tokenizer(tok: Any) -> str:
    """Keep ``tok`` for models built from a ``DataInfo`` in this process; return its key."""
    key = tokenizer_key(tok)
    _TOKENIZERS[key] = tok
    return key


def find_tokenizer(info: DataInfo) -> Any | None:
    """The tokenizer a TOKENS ``DataInfo`` was made with, when it was made in this process."""
    meta = info.extra.get("tokenizer")
    return _TOKENIZERS.get(meta["sha256"]) if isinstance(meta, dict) else None


class TextCodec:
    """Text <-> ids through a ``tokenizers.Tokenizer``, refusing characters a char vocabulary never saw."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        model = json.loads(tokenizer.to_str())["model"]
        self.char_level = model.get("type") == "BPE" and not model.get("merges") and tokenizer.pre_tokenizer is None

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=False).ids
        if self.char_level and len(ids) != len(text):
            vocab = self.tokenizer.get_vocab()
            unseen = "".join(sorted({ch for ch in text if ch not in vocab}))
            raise DataError(f"text has characters the tokenizer never saw: {unseen!r}")
        return ids

    def encode_bytes(self, raw: bytes) -> list[int]:
        """Ids of any byte sequence, for a byte tokenizer (256 tokens, no merges): the ids its UTF-8 text gets."""
        vocab = self.tokenizer.get_vocab()
        if len(vocab) != BPE_MIN_VOCAB:
            raise DataError(f"raw bytes need the byte tokenizer (tokenizer=byte), not one of {len(vocab)} tokens")
        table = [vocab[symbol] for symbol in byte_symbols()]
        return [table[b] for b in raw]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=False)


def make_tokenizer(options: TextOptions, train_text: str | bytes, all_text: str | bytes) -> Any:
    if options.tokenizer == "char":
        return char_tokenizer(all_text)
    if options.tokenizer == "bpe":
        return bpe_tokenizer(train_text, options.vocab_size)
    if options.tokenizer == "byte":
        return bpe_tokenizer("", BPE_MIN_VOCAB)
    if options.tokenizer.startswith("hf:"):
        from genzoo.models.transformer.hf import hf_tokenizer

        return hf_tokenizer(options.tokenizer[3:]).backend_tokenizer
    return load_tokenizer(options.tokenizer)


# ----- dataset ------------------------------------------------------------------------------------------------------
class TokenDataset(Dataset):
    """Token streams per split; one example is a window of ``context`` consecutive tokens."""

    def __init__(self, info: DataInfo, streams: dict[str, Tensor], codec: TextCodec) -> None:
        self.info = info
        self.streams = streams
        self.codec = codec

    @property
    def context(self) -> int:
        return self.info.shape[0]

    def _stream(self, split: str) -> Tensor:
        if split not in SPLITS:
            raise DataError(f"unknown split '{split}' (use one of {', '.join(SPLITS)})")
        return self.streams[split]

    def size(self, split: str) -> int:
        return len(self._stream(split)) // self.context

    def batch_at(self, step: int, batch_size: int, seed: int) -> Batch:
        stream = self.streams["train"]
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        starts = torch.randint(0, len(stream) - self.context + 1, (batch_size,), generator=gen)
        return Batch(stream[starts[:, None] + torch.arange(self.context)])

    def batches(self, split: str, batch_size: int, limit: int | None = None) -> Iterator[Batch]:
        stream = self._stream(split)
        n = self.size(split) if limit is None else min(limit, self.size(split))
        windows = stream[: n * self.context].view(n, self.context)
        for start in range(0, n, batch_size):
            yield Batch(windows[start : start + batch_size])


def text_dataset(text: str | bytes, options: TextOptions, source: str) -> TokenDataset:
    """Split ``text`` 90/5/5 in order, build or load the tokenizer, tokenise each part.

    ``text`` may be raw bytes (any byte sequence) for ``tokenizer=byte``; the cuts then fall between bytes.
    """
    if not text.strip():
        raise DataError(f"{source}: no text (the corpus is empty)")
    raw = isinstance(text, bytes)
    if raw and options.tokenizer != "byte":
        raise DataError(f"{source}: raw bytes need tokenizer=byte, not {options.tokenizer}")
    unit = "bytes" if raw else "chars"
    n = len(text)
    cuts = (0, int(n * TRAIN_FRACTION), int(n * (TRAIN_FRACTION + VAL_FRACTION)), n)
    parts = {split: text[cuts[i] : cuts[i + 1]] for i, split in enumerate(SPLITS)}
    tok = make_tokenizer(options, parts["train"], text)
    codec = TextCodec(tok)
    encode = codec.encode_bytes if raw else codec.encode
    streams = {split: torch.tensor(encode(part), dtype=torch.long) for split, part in parts.items()}
    for split, stream in streams.items():
        if len(stream) < options.context:
            raise DataError(f"{source}: the {split} split ({len(parts[split])} of {n} {unit}) has {len(stream)} "
                            f"tokens, fewer than one context window of {options.context}; use more text or a smaller "
                            "context (#context=N)")
    meta = {"source": options.tokenizer, "sha256": remember_tokenizer(tok), "vocab_size": codec.vocab_size}
    extra = {"tokenizer": meta,
             "tokens": {split: len(s) for split, s in streams.items()},
             unit: {split: len(p) for split, p in parts.items()}}
    info = DataInfo(kind=DataKind.TOKENS, shape=(options.context,), levels=codec.vocab_size, extra=extra)
    return TokenDataset(info, streams, codec)


@register_loader("text", "text:FILE|DIR[#context=64,tokenizer=char|bpe|byte|PATH,vocab_size=512]  UTF-8 text "
                         "(any bytes with tokenizer=byte) as token windows")
def load_text(arg: str | None, options: DataOptions) -> TokenDataset:
    if not arg:
        raise DataError("text: needs a file or folder, e.g. text:input.txt")
    path, _, fragment = arg.partition("#")
    options = parse_options(fragment)
    return text_dataset(read_text(Path(path), raw=options.tokenizer == "byte"), options, path)


@register_loader("jsonl", "jsonl:FILE[#FIELD,context=...,tokenizer=...]  the text field (default 'text') of "
                          "JSON lines")
def load_jsonl(arg: str | None, options: DataOptions) -> TokenDataset:
    if not arg:
        raise DataError("jsonl: needs a file, e.g. jsonl:data.jsonl#text")
    path, _, fragment = arg.partition("#")
    opts = parse_options(fragment, default_key="field")
    return text_dataset(read_jsonl(Path(path), opts.field), opts, path)
