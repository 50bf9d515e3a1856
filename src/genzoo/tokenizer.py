"""Text tokenizers: text <-> token ids, shared by the text data (``genzoo.data.text``) and the language models.

This module sits below both ``genzoo.data`` and ``genzoo.models`` and imports neither: a text dataset builds its
:class:`Tokenizer` here and hands it to the model it trains explicitly (``build_model(..., tokenizer=...)``, which
calls ``model.use_tokenizer``); a model loaded from a run directory reads the ``tokenizer.json`` saved next to its
weights. There is no process-wide registry of tokenizers.

Kinds (the ``tokenizer=`` data option, see :func:`build_tokenizer`):

* ``char``: one token per distinct character of the corpus (a BPE model without merges over the corpus alphabet);
* ``bpe``: byte-level BPE (GPT-2 style) with ``vocab_size`` tokens: the 256 bytes plus learned merges;
* ``byte``: one token per byte (256 tokens), so any byte sequence encodes;
* ``hf:NAME``: the tokenizer of a Hugging Face model (hub id or local folder; needs the ``llm`` extra);
* a path to a ``tokenizer.json`` or to a run directory holding one: reuse that vocabulary (fine-tuning).

Every tokenizer is a Hugging Face ``tokenizers.Tokenizer`` underneath (:attr:`Tokenizer.backend`), saved as
``tokenizer.json``; :func:`tokenizer_key` (the SHA-256 of its JSON) identifies it, so a run can check that the file
next to its weights is the one it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from genzoo.errors import DataError, GenzooError

#: byte-level BPE starts from one token per byte
BPE_MIN_VOCAB = 256
#: tokenizer kinds that are built from the corpus (anything else is ``hf:NAME`` or a path)
BUILT_KINDS = ("char", "bpe", "byte")

__all__ = [
    "BPE_MIN_VOCAB", "BUILT_KINDS", "Tokenizer", "bpe_tokenizer", "build_tokenizer", "byte_symbols",
    "byte_tokenizer", "char_tokenizer", "hf_tokenizer", "is_named_tokenizer", "load_tokenizer", "require_transformers",
    "tokenizer_key",
]


class Tokenizer:
    """Text <-> ids through a ``tokenizers.Tokenizer`` (:attr:`backend`), refusing characters a char vocabulary
    never saw (instead of silently dropping them). ``source`` says where it came from (``char``, ``bpe``, ``byte``,
    ``hf:NAME`` or a path)."""

    def __init__(self, backend: Any, source: str = "") -> None:
        self.backend = backend
        self.source = source
        self.vocab_size: int = backend.get_vocab_size()
        model = json.loads(backend.to_str())["model"]
        self.char_level = model.get("type") == "BPE" and not model.get("merges") and backend.pre_tokenizer is None

    def __repr__(self) -> str:
        return f"Tokenizer(source={self.source!r}, vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        if self.char_level and len(ids) != len(text):
            vocab = self.backend.get_vocab()
            unseen = "".join(sorted({ch for ch in text if ch not in vocab}))
            raise DataError(f"text has characters the tokenizer never saw: {unseen!r}")
        return ids

    def encode_bytes(self, raw: bytes) -> list[int]:
        """Ids of any byte sequence, for a byte tokenizer (256 tokens, no merges): the ids its UTF-8 text gets."""
        vocab = self.backend.get_vocab()
        if len(vocab) != BPE_MIN_VOCAB:
            raise DataError(f"raw bytes need the byte tokenizer (tokenizer=byte), not one of {len(vocab)} tokens")
        table = [vocab[symbol] for symbol in byte_symbols()]
        return [table[b] for b in raw]

    def decode(self, ids: list[int]) -> str:
        return self.backend.decode(ids, skip_special_tokens=False)

    def to_str(self) -> str:
        """The tokenizer as ``tokenizer.json`` text."""
        return self.backend.to_str()

    @property
    def sha256(self) -> str:
        return tokenizer_key(self)

    def metadata(self) -> dict[str, Any]:
        """JSON facts that identify this tokenizer (``DataInfo.extra["tokenizer"]``): source, SHA-256, size."""
        return {"source": self.source, "sha256": self.sha256, "vocab_size": self.vocab_size}

    def save(self, path: str | Path) -> None:
        """Write ``tokenizer.json`` (plain JSON, never a pickle)."""
        self.backend.save(str(path))


def tokenizer_key(tok: Any) -> str:
    """SHA-256 of a tokenizer's JSON (a :class:`Tokenizer` or a ``tokenizers.Tokenizer``)."""
    return hashlib.sha256(tok.to_str().encode()).hexdigest()


# ----- builders -----------------------------------------------------------------------------------------------------
def char_tokenizer(text: str) -> Tokenizer:
    """One token per distinct character: a BPE model with no merges over the corpus alphabet."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models

    vocab = {ch: i for i, ch in enumerate(sorted(set(text)))}
    backend = Backend(models.BPE(vocab=vocab, merges=[]))
    backend.decoder = decoders.Fuse()
    return Tokenizer(backend, "char")


def bpe_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE (GPT-2 style): 256 byte tokens plus ``vocab_size - 256`` learned merges; any text encodes."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < BPE_MIN_VOCAB:
        raise DataError(f"byte-level BPE needs vocab_size >= {BPE_MIN_VOCAB} (the byte alphabet), got {vocab_size}")
    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False, special_tokens=[])
    backend.train_from_iterator([text], trainer=trainer)
    return Tokenizer(backend, "bpe")


def byte_tokenizer() -> Tokenizer:
    """One token per byte (256 tokens): byte-level BPE without merges."""
    tok = bpe_tokenizer("", BPE_MIN_VOCAB)
    tok.source = "byte"
    return tok


def byte_symbols() -> list[str]:
    """The character that stands for each byte 0..255 in byte-level tokenizers (GPT-2's table).

    Printable bytes stand for themselves; the others take the alphabet's characters from U+0100 on, in byte order.
    """
    from tokenizers import pre_tokenizers

    alphabet = set(pre_tokenizers.ByteLevel.alphabet())
    shifted = iter(sorted(ch for ch in alphabet if ord(ch) > 255))
    return [chr(b) if chr(b) in alphabet else next(shifted) for b in range(256)]


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A ``tokenizer.json`` file, or the one inside a run directory (the run's own, ``best/`` or ``last/``)."""
    from tokenizers import Tokenizer as Backend

    path = Path(path).expanduser()
    candidates = [path] if path.is_file() else [path / "tokenizer.json", path / "best" / "tokenizer.json",
                                                 path / "last" / "tokenizer.json"]
    for candidate in candidates:
        if candidate.is_file():
            try:
                return Tokenizer(Backend.from_file(str(candidate)), os.path.abspath(path))
            except Exception as err:  # tokenizers raises plain Exception on malformed JSON
                raise DataError(f"{candidate}: not a valid tokenizer.json ({err})") from None
    raise DataError(f"{path}: no tokenizer.json found")


def require_transformers() -> Any:
    """The ``transformers`` module, or a clear error naming the extra that installs it."""
    try:
        import transformers
    except ImportError:
        raise GenzooError("Hugging Face models need the 'llm' extra: pip install 'genzoo[llm]'") from None
    transformers.utils.logging.disable_progress_bar()
    return transformers


def hf_tokenizer(name: str) -> Any:
    """The ``transformers`` tokenizer of a hub model or local folder (a fast one, so ``backend_tokenizer`` exists).

    ``Tokenizer(hf_tokenizer(name).backend_tokenizer, f"hf:{name}")`` is the genzoo tokenizer that reads text as
    that model does."""
    transformers = require_transformers()
    try:
        tok = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise GenzooError(f"cannot load the tokenizer of '{name}': {err}") from None
    if not getattr(tok, "is_fast", False):
        raise GenzooError(f"'{name}' has no fast (Rust) tokenizer; genzoo needs one to tokenise training text")
    return tok


def is_named_tokenizer(kind: str) -> bool:
    """Whether a ``tokenizer=`` value names a kind (``char``, ``bpe``, ``byte``, ``hf:NAME``) rather than a path."""
    return kind in BUILT_KINDS or kind.startswith("hf:")


def build_tokenizer(kind: str, train_text: str | bytes, all_text: str | bytes, vocab_size: int) -> Tokenizer:
    """The tokenizer a ``tokenizer=`` data option names, built for a corpus where it is built from one.

    ``char`` takes its alphabet from ``all_text`` (so held-out text never has unseen characters); ``bpe`` learns
    its merges from ``train_text`` only."""
    if kind == "char":
        return char_tokenizer(all_text if isinstance(all_text, str) else all_text.decode("utf-8", "replace"))
    if kind == "bpe":
        return bpe_tokenizer(train_text if isinstance(train_text, str) else train_text.decode("utf-8", "replace"),
                             vocab_size)
    if kind == "byte":
        return byte_tokenizer()
    if kind.startswith("hf:"):
        return Tokenizer(hf_tokenizer(kind[3:]).backend_tokenizer, kind)
    return load_tokenizer(kind)
