"""The fast engine: llguidance (Rust; the optional ``constrain-fast`` extra) behind the reference engine's interface.

It runs when installed and able: :func:`unavailable` says why not otherwise, and ``engine="auto"`` then falls back
to the reference engine (``engine="fast"`` refuses, naming the reason). Its limits, checked before use:

* JSON Schema: every keyword must be in genzoo's supported subset (:mod:`genzoo.constrain.schema`), and node shapes
  that fast engines are known to compile wrongly are refused (``required`` names missing from ``properties``:
  an object with ``required`` but no ``properties`` compiling to the empty object only); the per-keyword tests
  check that each constraint actually bites;
* stop strings ending a constrained text inside a token are the reference engine's;
* grammars must be llguidance's Lark dialect (checked by compiling them).

The vocabulary is handed over as bytes (:func:`~genzoo.constrain.engine.token_bytes`); a model without an
end-of-sequence id (``gpt``, ``lstm``) gets a virtual one past its vocabulary, whose bit only says the text is
complete.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from genzoo.constrain.constraints import Constraint, Grammar, JsonSchema
from genzoo.constrain.engine import token_bytes
from genzoo.errors import ConfigError
from genzoo.tokenizer import Tokenizer


def fast_schema_problem(schema: Any, path: str = "#") -> str | None:
    """Why the fast engine cannot be trusted with ``schema`` (a node shape it compiles wrongly), or None."""
    if not isinstance(schema, dict):
        return None
    missing = [n for n in schema.get("required") or [] if n not in (schema.get("properties") or {})]
    if missing:
        return f"'required' names {missing} without 'properties' at {path}"
    subs = [(f"{path}/{k}/{n}", s) for k in ("properties", "$defs", "definitions")
            for n, s in (schema.get(k) or {}).items()]
    subs += [(f"{path}/anyOf/{i}", s) for i, s in enumerate(schema.get("anyOf") or [])]
    subs += [(f"{path}/items", schema["items"])] if isinstance(schema.get("items"), dict) else []
    return next((p for sub_path, sub in subs if (p := fast_schema_problem(sub, sub_path))), None)


def unavailable(constraint: Constraint, tokenizer: Tokenizer, stop: tuple[str, ...]) -> str | None:
    """Why the fast engine cannot run ``constraint`` here (None: it can)."""
    try:
        import llguidance.torch  # noqa: F401 - the bitmask helpers need torch support too
    except ImportError:
        return "llguidance is not installed (pip install 'genzoo[constrain-fast]')"
    if stop:
        return "stop strings ending a constrained text are handled by the reference engine only"
    if isinstance(constraint, JsonSchema):
        problem = fast_schema_problem(constraint.schema)
        if problem:
            return problem
    elif isinstance(constraint, Grammar) and constraint.terminal_fsms:
        return "the grammar has automaton terminals"
    from llguidance import LLMatcher

    error = LLMatcher.validate_grammar(constraint.llguidance_grammar(), _lltokenizer(tokenizer, tokenizer.vocab_size))
    return f"llguidance rejects the constraint: {error}" if error else None


_TOKENIZERS: dict[tuple[str, int, int | None], Any] = {}


def _lltokenizer(tokenizer: Tokenizer, vocab_out: int, eos: int | None = None) -> Any:
    """The llguidance tokenizer of a vocabulary: its tokens' bytes, ``eos`` (or a virtual one at ``vocab_out``)."""
    key = (tokenizer.sha256, vocab_out, eos)
    if key not in _TOKENIZERS:
        from llguidance import LLTokenizer, TokenizerWrapper

        raw = token_bytes(tokenizer, vocab_out)
        special = [i for i, b in enumerate(raw) if not b]
        tokens = [b if b else f"<|special {i}|>".encode() for i, b in enumerate(raw)]
        if eos is None:
            eos = len(tokens)
            tokens.append(b"<|end|>")
            special.append(eos)

        class Vocab:
            eos_token_id, bos_token_id, special_token_ids = eos, None, special

            def __init__(self) -> None:
                self.tokens = tokens

            def __call__(self, text: bytes) -> list[int]:
                return tokenizer.backend.encode(text.decode("utf-8", "replace"), add_special_tokens=False).ids

        _TOKENIZERS[key] = LLTokenizer(TokenizerWrapper(Vocab()))
    return _TOKENIZERS[key]


class FastCompiled:
    """A constraint compiled by llguidance for one vocabulary."""

    engine = "fast"

    def __init__(self, constraint: Constraint, tokenizer: Tokenizer, vocab_out: int, eos_ids: frozenset[int]) -> None:
        from llguidance import LLMatcher

        self.constraint, self.vocab_out = constraint, vocab_out
        self.eos_ids = frozenset(i for i in eos_ids if i < vocab_out)
        self.eos = min(self.eos_ids) if self.eos_ids else None
        self.lltok = _lltokenizer(tokenizer, vocab_out, self.eos)
        self.grammar = constraint.llguidance_grammar()
        error = LLMatcher.validate_grammar(self.grammar, self.lltok)
        if error:
            raise ConfigError(f"llguidance rejects {constraint!r}: {error}")
        self.end = self.eos if self.eos is not None else vocab_out  # the id whose bit says "complete"

    def matcher(self) -> FastMatcher:
        return FastMatcher(self)


class FastMatcher:
    def __init__(self, compiled: FastCompiled) -> None:
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask

        self.compiled = compiled
        self.matcher = LLMatcher(compiled.lltok, compiled.grammar)
        self.bitmask = allocate_token_bitmask(1, compiled.lltok.vocab_size)
        self.shifts = torch.arange(32, dtype=torch.int32)
        self._mask: Tensor | None = None
        self.finished = False

    def _full_mask(self) -> Tensor:
        from llguidance.torch import fill_next_token_bitmask

        if self._mask is None:
            fill_next_token_bitmask(self.matcher, self.bitmask, 0)
            bits = (self.bitmask[0][:, None] >> self.shifts) & 1
            self._mask = bits.flatten()[: self.compiled.lltok.vocab_size].bool()
        return self._mask

    def allowed(self) -> Tensor:
        full = self._full_mask()
        mask = full[: self.compiled.vocab_out].clone()
        if self.compiled.eos is not None:
            mask[list(self.compiled.eos_ids)] = bool(full[self.compiled.eos])
        return mask

    def advance(self, token: int) -> None:
        if token in self.compiled.eos_ids:
            self.finished = True
            return
        if not self.matcher.consume_token(token):
            raise ConfigError(f"token {token} breaks {self.compiled.constraint!r}: {self.matcher.get_error()}")
        self._mask = None
        full = self._full_mask()
        # a complete text nothing can extend ends here when no end-of-sequence id can be chosen
        only_end = bool(full[self.compiled.end]) and int(full.sum()) == 1
        self.finished = self.compiled.eos is None and (only_end or self.matcher.is_stopped())

    def accepts(self, raw_ids: list[int]) -> bool:
        """Whether the token ids form a complete text (for tests: the constraint bites)."""
        for t in raw_ids:
            if not self.matcher.consume_token(t):
                return False
        return bool(self.matcher.is_accepting())
