"""Generate and verify: a model proposes, a symbolic checker decides (rejection sampling and best-of-n).

A verifier is any callable ``text -> Verdict`` (or ``bool``, or ``(bool, reason)``). Ready-made ones:

* :func:`arithmetic_equals` — the text is an arithmetic expression (digits, ``+ - * /``, parentheses) whose exact
  value (sympy rationals: no rounding) equals a target: ``arithmetic_equals(24)``;
* :func:`python_syntax` — the text parses as Python (``ast``);
* :func:`z3_satisfies` — the text assigns integers (``x=3, y=4``) that satisfy constraints written as Python
  expressions (``"x + y == 10", "x > y"``), checked by the z3 SMT solver.

:func:`rejection_sample` draws one completion at a time (seeds ``seed``, ``seed + 1`` ...) until one is accepted or
``tries`` run out; :func:`best_of_n` draws ``n`` at once and keeps the best accepted one. Both report the
acceptance rate and the model calls spent (generated tokens summed over completions: one forward pass each).
sympy and z3 are the optional ``verify`` extra.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from genzoo.errors import ConfigError, GenzooError


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    reason: str = ""


Verifier = Callable[[str], "Verdict | bool | tuple[bool, str]"]


def verdict(out: Verdict | bool | tuple[bool, str]) -> Verdict:
    """A verifier's answer as a :class:`Verdict`."""
    if isinstance(out, Verdict):
        return out
    if isinstance(out, tuple):
        return Verdict(bool(out[0]), str(out[1]))
    return Verdict(bool(out))


# ----- ready-made verifiers -----------------------------------------------------------------------------------------
_ARITH = re.compile(r"[0-9+\-*/(). ]+")


def _sympy() -> Any:
    try:
        import sympy
    except ImportError:
        raise GenzooError("the arithmetic verifier needs sympy: pip install 'genzoo[verify]'") from None
    return sympy


def arithmetic_equals(target: int | float | str) -> Callable[[str], Verdict]:
    """Accept an arithmetic expression whose exact value equals ``target`` (``"1/3"`` is a valid target too)."""
    sympy = _sympy()
    goal = sympy.nsimplify(sympy.sympify(str(target)))

    def check(text: str) -> Verdict:
        text = text.strip()
        if not text or not _ARITH.fullmatch(text) or "**" in text:  # no powers: 9**9**9 would never finish
            return Verdict(False, f"not an arithmetic expression: {text!r}")
        try:  # only digits, operators and parentheses reach sympify (checked above)
            value = sympy.sympify(text, rational=True)
        except (sympy.SympifyError, SyntaxError, TypeError, ZeroDivisionError):
            return Verdict(False, f"does not parse: {text!r}")
        if value.has(sympy.zoo, sympy.nan) or not value.is_number:
            return Verdict(False, f"{text} divides by zero")
        if value != goal:
            return Verdict(False, f"{text} = {value}, not {goal}")
        return Verdict(True, f"{text} = {goal}")

    return check


def python_syntax() -> Callable[[str], Verdict]:
    """Accept text that parses as Python source."""

    def check(text: str) -> Verdict:
        try:
            ast.parse(text)
        except SyntaxError as err:
            return Verdict(False, f"line {err.lineno}: {err.msg}")
        return Verdict(True, "valid Python")

    return check


def _z3() -> Any:
    try:
        import z3
    except ImportError:
        raise GenzooError("the z3 verifier needs z3-solver: pip install 'genzoo[verify]'") from None
    return z3


def _to_z3(node: ast.AST, names: dict[str, Any], z3: Any) -> Any:
    """A Python expression over integer variables as a z3 term (only arithmetic, comparisons and boolean logic)."""
    if isinstance(node, ast.Expression):
        return _to_z3(node.body, names, z3)
    if isinstance(node, ast.Constant) and isinstance(node.value, int):
        return z3.IntVal(node.value)
    if isinstance(node, ast.Name):
        return names.setdefault(node.id, z3.Int(node.id))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.Not):
        inner = _to_z3(node.operand, names, z3)
        return -inner if isinstance(node.op, ast.USub) else z3.Not(inner)
    if isinstance(node, ast.BinOp):
        ops = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
               ast.FloorDiv: lambda a, b: a / b, ast.Mod: lambda a, b: a % b}
        if type(node.op) in ops:
            return ops[type(node.op)](_to_z3(node.left, names, z3), _to_z3(node.right, names, z3))
    if isinstance(node, ast.BoolOp):
        parts = [_to_z3(v, names, z3) for v in node.values]
        return z3.And(*parts) if isinstance(node.op, ast.And) else z3.Or(*parts)
    if isinstance(node, ast.Compare):
        cmps = {ast.Eq: lambda a, b: a == b, ast.NotEq: lambda a, b: a != b, ast.Lt: lambda a, b: a < b,
                ast.LtE: lambda a, b: a <= b, ast.Gt: lambda a, b: a > b, ast.GtE: lambda a, b: a >= b}
        terms = [_to_z3(node.left, names, z3), *(_to_z3(c, names, z3) for c in node.comparators)]
        if all(type(op) in cmps for op in node.ops):
            return z3.And(*(cmps[type(op)](a, b) for op, a, b in zip(node.ops, terms, terms[1:], strict=False)))
    raise ConfigError(f"z3 verifier: unsupported expression {ast.unparse(node)!r} (integers, + - * // %, "
                      "comparisons, and/or/not)")


_ASSIGNMENT = re.compile(r"\s*([A-Za-z_]\w*)\s*=\s*(-?\d+)\s*")


def z3_satisfies(*constraints: str) -> Callable[[str], Verdict]:
    """Accept text assigning integers (``x=3, y=4``; commas, semicolons or newlines between) that satisfy every
    constraint (Python syntax: ``"x + y == 10"``, ``"x > y"``), as decided by z3."""
    z3 = _z3()
    if not constraints:
        raise ConfigError("z3 verifier: give at least one constraint, e.g. 'x + y == 10'")
    names: dict[str, Any] = {}
    try:
        terms = [(c, _to_z3(ast.parse(c, mode="eval"), names, z3)) for c in constraints]
    except SyntaxError as err:
        raise ConfigError(f"z3 verifier: a constraint is not a Python expression: {err.msg}") from None

    def check(text: str) -> Verdict:
        parts = [p for p in re.split(r"[,;\n]", text) if p.strip()]
        matched = [_ASSIGNMENT.fullmatch(p) for p in parts]
        if not parts or not all(matched):
            return Verdict(False, f"not integer assignments like 'x=3, y=4': {text!r}")
        values = {m.group(1): int(m.group(2)) for m in matched if m}
        missing = sorted(set(names) - set(values))
        if missing:
            return Verdict(False, f"no value for {', '.join(missing)}")
        subst = [(names[n], z3.IntVal(v)) for n, v in values.items() if n in names]
        broken = [c for c, term in terms if not z3.is_true(z3.simplify(z3.substitute(term, *subst)))]
        if broken:
            return Verdict(False, f"violates {'; '.join(broken)}")
        return Verdict(True, "satisfies every constraint")

    return check


def verifier_from_spec(spec: str) -> Callable[[str], Verdict]:
    """``arith:TARGET``, ``python`` or ``z3:C1;C2;...`` (the CLI's ``--verify``) as a verifier."""
    kind, _, arg = spec.partition(":")
    if kind == "arith" and arg:
        return arithmetic_equals(arg)
    if kind == "python" and not arg:
        return python_syntax()
    if kind == "z3" and arg:
        return z3_satisfies(*(c for c in arg.split(";") if c.strip()))
    raise ConfigError(f"unknown verifier '{spec}' (arith:TARGET, python, or z3:CONSTRAINT;CONSTRAINT...)")


# ----- search -------------------------------------------------------------------------------------------------------
@dataclass
class VerifyReport:
    """The outcome of generate-and-verify: the chosen text (None when nothing was accepted) and what it cost."""

    text: str | None
    candidates: int
    accepted: int
    model_calls: int
    reasons: list[str] = field(default_factory=list)

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.candidates if self.candidates else 0.0

    def summary(self) -> str:
        return (f"{self.accepted} of {self.candidates} candidates accepted (acceptance rate "
                f"{self.acceptance_rate:.2f}), {self.model_calls} model calls")


def rejection_sample(model: Any, prompt: str, verifier: Verifier, tries: int = 16, seed: int = 0,
                     **generation: Any) -> VerifyReport:
    """Draw completions one by one (seeds ``seed``, ``seed + 1`` ...) until ``verifier`` accepts one, at most
    ``tries``; ``generation`` goes to ``model.generate`` (a ``constraint`` too)."""
    if tries < 1:
        raise ConfigError(f"tries must be at least 1, got {tries}")
    report = VerifyReport(None, 0, 0, 0)
    for i in range(tries):
        result = model.generate(prompt, seed=seed + i, return_details=True, **generation)
        judged = verdict(verifier(result.text))
        report.candidates += 1
        report.model_calls += result.tokens
        report.reasons.append(judged.reason)
        if judged.accepted:
            report.accepted, report.text = 1, result.text
            break
    return report


def best_of_n(model: Any, prompt: str, verifier: Verifier, n: int = 8, score: Callable[[str], float] | None = None,
              seed: int = 0, **generation: Any) -> VerifyReport:
    """Draw ``n`` completions in one batch, verify all, keep the accepted one with the highest ``score`` (the
    first accepted without one)."""
    if n < 1:
        raise ConfigError(f"n must be at least 1, got {n}")
    results = model.generate(prompt, seed=seed, num_return_sequences=n, return_details=True, **generation)
    results = results if isinstance(results, list) else [results]
    verdicts = [verdict(verifier(r.text)) for r in results]
    good = [r.text for r, v in zip(results, verdicts, strict=True) if v.accepted]
    best = max(good, key=score) if good and score is not None else (good[0] if good else None)
    return VerifyReport(best, n, len(good), sum(r.tokens for r in results), [v.reason for v in verdicts])
