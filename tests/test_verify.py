"""Generate and verify: the symbolic verifiers, rejection sampling and best-of-n (counts and costs), end to end."""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST
from genzoo.constrain import Grammar, Regex
from genzoo.constrain.verify import (
    Verdict,
    arithmetic_equals,
    best_of_n,
    python_syntax,
    rejection_sample,
    verifier_from_spec,
    z3_satisfies,
)
from genzoo.data import DataOptions
from genzoo.data.grammar import corpus
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError
from genzoo.generation import GenerationResult

pytest.importorskip("sympy")
pytest.importorskip("z3")


def exact_value(text: str) -> Fraction:
    """An arithmetic expression's exact value with Python fractions (independent of sympy)."""
    assert re.fullmatch(r"[0-9+\-*/()]+", text)
    return eval(re.sub(r"\d+", lambda m: f"Fraction({m.group()})", text), {"Fraction": Fraction})


def test_arithmetic_verifier_is_exact() -> None:
    equals_24 = arithmetic_equals(24)
    assert equals_24("4*6").accepted and equals_24("(1+2)*8").accepted and equals_24(" 25-1 ").accepted
    assert equals_24("1/3*72").accepted  # rationals, no rounding
    verdict = equals_24("7/2")
    assert not verdict.accepted and "7/2" in verdict.reason
    assert not equals_24("24.0000001").accepted
    assert "divides by zero" in equals_24("3/0").reason
    assert not equals_24("2**99").accepted and not equals_24("x+24").accepted and not equals_24("").accepted
    assert arithmetic_equals("1/3")("1/6+1/6").accepted
    assert arithmetic_equals("3/10")("1/10+2/10").accepted


def test_python_syntax_verifier() -> None:
    check = python_syntax()
    assert check("def f(x):\n    return x\n").accepted
    bad = check("def f(:\n")
    assert not bad.accepted and "line 1" in bad.reason


def test_z3_verifier_checks_assignments_against_constraints() -> None:
    check = z3_satisfies("x + y == 10", "x > y", "x % 2 == 1 or y < 0")
    assert check("x=7, y=3").accepted
    assert check("x = 9; y = 1").accepted
    assert "x > y" in check("x=3, y=7").reason
    assert "x % 2 == 1 or y < 0" in check("x=6, y=4").reason
    assert "no value for y" in check("x=10").reason
    assert not check("seven and three").accepted
    with pytest.raises(ConfigError, match="unsupported expression"):
        z3_satisfies("x ** 2 == 4")
    with pytest.raises(ConfigError, match="at least one"):
        z3_satisfies()


def test_verifier_specs() -> None:
    assert verifier_from_spec("arith:6")("2*3").accepted
    assert verifier_from_spec("python")("x = 1").accepted
    assert verifier_from_spec("z3:a>0;a<2")("a=1").accepted
    for bad in ("arith", "python:x", "z3", "sql"):
        with pytest.raises(ConfigError, match="unknown verifier"):
            verifier_from_spec(bad)


class Scripted:
    """A stand-in model answering ``texts[seed]`` (or the first n texts for best-of-n), one token per character."""

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts
        self.calls = 0

    def generate(self, prompt: str, seed: int = 0, num_return_sequences: int = 1, return_details: bool = False,
                 **options: object) -> GenerationResult | list[GenerationResult]:
        self.calls += 1
        outs = [GenerationResult(t, "stop", len(t)) for t in self.texts[seed : seed + num_return_sequences]]
        return outs if num_return_sequences > 1 else outs[0]


def test_rejection_sampling_stops_at_the_first_accepted_and_counts_the_cost() -> None:
    model = Scripted(["a", "bb", "ok", "ok!"])
    accept = lambda t: Verdict(t.startswith("ok"), t)  # noqa: E731
    report = rejection_sample(model, "", accept, tries=10)
    assert (report.text, report.candidates, report.accepted, report.model_calls) == ("ok", 3, 1, 1 + 2 + 2)
    assert report.acceptance_rate == pytest.approx(1 / 3) and report.reasons == ["a", "bb", "ok"]
    assert model.calls == 3
    none = rejection_sample(Scripted(["a", "b", "c"]), "", accept, tries=2)
    assert (none.text, none.candidates, none.accepted, none.acceptance_rate) == (None, 2, 0, 0.0)
    with pytest.raises(ConfigError):
        rejection_sample(model, "", accept, tries=0)


def test_best_of_n_verifies_all_and_keeps_the_best_accepted() -> None:
    model = Scripted(["ok1", "no", "ok333", "ok22"])
    report = best_of_n(model, "", lambda t: t.startswith("ok"), n=4, score=len)
    assert (report.text, report.candidates, report.accepted, report.model_calls) == ("ok333", 4, 3, 3 + 2 + 5 + 4)
    assert report.acceptance_rate == 0.75 and model.calls == 1
    assert best_of_n(Scripted(["no", "ok2", "ok"]), "", lambda t: (t.startswith("ok"), ""), n=3).text == "ok2"


@pytest.fixture(scope="module")
def arith_gpt() -> genzoo.GenerativeModel:
    data = text_dataset(corpus("arith", 20_000), DataOptions(context=16), "grammar:arith")
    torch.manual_seed(0)
    return genzoo.create("gpt", data, layers=1, heads=2, width=16).eval()


def test_generate_and_verify_solves_a_small_arithmetic_target(arith_gpt: genzoo.GenerativeModel) -> None:
    """Constrained proposals from an (untrained) gpt, checked by sympy until one equals the target: "a op b" with
    one-digit operands (a regex) hits 6 in 9 of 162 cases."""
    report = rejection_sample(arith_gpt, "", arithmetic_equals(6), tries=80, constraint=Regex("[1-9][+*][1-9]"),
                              max_new_tokens=3, engine="reference")
    assert report.text is not None and exact_value(report.text) == 6
    assert report.accepted == 1 and 1 <= report.candidates <= 80 and report.model_calls == 3 * report.candidates
    batch = best_of_n(arith_gpt, "", arithmetic_equals(6), n=16, constraint=Grammar.builtin("arith"), stop=["\n"],
                      max_new_tokens=12, engine="reference")
    assert batch.accepted == sum(r.endswith("= 6") for r in batch.reasons) and batch.candidates == 16


def test_cli_verify_prints_the_accepted_text_and_its_cost(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    run = genzoo.train("gpt", "grammar:arith#context=16", steps=2, out=tmp_path / "run",
                       overrides={"layers": 1, "heads": 2, "width": 16}, **FAST)
    result = CliRunner().invoke(app, ["sample", str(run), "--regex", "[1-9][+*][1-9]", "--verify", "arith:6",
                                      "--tries", "80", "--max-new-tokens", "3", "--engine", "reference"])
    assert result.exit_code == 0, result.output
    assert exact_value(result.stdout.strip()) == 6
    assert re.search(r"1 of \d+ candidates accepted \(acceptance rate [0-9.]+\), \d+ model calls", result.stderr)
