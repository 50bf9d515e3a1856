"""The text branch of `genzoo sample`: complete a prompt with a language model, printed whole or streamed."""

from __future__ import annotations

import sys
from typing import Any

from genzoo.contract import Capability
from genzoo.errors import GenzooError
from genzoo.generation import generation_config, stream_config


def sample_text(model: Any, *, prompt: str, seed: int, stream: bool = False, chat: bool = False,
                **options: Any) -> list[str]:
    """Print (and return) the completions of ``prompt``; ``options`` are generation controls, None = default.

    The prompt is echoed before its completion. With ``chat`` the prompt is a user message rendered by the model's
    chat template and only the answer is printed. With ``stream`` the text appears as it is generated.
    """
    options = {k: v for k, v in options.items() if v is not None}
    (stream_config if stream else generation_config)(seed=seed, **options)  # bad options fail before any output
    if chat:
        if Capability.CHAT not in model.capabilities:
            raise GenzooError(f"--chat needs a pretrained chat model (hf:NAME with a chat template); '{model.name}' "
                              "has no chat template")
        ids, echo = model.chat_prompt_ids([{"role": "user", "content": prompt}]), ""
    else:
        ids, echo = model.prompt_ids(prompt), prompt
    if stream:
        sys.stdout.write(echo)
        sys.stdout.flush()
        pieces = []
        for piece in model.stream_from_ids(ids, seed=seed, **options):
            pieces.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return ["".join(pieces)]
    texts = model.generate_from_ids(ids, seed=seed, **options)
    texts = texts if isinstance(texts, list) else [texts]
    for i, text in enumerate(texts):
        if len(texts) > 1:
            sys.stdout.write(f"--- completion {i + 1} ---\n")
        sys.stdout.write(echo + text + "\n")
    sys.stdout.flush()
    return texts
