"""Constraints compiled for a tokenizer: which tokens may come next (a mask over the vocabulary) at each step.

The reference engine (ours):

* every token's text as bytes (:func:`token_bytes`: byte-level tokens map back through GPT-2's byte table, so a
  token may hold part of a UTF-8 character), arranged in a prefix tree (:class:`Vocabulary`);
* the constraint's character automaton (:mod:`genzoo.constrain.automata`) read byte by byte (:class:`ByteWalker`:
  a partial UTF-8 character is kept pending while some character it can start is allowed);
* the mask of a state is a depth-first walk of the tree that stops wherever the automaton dies, so a token is
  allowed exactly when its whole text keeps a completion possible. Transitions and masks are memoised per state.

End-of-sequence ids are allowed only in accepting states. A token containing a stop string ends the text there: it
is allowed only when the text before the stop string is complete. When nothing can follow a complete text and the
model has no end-of-sequence id, the matcher is finished by itself.

:func:`compile_constraint` picks the engine: ``"reference"``, ``"fast"`` (llguidance, :mod:`genzoo.constrain.fast`)
or ``"auto"`` (fast when installed and able to handle the tokenizer and every keyword of the constraint, else the
reference).
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from genzoo.constrain.constraints import Constraint
from genzoo.errors import ConfigError, GenzooError
from genzoo.tokenizer import Tokenizer, byte_symbols

Engine = Literal["auto", "reference", "fast"]


class Matcher(Protocol):
    """The constraint state of one sequence being generated."""

    finished: bool

    def allowed(self) -> Tensor:
        """(V,) bool: the tokens that may come next."""
        ...

    def advance(self, token: int) -> None:
        """Take the chosen token (one :meth:`allowed` allowed)."""
        ...


class CompiledConstraint(Protocol):
    engine: str

    def matcher(self) -> Matcher: ...


# ----- the vocabulary -----------------------------------------------------------------------------------------------
def token_bytes(tokenizer: Tokenizer, vocab_out: int) -> list[bytes | None]:
    """The bytes each output id writes (None: a special token, or an id the tokenizer does not have)."""
    backend = tokenizer.backend
    spec = json.loads(backend.to_str())
    decoder = json.dumps(spec.get("decoder"))
    special = {i for i, tok in backend.get_added_tokens_decoder().items() if tok.special}
    byte_level = '"ByteLevel"' in decoder
    table = {ch: b for b, ch in enumerate(byte_symbols())} if byte_level else {}
    out: list[bytes | None] = [None] * vocab_out
    for text, i in backend.get_vocab().items():
        if i >= vocab_out or i in special:
            continue
        if byte_level:
            out[i] = bytes(table[c] for c in text) if all(c in table for c in text) else text.encode()
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):  # sentencepiece byte fallback
            out[i] = bytes([int(text[3:5], 16)])
        else:
            out[i] = text.replace("\u2581", " ").encode()  # sentencepiece writes a space as U+2581
    return out


class Node:
    __slots__ = ("children", "ids")

    def __init__(self) -> None:
        self.children: dict[int, Node] = {}
        self.ids: list[int] = []


class Vocabulary:
    """The tokens as a byte prefix tree, and the tokens holding a stop string (with the bytes before it)."""

    def __init__(self, tokens: list[bytes | None], stop: tuple[str, ...] = ()) -> None:
        self.size = len(tokens)
        self.tokens = tokens
        self.root = Node()
        #: (id, bytes before the first stop string) of tokens holding one
        self.stop_tokens: list[tuple[int, bytes]] = []
        stops = [s.encode() for s in stop if s]
        for i, raw in enumerate(tokens):
            if not raw:  # special or empty tokens write nothing: never allowed as text
                continue
            cut = min((k for k in (raw.find(s) for s in stops) if k >= 0), default=-1)
            if cut >= 0:
                self.stop_tokens.append((i, raw[:cut]))
                continue
            node = self.root
            for b in raw:
                node = node.children.setdefault(b, Node())
            node.ids.append(i)
        self.stop_ids = frozenset(i for i, _ in self.stop_tokens)


_VOCABS: dict[tuple[str, int, tuple[str, ...]], Vocabulary] = {}


def vocabulary(tokenizer: Tokenizer, vocab_out: int, stop: tuple[str, ...] = ()) -> Vocabulary:
    """The (cached) :class:`Vocabulary` of a tokenizer."""
    key = (tokenizer.sha256, vocab_out, tuple(stop))
    if key not in _VOCABS:
        _VOCABS[key] = Vocabulary(token_bytes(tokenizer, vocab_out), tuple(stop))
    return _VOCABS[key]


# ----- the automaton over bytes -------------------------------------------------------------------------------------
def _utf8_length(lead: int) -> int | None:
    if 0xC2 <= lead <= 0xDF:
        return 2
    if 0xE0 <= lead <= 0xEF:
        return 3
    if 0xF0 <= lead <= 0xF4:
        return 4
    return None


class ByteWalker:
    """A character recogniser read byte by byte: state = (recogniser state, pending bytes of a partial character)."""

    def __init__(self, constraint: Constraint) -> None:
        self.rec = constraint.recognizer
        self.literals = constraint.literal_chars()
        self.initial = (self.rec.initial, b"")
        self._memo: dict[tuple[Any, int], Any] = {}

    def step(self, state: Any, byte: int) -> Any | None:
        key = (state, byte)
        if key in self._memo:
            return self._memo[key]
        nxt = self._memo[key] = self._step(state, byte)
        return nxt

    def _step(self, state: Any, byte: int) -> Any | None:
        rstate, pending = state
        if not pending and byte < 0x80:
            nxt = self.rec.step(rstate, chr(byte))
            return None if nxt is None else (nxt, b"")
        buf = pending + bytes([byte])
        need = _utf8_length(buf[0])
        if need is None or (len(buf) > 1 and not 0x80 <= byte <= 0xBF):
            return None
        if len(buf) == need:
            try:
                ch = buf.decode("utf-8")
            except UnicodeDecodeError:
                return None
            nxt = self.rec.step(rstate, ch)
            return None if nxt is None else (nxt, b"")
        return (*state[:1], buf) if any(self.rec.step(rstate, c) is not None for c in self._probes(buf)) else None

    def _probes(self, buf: bytes) -> list[str]:
        """Characters starting with the bytes ``buf``: those the constraint writes, and a few synthetic ones."""
        need = _utf8_length(buf[0]) or 1
        probes = [c for c in self.literals if c.encode().startswith(buf)]
        for fill in (0x80, 0x90, 0xA0, 0xBF):
            with contextlib.suppress(UnicodeDecodeError):
                probes.append((buf + bytes([fill] * (need - len(buf)))).decode("utf-8"))
        return probes

    def walk(self, state: Any, raw: bytes) -> Any | None:
        for b in raw:
            state = self.step(state, b)
            if state is None:
                return None
        return state

    def accepting(self, state: Any) -> bool:
        return not state[1] and self.rec.accepting(state[0])


# ----- the reference engine -----------------------------------------------------------------------------------------
class ReferenceCompiled:
    """A constraint compiled for one vocabulary by the reference engine: memoised masks per automaton state."""

    engine = "reference"

    def __init__(self, constraint: Constraint, vocab: Vocabulary, eos_ids: frozenset[int]) -> None:
        self.constraint, self.vocab = constraint, vocab
        self.eos_ids = frozenset(i for i in eos_ids if i < vocab.size)
        self.walker = ByteWalker(constraint)
        self._masks: dict[Any, tuple[Tensor, bool]] = {}
        if not self.mask(self.walker.initial)[0].any():
            raise GenzooError(f"no token of this vocabulary can start a text that satisfies {constraint!r}")

    def matcher(self) -> ReferenceMatcher:
        return ReferenceMatcher(self)

    def mask(self, state: Any) -> tuple[Tensor, bool]:
        """(allowed tokens, whether any token continues the text) in ``state``; memoised."""
        if state not in self._masks:
            self._masks[state] = self._mask(state)
        return self._masks[state]

    def _mask(self, state: Any) -> tuple[Tensor, bool]:
        step = self.walker.step
        ids: list[int] = []
        todo = [(self.vocab.root, state)]
        while todo:
            node, s = todo.pop()
            for byte, child in node.children.items():
                nxt = step(s, byte)
                if nxt is None:
                    continue
                ids.extend(child.ids)
                if child.children:
                    todo.append((child, nxt))
        continues = bool(ids)
        for i, before in self.vocab.stop_tokens:
            end = self.walker.walk(state, before)
            if end is not None and self.walker.accepting(end):
                ids.append(i)
        if self.walker.accepting(state):
            ids.extend(self.eos_ids)
        mask = torch.zeros(self.vocab.size, dtype=torch.bool)
        mask[ids] = True
        return mask, continues


class ReferenceMatcher:
    def __init__(self, compiled: ReferenceCompiled) -> None:
        self.compiled = compiled
        self.state = compiled.walker.initial
        self.finished = False

    def allowed(self) -> Tensor:
        mask, _ = self.compiled.mask(self.state)
        if not mask.any():
            raise GenzooError(f"no token of this vocabulary continues the text validly under "
                              f"{self.compiled.constraint!r}: the tokenizer cannot write what must come next")
        return mask

    def advance(self, token: int) -> None:
        compiled = self.compiled
        raw = compiled.vocab.tokens[token] if token < compiled.vocab.size else None
        if token in compiled.eos_ids or token in compiled.vocab.stop_ids:
            self.finished = True
            return
        nxt = None if raw is None else compiled.walker.walk(self.state, raw)
        if nxt is None:
            raise GenzooError(f"token {token} breaks {compiled.constraint!r}: it was not allowed")
        self.state = nxt
        _, continues = compiled.mask(nxt)
        # a complete text nothing can extend ends here when no end-of-sequence id can be chosen
        self.finished = not continues and not compiled.eos_ids and compiled.walker.accepting(nxt)


# ----- choosing an engine -------------------------------------------------------------------------------------------
def compile_constraint(constraint: Constraint, tokenizer: Tokenizer, vocab_out: int, eos_ids: frozenset[int],
                       stop: tuple[str, ...] = (), engine: Engine = "auto") -> CompiledConstraint:
    """``constraint`` compiled for a model's tokenizer and output size (cached on the constraint).

    ``engine="auto"`` uses the fast engine when llguidance is installed and can run this constraint on this
    tokenizer (every schema keyword checked), else the reference one.
    """
    if not isinstance(constraint, Constraint):
        raise ConfigError(f"constraint must be Choice, Regex, Grammar or JsonSchema, got {type(constraint).__name__}")
    if engine not in ("auto", "reference", "fast"):
        raise ConfigError(f"unknown constraint engine '{engine}' (auto, reference or fast)")
    cache: dict[Any, CompiledConstraint] = constraint.__dict__.setdefault("_compiled", {})
    key = (tokenizer.sha256, vocab_out, eos_ids, tuple(stop), engine)
    if key not in cache:
        cache[key] = _compile(constraint, tokenizer, vocab_out, eos_ids, tuple(stop), engine)
    return cache[key]


def _compile(constraint: Constraint, tokenizer: Tokenizer, vocab_out: int, eos_ids: frozenset[int],
             stop: tuple[str, ...], engine: Engine) -> CompiledConstraint:
    if engine != "reference":
        from genzoo.constrain import fast

        reason = fast.unavailable(constraint, tokenizer, stop)
        if reason is None:
            return fast.FastCompiled(constraint, tokenizer, vocab_out, eos_ids)
        if engine == "fast":
            raise ConfigError(f"the fast constraint engine cannot run {constraint!r}: {reason}")
    return ReferenceCompiled(constraint, vocabulary(tokenizer, vocab_out, stop), eos_ids)
