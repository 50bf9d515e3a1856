"""The text branch of `genzoo sample`: complete a prompt with a language model, printed whole or streamed."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from genzoo.constrain import Choice, Constraint, Grammar, JsonSchema, Regex
from genzoo.constrain.verify import rejection_sample, verifier_from_spec
from genzoo.contract import Capability
from genzoo.data.grammar import GRAMMARS
from genzoo.errors import GenzooError
from genzoo.generation import TextGenerationMixin, stream_config


def sample_text(model: Any, *, prompt: str, seed: int, stream: bool = False, chat: bool = False,
                **options: Any) -> list[str]:
    """Print (and return) the completions of ``prompt``; ``options`` are generation controls, None = default.

    The prompt is echoed before its completion. With ``chat`` the prompt is a user message rendered by the model's
    chat template and only the answer is printed. With ``stream`` the text appears as it is generated.
    """
    options = {k: v for k, v in options.items() if v is not None}
    constraint, engine = options.pop("constraint", None), options.pop("engine", "auto")
    if stream and not isinstance(model, TextGenerationMixin):
        raise GenzooError(f"model '{model.name}' writes its answer whole, not token by token: leave out --stream")
    (stream_config if stream else model.generation_options)(seed=seed, **options)  # bad options fail before output
    if constraint is not None:  # only then: models with their own generate need not know the keywords
        options |= {"constraint": constraint, "engine": engine}
    if chat:
        if Capability.CHAT not in model.capabilities:
            raise GenzooError(f"--chat needs a pretrained chat model (hf:NAME with a chat template); '{model.name}' "
                              "has no chat template")
        ids, echo = model.chat_prompt_ids([{"role": "user", "content": prompt}]), ""
    else:
        ids, echo = model.prompt_ids(prompt), prompt if model.continues_prompt else ""
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
    details = {"return_details": True} if constraint is not None else {}
    outs = model.generate_from_ids(ids, seed=seed, **options, **details)
    outs = outs if isinstance(outs, list) else [outs]
    texts = [out.text if details else out for out in outs]
    for i, text in enumerate(texts):
        if len(texts) > 1:
            sys.stdout.write(f"--- completion {i + 1} ---\n")
        sys.stdout.write(echo + text + "\n")
        if details and outs[i].finish_reason == "length" and not outs[i].complete:
            sys.stderr.write(f"(completion {i + 1}: --max-new-tokens ran out before the constraint was complete)\n")
    sys.stdout.flush()
    return texts


def constraint_from_flags(*, regex: str | None = None, grammar: str | None = None, json_schema: str | None = None,
                          choice: str | None = None) -> Constraint | None:
    """The constraint ``--regex``, ``--grammar``, ``--json-schema`` or ``--choice`` names (at most one of them)."""
    given = {flag: value for flag, value in (("--regex", regex), ("--grammar", grammar),
                                             ("--json-schema", json_schema), ("--choice", choice)) if value is not None}
    if len(given) > 1:
        raise GenzooError(f"give one constraint, not {' and '.join(given)}")
    if regex is not None:
        return Regex(regex)
    if choice is not None:
        return Choice([c.strip() for c in choice.split(",")])
    if grammar is not None:
        if not Path(grammar).expanduser().is_file() and grammar in GRAMMARS:
            return Grammar.builtin(grammar)
        return Grammar.from_file(grammar)
    if json_schema is not None:
        path = Path(json_schema).expanduser()
        return JsonSchema.from_file(path) if not json_schema.lstrip().startswith("{") else JsonSchema(json_schema)
    return None


def verify_text(model: Any, *, prompt: str, seed: int, spec: str, tries: int, **options: Any) -> str | None:
    """``--verify``: draw completions until the verifier accepts one (at most ``tries``); print it and the cost."""
    options = {k: v for k, v in options.items() if v is not None}
    if options.get("constraint") is None:
        options.pop("constraint", None)
        options.pop("engine", None)
    report = rejection_sample(model, prompt, verifier_from_spec(spec), tries=tries, seed=seed, **options)
    if report.text is None:
        sys.stdout.write(f"no completion accepted; last reason: {report.reasons[-1]}\n")
    else:
        sys.stdout.write(prompt + report.text + "\n")
    sys.stderr.write(report.summary() + "\n")
    sys.stdout.flush()
    return report.text
