"""Input and output filters for text requests, pluggable: anything with a ``name`` and ``find(text)`` returning
where and why the text may not pass (or None).

A prompt that trips a filter is refused (400, code ``content_filter``); a completion that trips one is cut where it
trips and ends with ``finish_reason: "content_filter"``, OpenAI's convention. Shipped: :class:`BlockList`.
"""

from __future__ import annotations

import re
from typing import Protocol


class Guardrail(Protocol):
    name: str

    def find(self, text: str) -> tuple[int, str] | None:
        """(index where the offending text starts, why) for the first offence in ``text``, or None."""


class BlockList:
    """Blocks the listed words or phrases (whole words, case-insensitive)."""

    name = "block-list"

    def __init__(self, phrases: list[str]) -> None:
        self.phrases = [p for p in (phrase.strip() for phrase in phrases) if p]
        alternatives = "|".join(re.escape(p) for p in sorted(self.phrases, key=len, reverse=True))
        self.pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE) if self.phrases else None

    def find(self, text: str) -> tuple[int, str] | None:
        found = self.pattern.search(text) if self.pattern else None
        return None if found is None else (found.start(), f"a blocked phrase ('{found.group(0)}')")


def first_offence(guardrails: list[Guardrail], text: str) -> tuple[int, str] | None:
    """The earliest offence any guardrail finds in ``text``."""
    hits = [hit for hit in (g.find(text) for g in guardrails) if hit is not None]
    return min(hits) if hits else None
