"""``grammar:NAME``: text sampled from a probabilistic context-free grammar shipped with genzoo, one string a line.

A model trained on it learns a language whose rules we know exactly, so its samples can be checked: the same
:class:`PCFG` gives the training text (:meth:`PCFG.sample`) and the Lark grammar (:meth:`PCFG.lark`) that
constrained decoding (``genzoo.constrain.Grammar.builtin(NAME)``) and validity checks use — one source of truth.

A rule is a list of (probability, expansion) alternatives; an expansion is a sequence of symbols: a lowercase
rule name, a quoted literal (``'"("'``) or an uppercase terminal with a regex and a sampler. Past ``max_depth``
nested rules, sampling takes the alternative with the shortest derivation, so every sample is finite.

Grammars: ``brackets`` (balanced ``()``, ``[]``, ``{}``), ``arith`` (integer arithmetic with ``+ - * /`` and
parentheses), ``json`` (small JSON records: lowercase keys, short strings, integers, booleans, null, nested records
and lists; every line is valid JSON). The text options are the ``text:`` ones (``grammar:arith#context=32,
tokenizer=char``); the corpus is ``CORPUS_CHARS`` characters of strings drawn with a fixed seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property

from genzoo.data.specs import DataOptions, register_loader
from genzoo.data.text import TokenDataset, text_dataset
from genzoo.errors import DataError

#: characters of text in a ``grammar:NAME`` corpus (then split 90/5/5 like any text)
CORPUS_CHARS = 150_000
#: the seed of the corpus: the same spec always reads the same text
CORPUS_SEED = 0

Alternative = tuple[float, tuple[str, ...]]


@dataclass(frozen=True)
class Terminal:
    """A terminal: its regex (for the Lark grammar) and a sampler of strings it matches."""

    regex: str
    sample: Callable[[random.Random], str]


@dataclass(frozen=True)
class PCFG:
    """A probabilistic context-free grammar: ``rules[name]`` are weighted alternatives; ``start`` is the top rule."""

    name: str
    rules: dict[str, list[Alternative]]
    terminals: dict[str, Terminal] = field(default_factory=dict)
    start: str = "start"
    max_depth: int = 8

    def lark(self) -> str:
        """The grammar as Lark text (start rule ``start``), for parsing and constrained decoding."""
        lines = [f"{name}: " + " | ".join(" ".join(symbols) for _, symbols in alts)
                 for name, alts in self.rules.items()]
        lines += [f"{name}: /{t.regex}/" for name, t in self.terminals.items()]
        return "\n".join(lines) + "\n"

    def sample(self, rng: random.Random) -> str:
        """One string of the language, drawn top-down by the rule probabilities."""
        out: list[str] = []
        self._expand(self.start, 0, rng, out)
        return "".join(out)

    def _expand(self, symbol: str, depth: int, rng: random.Random, out: list[str]) -> None:
        if symbol.startswith('"'):
            out.append(symbol[1:-1])
        elif symbol in self.terminals:
            out.append(self.terminals[symbol].sample(rng))
        else:
            alts = self.rules[symbol]
            if depth >= self.max_depth:
                symbols = min(alts, key=lambda alt: self._height(alt[1]))[1]
            else:
                symbols = rng.choices([s for _, s in alts], weights=[p for p, _ in alts])[0]
            for s in symbols:
                self._expand(s, depth + 1, rng, out)

    def _height(self, symbols: tuple[str, ...]) -> int:
        """Height of the shortest derivation of a sequence of symbols."""
        return 1 + max((self._heights[s] for s in symbols if s in self.rules), default=0)

    @cached_property
    def _heights(self) -> dict[str, int]:
        heights: dict[str, int] = {}
        for _ in self.rules:  # a fixpoint: each round settles at least one more rule
            for name, alts in self.rules.items():
                known = [1 + max((heights.get(s, 10**9) for s in syms if s in self.rules), default=0)
                         for _, syms in alts]
                heights[name] = min(known)
        return heights


def _words(*words: str) -> Callable[[random.Random], str]:
    return lambda rng: f'"{rng.choice(words)}"'


GRAMMARS: dict[str, PCFG] = {
    "brackets": PCFG("brackets", {
        "start": [(1.0, ("pair", "seq"))],
        "seq": [(0.45, ()), (0.55, ("pair", "seq"))],
        "pair": [(0.5, ('"("', "seq", '")"')), (0.3, ('"["', "seq", '"]"')), (0.2, ('"{"', "seq", '"}"'))],
    }, max_depth=10),
    "arith": PCFG("arith", {
        "start": [(1.0, ("expr",))],
        "expr": [(0.6, ("term",)), (0.2, ("expr", '"+"', "term")), (0.2, ("expr", '"-"', "term"))],
        "term": [(0.65, ("factor",)), (0.2, ("term", '"*"', "factor")), (0.15, ("term", '"/"', "factor"))],
        "factor": [(0.8, ("NUMBER",)), (0.2, ('"("', "expr", '")"'))],
    }, {"NUMBER": Terminal("0|[1-9][0-9]?", lambda rng: str(rng.randint(1, 12)))}),
    "json": PCFG("json", {
        "start": [(1.0, ("object",))],
        "object": [(0.1, ('"{"', '"}"')), (0.9, ('"{"', "members", '"}"'))],
        "members": [(0.45, ("pair",)), (0.55, ("pair", '","', "members"))],
        "pair": [(1.0, ("KEY", '":"', "value"))],
        "value": [(0.3, ("STRING",)), (0.3, ("NUMBER",)), (0.07, ('"true"',)), (0.07, ('"false"',)),
                  (0.06, ('"null"',)), (0.1, ("object",)), (0.1, ("array",))],
        "array": [(0.15, ('"["', '"]"')), (0.85, ('"["', "elements", '"]"'))],
        "elements": [(0.5, ("value",)), (0.5, ("value", '","', "elements"))],
    }, {"KEY": Terminal('"[a-z]+"', _words("id", "name", "age", "tags", "ok", "score", "city", "items")),
        "STRING": Terminal('"[a-z]*"', _words("", "alice", "bob", "paris", "red", "blue", "x", "yes")),
        "NUMBER": Terminal("-?(0|[1-9][0-9]*)", lambda rng: str(rng.randint(-5, 100)))}, max_depth=6),
}


def pcfg(name: str) -> PCFG:
    """The built-in grammar ``name``, or a clear error listing them."""
    if name not in GRAMMARS:
        raise DataError(f"unknown grammar '{name}' (built in: {', '.join(GRAMMARS)})")
    return GRAMMARS[name]


def corpus(name: str, chars: int | None = None, seed: int = CORPUS_SEED) -> str:
    """Strings of grammar ``name``, one a line, until the text has ``chars`` (default ``CORPUS_CHARS``) characters
    (empty strings skipped)."""
    grammar, rng = pcfg(name), random.Random(seed)
    chars = CORPUS_CHARS if chars is None else chars
    lines: list[str] = []
    total = 0
    while total < chars:
        line = grammar.sample(rng)
        if line:
            lines.append(line)
            total += len(line) + 1
    return "\n".join(lines)


@register_loader("grammar", f"grammar:NAME[#context=..,tokenizer=..]  strings of a built-in grammar "
                            f"({', '.join(GRAMMARS)}), one a line", options=("context", "tokenizer", "vocab_size"),
                 path_arg=False)
def load_grammar(arg: str | None, options: DataOptions) -> TokenDataset:
    if not arg:
        raise DataError(f"grammar: needs a name, e.g. grammar:arith (built in: {', '.join(GRAMMARS)})")
    dataset = text_dataset(corpus(arg), options, f"grammar:{arg}")
    dataset.info.extra["grammar"] = arg
    return dataset
