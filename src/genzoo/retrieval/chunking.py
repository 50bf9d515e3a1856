"""Documents -> overlapping chunks of characters, each remembering where it came from.

A chunk is at most ``size`` characters; its end moves back to the last whitespace in its second half so that words
are not cut (a text without such a space is cut at ``size``). The next chunk starts ``overlap`` characters before
the previous one ended, so consecutive chunks share exactly ``overlap`` characters and together they cover the whole
text: no character is lost. Chunks that are only whitespace are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from genzoo.errors import DataError
from genzoo.io import json_line_strings

#: document suffixes ``genzoo index build`` reads (``.jsonl``: one JSON object per line with a ``text`` field)
DOCUMENT_SUFFIXES = (".txt", ".md", ".jsonl")


@dataclass(frozen=True)
class Chunk:
    """``text == document[start:end]`` of document ``source``."""

    text: str
    source: str
    start: int
    end: int


def chunk_spans(text: str, size: int, overlap: int) -> list[tuple[int, int]]:
    """(start, end) of the chunks of ``text``: ends snap back to whitespace, consecutive chunks overlap by
    ``overlap``."""
    if size < 1 or not 0 <= overlap < size:
        raise DataError(f"chunking needs size >= 1 and 0 <= overlap < size (got size {size}, overlap {overlap})")
    spans, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            space = text.rfind(" ", start + size // 2, end)
            end = space + 1 if space > start + overlap else end  # the cut stays after the overlap: progress
        spans.append((start, end))
        if end == len(text):
            break
        start = end - overlap
    return spans


def chunk_document(text: str, source: str, size: int, overlap: int) -> list[Chunk]:
    """The non-blank chunks of one document."""
    return [Chunk(text[s:e], source, s, e) for s, e in chunk_spans(text, size, overlap) if text[s:e].strip()]


def read_documents(directory: str | Path, field: str = "text") -> dict[str, str]:
    """Every ``.txt``/``.md`` file under ``directory`` (recursively) and every line of its ``.jsonl`` files
    (the string ``field``), keyed by path relative to ``directory`` (``notes.jsonl:3`` for line 3)."""
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of documents")
    documents: dict[str, str] = {}
    for path in sorted(p for p in root.rglob("*") if p.suffix in DOCUMENT_SUFFIXES and p.is_file()):
        name = str(path.relative_to(root))
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
        if path.suffix != ".jsonl":
            documents[name] = text
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if line.strip():
                documents[f"{name}:{number}"] = _json_text(line, f"{path}:{number}", field)
    if not documents:
        raise DataError(f"{root}: no documents ({', '.join(DOCUMENT_SUFFIXES)} files)")
    return documents


def _json_text(line: str, where: str, field: str) -> str:
    return json_line_strings(line, where, (field,))[0]
