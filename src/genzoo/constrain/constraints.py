"""Constraints on generated text: :class:`Choice`, :class:`Regex`, :class:`Grammar` and :class:`JsonSchema`.

A constraint describes a set of strings (a language). ``recognizer()`` is its character-level automaton for the
reference engine (:mod:`genzoo.constrain.automata`), ``matches(text)`` says whether a whole text belongs to it, and
``llguidance_grammar()`` is its form for the optional fast engine. Compiling it for a tokenizer into per-step token
masks is :func:`genzoo.constrain.engine.compile_constraint`.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from genzoo.constrain.automata import GrammarRecognizer, Recognizer, RegexRecognizer, matches
from genzoo.constrain.schema import SchemaCompiler, pattern_fsm
from genzoo.errors import ConfigError

#: consecutive whitespace characters a grammar or schema may emit between tokens (runaway whitespace is capped)
MAX_WHITESPACE = 8

_REGEX_SPECIAL = set("\\.^$*+?{}[]|()/")


def escape(text: str) -> str:
    """``text`` as a regex matching exactly it (only the metacharacters are escaped, as interegular reads them)."""
    return "".join(f"\\{c}" if c in _REGEX_SPECIAL else c for c in text)


class Constraint:
    """A set of allowed texts. Subclasses give :meth:`_recognizer` and :meth:`llguidance_grammar`."""

    kind = "constraint"

    @cached_property
    def recognizer(self) -> Recognizer:
        """The character-level automaton (built once)."""
        return self._recognizer()

    def _recognizer(self) -> Recognizer:
        raise NotImplementedError

    def matches(self, text: str) -> bool:
        """Whether ``text`` is a complete member of the language."""
        return matches(self.recognizer, text)

    def llguidance_grammar(self) -> str:
        """The constraint as an llguidance grammar (JSON text), for the fast engine."""
        raise NotImplementedError

    def literal_chars(self) -> str:
        """Non-ASCII characters written in the constraint: probes for byte-level tokens that split a character."""
        return "".join(sorted({c for c in self.source() if ord(c) > 127}))

    def source(self) -> str:
        raise NotImplementedError


class Regex(Constraint):
    """Texts that fully match a regular expression (Python syntax without look-around or back-references)."""

    kind = "regex"

    def __init__(self, pattern: str) -> None:
        if not isinstance(pattern, str):
            raise ConfigError(f"Regex needs a pattern string, got {type(pattern).__name__}")
        self.pattern = pattern
        self.recognizer  # noqa: B018 - compile now, so a bad pattern fails where it is written

    def __repr__(self) -> str:
        return f"Regex({self.pattern!r})"

    def _recognizer(self) -> Recognizer:
        return RegexRecognizer(self.pattern)

    def source(self) -> str:
        return self.pattern

    def llguidance_grammar(self) -> str:
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_regex(self.pattern)


class Choice(Regex):
    """Exactly one of the given strings."""

    kind = "choice"

    def __init__(self, options: list[str] | tuple[str, ...]) -> None:
        options = list(options)
        if not options or not all(isinstance(o, str) for o in options):
            raise ConfigError(f"Choice needs a non-empty list of strings, got {options!r}")
        self.options = options
        super().__init__("|".join(f"({escape(o)})" for o in options))

    def __repr__(self) -> str:
        return f"Choice({self.options!r})"


class Grammar(Constraint):
    """Texts of a context-free grammar in Lark syntax (LALR(1), start rule ``start``; ``%ignore`` allowed).

    ``Grammar.builtin("arith")`` is the grammar of the ``grammar:arith`` data; ``Grammar.from_file(path)`` reads a
    ``.lark`` file.
    """

    kind = "grammar"

    def __init__(self, lark: str, max_whitespace: int = MAX_WHITESPACE, terminal_fsms: dict[str, Any] | None = None
                 ) -> None:
        if not isinstance(lark, str) or not lark.strip():
            raise ConfigError("Grammar needs Lark grammar text (with a 'start' rule)")
        self.lark, self.max_whitespace = lark, max_whitespace
        self.terminal_fsms = terminal_fsms or {}
        self.recognizer  # noqa: B018 - compile now, so a bad grammar fails where it is written

    def __repr__(self) -> str:
        return f"Grammar({self.lark[:40]!r}...)"

    @classmethod
    def builtin(cls, name: str) -> Grammar:
        """The grammar of ``grammar:NAME`` data (``brackets``, ``arith``, ``json``)."""
        from genzoo.data.grammar import pcfg

        return cls(pcfg(name).lark())

    @classmethod
    def from_file(cls, path: str | Path) -> Grammar:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such grammar file")
        return cls(path.read_text(encoding="utf-8"))

    def _recognizer(self) -> Recognizer:
        return GrammarRecognizer(self.lark, self.max_whitespace, self.terminal_fsms)

    def source(self) -> str:
        return self.lark

    def llguidance_grammar(self) -> str:
        if self.terminal_fsms:
            raise ConfigError("this grammar has automaton terminals, which only the reference engine runs")
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_lark(self.lark)


class JsonSchema(Grammar):
    """JSON texts valid under a JSON Schema (the subset documented in :mod:`genzoo.constrain.schema`)."""

    kind = "json_schema"

    def __init__(self, schema: dict[str, Any] | bool | str, max_whitespace: int = MAX_WHITESPACE) -> None:
        if isinstance(schema, str):
            try:
                schema = json.loads(schema)
            except json.JSONDecodeError as err:
                raise ConfigError(f"the JSON Schema is not valid JSON: {err}") from None
        if not isinstance(schema, dict | bool):
            raise ConfigError(f"a JSON Schema is an object or a boolean, got {type(schema).__name__}")
        self.schema = schema
        compiler = SchemaCompiler(schema)
        lark = compiler.compile()
        fsms = {name: pattern_fsm(*spec) for name, spec in compiler.pattern_terminals.items()}
        super().__init__(lark, max_whitespace, fsms)

    def __repr__(self) -> str:
        return f"JsonSchema({json.dumps(self.schema)[:60]})"

    @classmethod
    def from_file(cls, path: str | Path) -> JsonSchema:
        path = Path(path).expanduser()
        if not path.is_file():
            raise ConfigError(f"{path}: no such JSON Schema file")
        return cls(path.read_text(encoding="utf-8"))

    def source(self) -> str:
        return json.dumps(self.schema, ensure_ascii=False)

    def llguidance_grammar(self) -> str:
        from llguidance import LLMatcher

        return LLMatcher.grammar_from_json_schema(self.schema, defaults={"whitespace_flexible": False})
