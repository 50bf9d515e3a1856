"""Text corpora as token sequences: ``text:FILE``, ``text:DIR`` (every ``*.txt`` inside) and ``jsonl:FILE``.

Spec options follow a ``#``, comma-separated: ``text:input.txt#context=64,tokenizer=bpe,vocab_size=512``;
``jsonl:data.jsonl#body`` (or ``#field=body``) names the JSON field holding the text (default ``text``). They are
the text fields of :class:`~genzoo.data.specs.DataOptions`, parsed and checked once by ``load_dataset``:

* ``context`` (default 64): tokens in one example, ``DataInfo.shape == (context,)``.
* ``tokenizer``: ``char`` (default; one token per character seen anywhere in the corpus), ``bpe`` (byte-level BPE
  with ``vocab_size`` tokens, default 512, at least the 256 bytes, trained on the training split only), ``byte`` (one
  token per byte, 256 tokens: ``text:`` files are read as raw bytes, so any file works), ``hf:NAME`` (a Hugging
  Face model's tokenizer), or a path to a ``tokenizer.json`` / run directory to reuse an existing vocabulary
  (fine-tuning). Tokenizers live in :mod:`genzoo.tokenizer`.

The character stream is cut in order: the first 90% trains, the next 5% validates (best checkpoint), the last 5% is
the test split; each part is tokenised on its own so no token straddles a cut. Training examples are random windows
(start offsets drawn from a generator seeded by training seed and step, so resumes see the same batches); held-out
examples are consecutive non-overlapping windows. Files must be UTF-8 (except with ``tokenizer=byte``, which cuts the
byte stream instead): other encodings are rejected with the byte offset of the first bad byte (convert with
``iconv``, or use ``tokenizer=byte``) rather than silently guessed.

The dataset holds its :class:`~genzoo.tokenizer.Tokenizer` as ``dataset.tokenizer`` and hands it to the model it
trains (``build_model(..., tokenizer=dataset.tokenizer)``); the model saves it as ``tokenizer.json`` next to its
weights. ``DataInfo.extra["tokenizer"]`` records its source, SHA-256 and size (so a loaded run can check its
``tokenizer.json``) and ``DataInfo.extra["options"]`` the text options the data was read with.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import SPLITS, Dataset
from genzoo.data.specs import TEXT_OPTIONS, DataOptions, register_loader
from genzoo.errors import DataError
from genzoo.io import json_line_strings
from genzoo.tokenizer import Tokenizer, build_tokenizer

TRAIN_FRACTION, VAL_FRACTION = 0.90, 0.05


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
        docs += json_line_strings(line, f"{path}:{number}", (field,), f" (pick one with jsonl:{path}#FIELD)")
    return "\n\n".join(docs)


# ----- dataset ------------------------------------------------------------------------------------------------------
class TokenDataset(Dataset):
    """Token streams per split; one example is a window of ``context`` consecutive tokens. ``tokenizer`` is the
    :class:`~genzoo.tokenizer.Tokenizer` that made the ids (handed to the model that trains on them)."""

    def __init__(self, info: DataInfo, streams: dict[str, Tensor], tokenizer: Tokenizer) -> None:
        self.info = info
        self.streams = streams
        self.tokenizer = tokenizer

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


def text_dataset(text: str | bytes, options: DataOptions, source: str) -> TokenDataset:
    """Split ``text`` 90/5/5 in order, build or load the tokenizer ``options`` name, tokenise each part.

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
    tok = build_tokenizer(options.tokenizer, parts["train"], text, options.vocab_size)
    encode = tok.encode_bytes if raw else tok.encode
    streams = {split: torch.tensor(encode(part), dtype=torch.long) for split, part in parts.items()}
    for split, stream in streams.items():
        if len(stream) < options.context:
            raise DataError(f"{source}: the {split} split ({len(parts[split])} of {n} {unit}) has {len(stream)} "
                            f"tokens, fewer than one context window of {options.context}; use more text or a smaller "
                            "context (#context=N)")
    # the text options as read (a path tokenizer made absolute), so the same spec reads the same tokens again
    used = {key: getattr(options, key) for key in TEXT_OPTIONS} | {"tokenizer": tok.source or options.tokenizer}
    extra = {"tokenizer": tok.metadata(), "options": used,
             "tokens": {split: len(s) for split, s in streams.items()},
             unit: {split: len(p) for split, p in parts.items()}}
    info = DataInfo(kind=DataKind.TOKENS, shape=(options.context,), levels=tok.vocab_size, extra=extra)
    return TokenDataset(info, streams, tok)


_TEXT_KEYS = ("context", "tokenizer", "vocab_size")


@register_loader("text", "text:FILE|DIR[#context=64,tokenizer=char|bpe|byte|hf:NAME|PATH,vocab_size=512]  UTF-8 "
                         "text (any bytes with tokenizer=byte) as token windows", options=_TEXT_KEYS)
def load_text(arg: str | None, options: DataOptions) -> TokenDataset:
    if not arg:
        raise DataError("text: needs a file or folder, e.g. text:input.txt")
    return text_dataset(read_text(Path(arg), raw=options.tokenizer == "byte"), options, arg)


@register_loader("jsonl", "jsonl:FILE[#FIELD,context=...,tokenizer=...]  the text field (default 'text') of "
                          "JSON lines", options=(*_TEXT_KEYS, "field"), bare="field")
def load_jsonl(arg: str | None, options: DataOptions) -> TokenDataset:
    if not arg:
        raise DataError("jsonl: needs a file, e.g. jsonl:data.jsonl#text")
    return text_dataset(read_jsonl(Path(arg), options.field), options, arg)
