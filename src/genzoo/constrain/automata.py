"""Character-level recognisers of the reference engine: an incremental regex automaton and an incremental parser.

A recogniser reads text one character at a time: ``step(state, ch)`` returns the next state, or None when no
completion of the text read so far can be accepted (the state is *dead*); ``accepting(state)`` says whether the
text read so far is complete. States are hashable, so the engine can memoise transitions and token masks.

* :class:`RegexRecognizer` runs the minimal DFA of a regular expression (``interegular``); only *live* states
  (those from which an accepting state is reachable) are returned.
* :class:`GrammarRecognizer` runs a Lark grammar: lark builds the LALR(1) parse table, and this module lexes and
  parses incrementally. A state is a set of hypotheses ``(parser stack, current lexeme, whitespace run)``: the
  lexeme is the set of terminals (each with its DFA state) the characters since the last terminal can still be;
  a terminal closes by maximal munch (only when the next character cannot extend any candidate), as lark's
  contextual lexer does. Candidates are the terminals the parser accepts in its current state plus the ``%ignore``
  ones; an ignored run longer than ``max_whitespace`` characters is dead (runaway whitespace is capped).
"""

from __future__ import annotations

from typing import Any, Protocol

from genzoo.errors import ConfigError


class Recognizer(Protocol):
    initial: Any

    def step(self, state: Any, ch: str) -> Any | None: ...

    def accepting(self, state: Any) -> bool: ...


class RegexRecognizer:
    """The minimal DFA of ``pattern`` (full match), stepping only into live states."""

    def __init__(self, pattern: str, fsm: Any = None) -> None:
        import interegular

        if fsm is None:
            try:
                fsm = interegular.parse_pattern(pattern).to_fsm()
            except Exception as err:  # interegular raises its own parse errors and NotImplementedError
                raise ConfigError(f"cannot compile the regular expression {pattern!r}: {err}") from None
        self.pattern, self.fsm = pattern, fsm
        self.initial: int = fsm.initial
        self.live = _live_states(fsm)
        self._finals = fsm.finals
        self._map = fsm.map
        self._alphabet = fsm.alphabet
        self._symbol: dict[str, Any] = {}

    def step(self, state: int, ch: str) -> int | None:
        if ch not in self._symbol:
            try:
                self._symbol[ch] = self._alphabet[ch]
            except KeyError:  # a character the pattern never allows (no 'anything else' transition)
                self._symbol[ch] = None
        nxt = self._map[state].get(self._symbol[ch])
        return nxt if nxt in self.live else None

    def accepting(self, state: int) -> bool:
        return state in self._finals


def _live_states(fsm: Any) -> frozenset[int]:
    """States from which a final state is reachable (backwards search from the finals)."""
    into: dict[int, set[int]] = {}
    for src, moves in fsm.map.items():
        for dst in moves.values():
            into.setdefault(dst, set()).add(src)
    live, todo = set(fsm.finals), list(fsm.finals)
    while todo:
        for src in into.get(todo.pop(), ()):
            if src not in live:
                live.add(src)
                todo.append(src)
    return frozenset(live)


Stack = tuple[int, ...]
Lexeme = tuple[tuple[str, int], ...]
Hypothesis = tuple[Stack, Lexeme, int]


def _no_lexer() -> type:
    from lark.lexer import Lexer

    class NoLexer(Lexer):
        def __init__(self, conf: Any, *args: Any) -> None:
            pass

        def lex(self, *args: Any) -> Any:
            raise NotImplementedError("the constraint engine lexes by itself")

    return NoLexer


class GrammarRecognizer:
    """Incremental LALR(1) recognition of a Lark grammar (start rule ``start``), character by character.

    ``terminal_patterns`` replaces the regex of named terminals by another (JSON Schema string patterns, which are
    intersected with JSON string syntax as automata rather than written as one regex).
    """

    def __init__(self, grammar: str, max_whitespace: int = 8, terminal_fsms: dict[str, Any] | None = None) -> None:
        import lark

        no_lexer = _no_lexer()
        try:
            # the parse table only: this module lexes itself (and lark's lexers check terminal collisions slowly)
            self.lark = lark.Lark(grammar, parser="lalr", lexer=no_lexer)
        except lark.exceptions.GrammarError as err:
            raise ConfigError(f"bad grammar (an LALR(1) Lark grammar with a 'start' rule is needed): {err}") from None
        except lark.exceptions.LarkError as err:
            raise ConfigError(f"bad grammar: {err}") from None
        table = self.lark.parser.parser.parser.parse_table
        self.states: dict[int, dict[str, tuple[Any, Any]]] = table.states
        self.end_state: int = table.end_states["start"]
        self.initial_stack: Stack = (table.start_states["start"],)
        self.ignore = frozenset(self.lark.ignore_tokens)
        self.max_whitespace = max_whitespace
        self.terminals: dict[str, RegexRecognizer] = {}
        for term in self.lark.terminals:
            if term.pattern.flags:
                raise ConfigError(f"terminal {term.name}: regex flags ({', '.join(term.pattern.flags)}) are not "
                                  "supported by the constraint engine; write the cases out")
            fsm = (terminal_fsms or {}).get(term.name)
            self.terminals[term.name] = RegexRecognizer(term.pattern.to_regexp(), fsm)
        self.initial: frozenset[Hypothesis] = frozenset({(self.initial_stack, (), 0)})
        self._feed: dict[tuple[Stack, str], Stack | None] = {}
        self._candidates: dict[int, tuple[str, ...]] = {}

    # ----- the parser ------------------------------------------------------------------------------------------
    def feed(self, stack: Stack, term: str) -> Stack | None:
        """The stack after shifting terminal ``term`` (reductions first), or None if the parser rejects it."""
        key = (stack, term)
        if key not in self._feed:
            self._feed[key] = self._shift(stack, term)
        return self._feed[key]

    def _shift(self, stack: Stack, term: str) -> Stack | None:
        from lark.parsers.lalr_analysis import Shift

        while True:
            action = self.states[stack[-1]].get(term)
            if action is None:
                return None
            kind, arg = action
            if kind is Shift:
                return (*stack, arg)
            size = len(arg.expansion)
            stack = stack[:-size] if size else stack
            stack = (*stack, self.states[stack[-1]][arg.origin.name][1])
            if term == "$END" and stack[-1] == self.end_state:
                return stack

    def ends(self, stack: Stack) -> bool:
        return self.feed(stack, "$END") is not None

    def candidates(self, stack: Stack) -> tuple[str, ...]:
        """Terminals that may start here: the ignored ones and those the parser shifts (an LALR state may list a
        reduction on a terminal that the state below then rejects, so each is fed through)."""
        top = stack[-1]
        if top not in self._candidates:
            self._candidates[top] = tuple(t for t in self.terminals if t in self.ignore or t in self.states[top])
        return tuple(t for t in self._candidates[top] if t in self.ignore or self.feed(stack, t) is not None)

    # ----- the lexer -------------------------------------------------------------------------------------------
    def _start(self, stack: Stack, ch: str, ws: int) -> list[Hypothesis]:
        """Hypotheses where ``ch`` begins a new terminal; ignored and real terminals become separate ones."""
        real, ignored = [], []
        for t in self.candidates(stack):
            rec = self.terminals[t]
            s = rec.step(rec.initial, ch)
            if s is not None:
                (ignored if t in self.ignore else real).append((t, s))
        out = [(stack, tuple(real), ws)] if real else []
        if ignored and ws < self.max_whitespace:
            out.append((stack, tuple(ignored), ws + 1))
        return out

    def _step_one(self, hyp: Hypothesis, ch: str) -> list[Hypothesis]:
        stack, lexeme, ws = hyp
        if not lexeme:
            return self._start(stack, ch, ws)
        extended = []
        for t, s in lexeme:
            nxt = self.terminals[t].step(s, ch)
            if nxt is not None:
                extended.append((t, nxt))
        if extended:  # maximal munch: a terminal that can grow does not end here
            ignoring = extended[0][0] in self.ignore
            if ignoring and ws >= self.max_whitespace:
                return []
            return [(stack, tuple(extended), ws + 1 if ignoring else ws)]
        out: list[Hypothesis] = []
        for t, s in lexeme:
            if not self.terminals[t].accepting(s):
                continue
            if t in self.ignore:
                out.extend(self._start(stack, ch, ws))
            else:
                after = self.feed(stack, t)
                if after is not None:
                    out.extend(self._start(after, ch, 0))
        return out

    def step(self, state: frozenset[Hypothesis], ch: str) -> frozenset[Hypothesis] | None:
        nxt = frozenset(h for hyp in state for h in self._step_one(hyp, ch))
        return nxt or None

    def accepting(self, state: frozenset[Hypothesis]) -> bool:
        for stack, lexeme, _ in state:
            if not lexeme and self.ends(stack):
                return True
            for t, s in lexeme:
                if not self.terminals[t].accepting(s):
                    continue
                after = stack if t in self.ignore else self.feed(stack, t)
                if after is not None and self.ends(after):
                    return True
        return False


def run(rec: Recognizer, text: str) -> Any | None:
    """The state after reading ``text`` from the start, or None once it is dead."""
    state = rec.initial
    for ch in text:
        state = rec.step(state, ch)
        if state is None:
            return None
    return state


def matches(rec: Recognizer, text: str) -> bool:
    """Whether ``text`` is complete under the recogniser."""
    state = run(rec, text)
    return state is not None and rec.accepting(state)
