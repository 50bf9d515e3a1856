"""The text branch of `genzoo sample`: complete a prompt with a language model, printed whole or streamed."""

from __future__ import annotations

import sys
from typing import Any


def sample_text(model: Any, *, prompt: str, seed: int, stream: bool = False, **options: Any) -> list[str]:
    """Print (and return) the completions of ``prompt``; ``options`` are generation controls, None = default.

    The prompt is echoed before its completion. With ``stream`` the text appears as it is generated.
    """
    options = {k: v for k, v in options.items() if v is not None}
    if stream:
        sys.stdout.write(prompt)
        sys.stdout.flush()
        pieces = []
        for piece in model.stream(prompt, seed=seed, **options):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return ["".join(pieces)]
    texts = model.generate(prompt, seed=seed, **options)
    texts = texts if isinstance(texts, list) else [texts]
    for i, text in enumerate(texts):
        if len(texts) > 1:
            sys.stdout.write(f"--- completion {i + 1} ---\n")
        sys.stdout.write(prompt + text + "\n")
    sys.stdout.flush()
    return texts
