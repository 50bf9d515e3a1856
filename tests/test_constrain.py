"""Constrained decoding: every output is valid, masks are exact, the distribution is the renormalised model's, the
decoding loop's processor order, incremental detokenisation, finish reasons, grammar data, and the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import lark
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import genzoo
from conftest import FAST
from genzoo.constrain import Choice, Grammar, JsonSchema, Regex, compile_constraint
from genzoo.constrain.automata import run
from genzoo.data import DataOptions
from genzoo.data.grammar import GRAMMARS, corpus, pcfg
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.generation import Completion, ConstraintProcessor, filter_logits, generation_config

FEW = settings(max_examples=6, deadline=None, derandomize=True)

#: a schema using most supported keywords (what the BPE/JSON tests generate)
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 6},
                         "age": {"type": "integer", "minimum": 0, "maximum": 99},
                         "tags": {"type": "array", "items": {"enum": ["red", "blue"]}, "maxItems": 2},
                         "ok": {"type": "boolean"}}}


def person_valid(value: object) -> bool:
    """PERSON checked by hand (an independent validator)."""
    if not isinstance(value, dict) or set(value) - set(PERSON["properties"]) or not {"name", "age"} <= set(value):
        return False
    tags = value.get("tags", [])
    return (isinstance(value["name"], str) and len(value["name"]) <= 6 and type(value["age"]) is int
            and 0 <= value["age"] <= 99 and isinstance(tags, list) and len(tags) <= 2
            and all(t in ("red", "blue") for t in tags) and isinstance(value.get("ok", True), bool))


@pytest.fixture(scope="module")
def arith() -> genzoo.Dataset:
    """The text of grammar:arith (a shorter corpus than the spec's), character tokens."""
    return text_dataset(corpus("arith", 20_000), DataOptions(context=16), "grammar:arith")


@pytest.fixture(scope="module")
def json_bpe() -> genzoo.Dataset:
    """JSON records under a byte-level BPE whose merges span several grammar symbols (``":"``, ``"},"`` ...)."""
    return text_dataset(corpus("json", 20_000), DataOptions(context=16, tokenizer="bpe", vocab_size=360), "json")


def tiny(name: str, data: genzoo.Dataset) -> genzoo.GenerativeModel:
    torch.manual_seed(0)
    hparams = {"layers": 1, "heads": 2, "width": 16} if name == "gpt" else {"layers": 1, "width": 16, "embed_dim": 8}
    return genzoo.create(name, data, **hparams).eval()


@pytest.fixture(scope="module")
def models(arith: genzoo.Dataset, json_bpe: genzoo.Dataset) -> dict[str, genzoo.GenerativeModel]:
    return {"gpt-arith": tiny("gpt", arith), "lstm-arith": tiny("lstm", arith), "gpt-json": tiny("gpt", json_bpe)}


ARITH_PARSER = lark.Lark(pcfg("arith").lark(), parser="lalr")


def parses(parser: lark.Lark, text: str) -> bool:
    try:
        parser.parse(text)
    except lark.exceptions.LarkError:
        return False
    return True


def _utf8(raw: bytes | None) -> bool:
    try:
        return bool(raw) and bool(raw.decode("utf-8"))  # type: ignore[union-attr]
    except UnicodeDecodeError:
        return False


# ----- every output is valid ----------------------------------------------------------------------------------------
@FEW
@given(name=st.sampled_from(["gpt-arith", "lstm-arith"]), seed=st.integers(0, 10**6),
       temperature=st.sampled_from([0.0, 0.7, 1.0, 2.0]), prompt=st.sampled_from(["", "1+", "(2*"]))
def test_grammar_outputs_parse_for_any_prompt_seed_and_temperature(models: dict, name: str, seed: int,
                                                                   temperature: float, prompt: str) -> None:
    outs = models[name].generate(prompt, constraint=Grammar.builtin("arith"), stop=["\n"], max_new_tokens=24,
                                 seed=seed, temperature=temperature, num_return_sequences=3, return_details=True,
                                 engine="reference")
    for out in outs:
        if out.finish_reason == "stop":
            assert out.complete and parses(ARITH_PARSER, out.text), out
        else:  # the budget ran out: an unfinished but valid prefix, said so
            assert out.finish_reason == "length" and out.tokens == 24
            assert run(Grammar.builtin("arith").recognizer, out.text) is not None


@FEW
@given(seed=st.integers(0, 10**6), temperature=st.sampled_from([0.5, 1.0, 1.5]))
def test_regex_and_choice_outputs_match(models: dict, seed: int, temperature: float) -> None:
    model = models["lstm-arith"]
    pattern = r"\(?[1-9][0-9]?([+*][0-9]+){0,3}\)?"
    constraint = Regex(pattern)
    for out in model.generate("", constraint=constraint, max_new_tokens=12, seed=seed, temperature=temperature,
                              num_return_sequences=3, return_details=True, engine="reference"):
        if out.complete:
            assert re.fullmatch(pattern, out.text)
        else:
            assert out.finish_reason == "length" and run(constraint.recognizer, out.text) is not None
    options = ["1+1", "(2)", "10*3", "7"]
    outs = model.generate("", constraint=Choice(options), seed=seed, temperature=temperature, max_new_tokens=8,
                          num_return_sequences=4, return_details=True, engine="reference")
    assert all(o.text in options and o.finish_reason == "stop" for o in outs)


@FEW
@given(seed=st.integers(0, 10**6), temperature=st.sampled_from([0.8, 1.0, 1.3]))
def test_json_schema_outputs_are_valid_json_under_a_bpe_tokenizer(models: dict, seed: int, temperature: float) -> None:
    outs = models["gpt-json"].generate("", constraint=JsonSchema(PERSON), stop=["\n"], max_new_tokens=40, seed=seed,
                                       temperature=temperature, num_return_sequences=2, return_details=True,
                                       engine="reference")
    for out in outs:
        if out.finish_reason == "stop":
            assert person_valid(json.loads(out.text)), out.text


def test_a_bpe_vocabulary_with_tokens_spanning_grammar_symbols_is_masked_exactly(json_bpe: genzoo.Dataset) -> None:
    """Tokens like ``":"`` or ``"},"`` cross terminal boundaries: the mask after any prefix of a valid text equals a
    brute-force check of every token (its text appended keeps a completion possible)."""
    tok = json_bpe.tokenizer
    schema = JsonSchema(PERSON)
    compiled = compile_constraint(schema, tok, tok.vocab_size, frozenset(), (), "reference")
    whole = {i: raw.decode() for i, raw in enumerate(compiled.vocab.tokens) if _utf8(raw)}  # whole characters
    assert any(len(re.findall(r'["{}:,\[\]]', t)) >= 3 for t in whole.values())  # e.g. '":["'
    valid = '{"name":"bob","age":42,"tags":["red"],"ok":true}'
    for cut in (0, 1, 7, 8, 13, 20, 30, len(valid) - 1):
        state = compiled.walker.walk(compiled.walker.initial, valid[:cut].encode())
        mask = compiled.mask(state)[0]
        assert {i for i in whole if mask[i]} == {i for i, t in whole.items()
                                                 if run(schema.recognizer, valid[:cut] + t) is not None}, valid[:cut]
    # and a generation actually uses such tokens
    model = tiny("gpt", json_bpe)
    ids = model.prompt_ids("")
    out = model.generate("", constraint=schema, max_new_tokens=30, seed=0, return_details=True, engine="reference")
    assert out.tokens < len(out.text) and ids


def test_the_mask_never_removes_every_token_while_the_text_can_complete(json_bpe: genzoo.Dataset) -> None:
    """Along random walks, every allowed token leads to a state that can still complete (soundness), and a
    state that is not complete always allows a token."""
    tok = json_bpe.tokenizer
    for constraint in (JsonSchema(PERSON), Grammar.builtin("json")):
        compiled = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "reference")
        gen = torch.Generator().manual_seed(0)
        for _ in range(3):
            matcher = compiled.matcher()
            for _ in range(25):
                mask = compiled.mask(matcher.state)[0]
                allowed = mask.nonzero().flatten()
                assert len(allowed) or compiled.walker.accepting(matcher.state)
                if not len(allowed):
                    break
                for t in allowed[torch.randperm(len(allowed), generator=gen)[:8]].tolist():
                    nxt = compiled.walker.walk(matcher.state, compiled.vocab.tokens[t])
                    assert nxt is not None and (compiled.mask(nxt)[0].any() or compiled.walker.accepting(nxt))
                matcher.advance(int(allowed[torch.randint(len(allowed), (1,), generator=gen)]))


def test_eos_only_in_accepting_states_and_stop_tokens_only_after_complete_text(arith: genzoo.Dataset) -> None:
    tok = arith.tokenizer
    newline = tok.encode("\n")[0]
    compiled = compile_constraint(Regex("12|1"), tok, tok.vocab_size, frozenset({newline}), (), "reference")
    walker = compiled.walker
    assert not compiled.mask(walker.initial)[0][newline]  # nothing written yet: no end
    assert compiled.mask(walker.walk(walker.initial, b"1"))[0][newline]  # "1" is complete
    done = walker.walk(walker.initial, b"12")
    assert compiled.mask(done)[0].nonzero().flatten().tolist() == [newline]  # only the end remains
    stops = compile_constraint(Regex("12|1"), tok, tok.vocab_size, frozenset(), ("\n",), "reference")
    assert stops.mask(stops.walker.initial)[0][newline] == False  # noqa: E712
    assert stops.mask(stops.walker.walk(stops.walker.initial, b"1"))[0][newline]


def test_a_byte_tokenizer_writes_characters_split_across_tokens() -> None:
    data = text_dataset("héllo café naïve wörld €\n" * 20, DataOptions(context=8, tokenizer="byte"), "bytes")
    model = tiny("lstm", data)
    options = ["café", "naïve", "€uro"]
    outs = model.generate("", constraint=Choice(options), num_return_sequences=8, seed=1, temperature=2.0,
                          engine="reference")
    assert set(outs) <= set(options) and len(set(outs)) > 1


# ----- the distribution ---------------------------------------------------------------------------------------------
def test_the_constrained_distribution_is_the_renormalised_model_distribution(arith: genzoo.Dataset) -> None:
    model = tiny("gpt", arith)
    options = ["12", "13", "4"]
    tok = arith.tokenizer
    with torch.no_grad():
        first = model.prefill(torch.tensor([model.prompt_ids("")]))[0][0].double().softmax(-1)
        after1 = model.prefill(torch.tensor([model.prompt_ids("1")]))[0][0].double().softmax(-1)
    p = {ch: first[tok.encode(ch)[0]] for ch in "14"}
    q = {ch: after1[tok.encode(ch)[0]] for ch in "23"}
    exact = {"4": p["4"] / (p["1"] + p["4"]),
             "12": p["1"] / (p["1"] + p["4"]) * q["2"] / (q["2"] + q["3"]),
             "13": p["1"] / (p["1"] + p["4"]) * q["3"] / (q["2"] + q["3"])}
    # one step, exactly: the processed logits' softmax is the model's renormalised over the allowed tokens
    matchers = [compile_constraint(Choice(options), tok, model.vocab_out, frozenset(), (), "reference").matcher()]
    with torch.no_grad():
        logits = model.prefill(torch.tensor([model.prompt_ids("")]))[0]
    probs = ConstraintProcessor(matchers)(logits)[0].double().softmax(-1)
    assert math.isclose(probs[tok.encode("4")[0]], exact["4"], rel_tol=1e-9)
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-12)
    # whole strings, by sampling: frequencies within 4 standard errors of the exact probabilities
    n = 3000
    outs = model.generate("", constraint=Choice(options), num_return_sequences=n, seed=0, engine="reference")
    for text, prob in exact.items():
        freq = outs.count(text) / n
        assert abs(freq - float(prob)) < 4 * math.sqrt(float(prob) * (1 - float(prob)) / n) + 1e-9, (text, freq, prob)


def test_the_mask_runs_before_temperature_and_top_k(arith: genzoo.Dataset) -> None:
    """top-k=1 after masking picks the most likely *allowed* token (masking after top-k would leave nothing)."""
    model = tiny("gpt", arith)
    tok = arith.tokenizer
    with torch.no_grad():
        logits = model.prefill(torch.tensor([model.prompt_ids("")]))[0][0]
    digits = [tok.encode(d)[0] for d in "0123456789"]
    best = max(digits, key=lambda i: float(logits[i]))
    banned = tok.decode([best])  # the constraint forbids the best digit: the next best must come
    allowed = [d for d in "0123456789" if d != banned]
    expected = max(allowed, key=lambda d: float(logits[tok.encode(d)[0]]))
    constraint = Regex(f"[{''.join(allowed)}]")
    for options in ({"top_k": 1, "temperature": 1.0}, {"temperature": 0.0}, {"top_p": 1e-6}, {"min_p": 1.0}):
        assert model.generate("", constraint=constraint, max_new_tokens=1, engine="reference", **options) == expected
    # and the penalty, temperature and filters act on the masked logits (-inf stays -inf, the rest as before)
    masked = ConstraintProcessor([compile_constraint(constraint, tok, model.vocab_out, frozenset(), (),
                                                     "reference").matcher()])(logits[None])
    cfg = generation_config(temperature=0.5, repetition_penalty=1.3)
    seen = torch.zeros_like(masked, dtype=torch.bool)
    out = filter_logits(masked, seen, cfg)
    assert torch.equal(torch.isfinite(out), torch.isfinite(masked))
    keep = torch.isfinite(masked)
    assert torch.allclose(out[keep], masked[keep] / 0.5)


# ----- finish reasons and detokenisation ----------------------------------------------------------------------------
def test_finish_reason_length_when_the_budget_runs_out(models: dict) -> None:
    model = models["gpt-arith"]
    out = model.generate("", constraint=Regex("[0-9]{20}"), max_new_tokens=5, return_details=True,
                         engine="reference")
    assert (out.finish_reason, out.complete, out.tokens, len(out.text)) == ("length", False, 5, 5)
    out = model.generate("", constraint=Regex("[0-9]{3}"), max_new_tokens=5, return_details=True, engine="reference")
    assert (out.finish_reason, out.complete, out.tokens, len(out.text)) == ("stop", True, 3, 3)
    plain = model.generate("", max_new_tokens=4, return_details=True)
    assert (plain.finish_reason, plain.complete, plain.tokens) == ("length", None, 4)
    assert model.generate("", max_new_tokens=4) == plain.text


@settings(max_examples=25, deadline=None, derandomize=True)
@given(ids=st.lists(st.integers(0, 359), min_size=1, max_size=40))
def test_incremental_detokenisation_equals_whole_decoding(json_bpe: genzoo.Dataset, ids: list[int]) -> None:
    """Byte-level BPE ids in any order (partial UTF-8 characters too): the pieces add up to decoding all at once."""
    model = tiny("gpt", json_bpe)
    out = Completion(model, ())
    pieces = [out.push(i) for i in ids] + [out.push(None)]
    assert "".join(pieces) == model.decode_tokens(ids)
    assert all("\ufffd" not in p for p in pieces[:-1]) or "\ufffd" in model.decode_tokens(ids)


def test_detokenisation_decodes_a_bounded_window_per_token(json_bpe: genzoo.Dataset) -> None:
    """Linear, not quadratic: no decode call reads more than the ids since the last settled text."""
    model = tiny("gpt", json_bpe)
    lengths: list[int] = []

    class Counting:
        def decode_tokens(self, ids: list[int]) -> str:
            lengths.append(len(ids))
            return model.decode_tokens(ids)

    out = Completion(Counting(), ())
    ids = json_bpe.tokenizer.encode('{"name":"alice","age":31,"tags":["red","blue"]}' * 8)
    text = "".join(out.push(i) for i in ids) + out.push(None)
    assert text == model.decode_tokens(ids) and max(lengths) <= 2


# ----- constraints and schemas --------------------------------------------------------------------------------------
@pytest.mark.parametrize("keyword, schema", [
    ("not", {"type": "object", "not": {"required": ["a"]}}),
    ("patternProperties", {"type": "object", "patternProperties": {"^a": {"type": "integer"}}}),
    ("oneOf", {"oneOf": [{"type": "integer"}, {"type": "string"}]}),
    ("allOf", {"allOf": [{"type": "integer"}]}),
    ("format", {"type": "string", "format": "date-time"}),
    ("multipleOf", {"type": "integer", "multipleOf": 3}),
    ("uniqueItems", {"type": "array", "uniqueItems": True}),
    ("prefixItems", {"type": "array", "prefixItems": [{"type": "integer"}]}),
    ("minProperties", {"type": "object", "minProperties": 1}),
    ("if", {"if": {"type": "string"}, "then": {"minLength": 2}}),
    ("additionalProperties", {"type": "object", "additionalProperties": {"type": "integer"}}),
    ("contains", {"type": "object", "properties": {"a": {"type": "array", "contains": {"const": 1}}}}),
])
def test_unsupported_schema_keywords_raise_naming_the_keyword(keyword: str, schema: dict) -> None:
    with pytest.raises(ConfigError, match=f"'{keyword}'"):
        JsonSchema(schema)


#: per supported keyword: a schema, a text it allows, and one the keyword (and only it) forbids
BITES = {
    "type": ({"type": "integer"}, "12", '"12"'),
    "type-list": ({"type": ["string", "null"]}, "null", "1"),
    "properties": ({"type": "object", "properties": {"a": {"type": "integer"}}}, '{"a":1}', '{"a":"x"}'),
    "required": ({"type": "object", "properties": {"a": {}, "b": {}}, "required": ["b"]}, '{"b":1}', '{"a":1}'),
    "required-without-properties": ({"type": "object", "required": ["a"]}, '{"a":[1]}', "{}"),
    "additionalProperties": ({"type": "object", "properties": {"a": {}}, "additionalProperties": False},
                             '{"a":1}', '{"a":1,"b":2}'),
    "enum": ({"enum": ["x", 2, None]}, "2", "3"),
    "const": ({"const": {"k": [1]}}, '{"k":[1]}', '{"k":[2]}'),
    "items": ({"type": "array", "items": {"type": "boolean"}}, "[true,false]", "[true,1]"),
    "minItems": ({"type": "array", "minItems": 2}, "[1,2]", "[1]"),
    "maxItems": ({"type": "array", "maxItems": 1}, "[1]", "[1,2]"),
    "$ref": ({"$defs": {"n": {"type": "integer"}}, "type": "array", "items": {"$ref": "#/$defs/n"}}, "[1]", '["a"]'),
    "$ref-recursive": ({"type": "object", "properties": {"k": {"$ref": "#"}}}, '{"k":{"k":{}}}', '{"k":1}'),
    "pattern": ({"type": "string", "pattern": "^[A-Z][0-9]$"}, '"B7"', '"B77"'),
    "pattern-search": ({"type": "string", "pattern": "ab"}, '"xaby"', '"ba"'),
    "minLength": ({"type": "string", "minLength": 2}, '"ab"', '"a"'),
    "maxLength": ({"type": "string", "maxLength": 2}, '"ab"', '"abc"'),
    "minimum": ({"type": "integer", "minimum": -3}, "-3", "-4"),
    "maximum": ({"type": "integer", "maximum": 120}, "120", "121"),
    "exclusiveMinimum": ({"type": "number", "exclusiveMinimum": 5}, "6", "5"),
    "exclusiveMaximum": ({"type": "integer", "exclusiveMaximum": 10}, "9", "10"),
    "anyOf": ({"anyOf": [{"type": "integer", "minimum": 3}, {"type": "boolean"}]}, "true", "2"),
    "nested": ({"type": "object", "properties": {"a": {"type": "object", "properties": {"b": {"type": "null"}},
                                                        "required": ["b"]}}}, '{"a":{"b":null}}', '{"a":{}}'),
}


@pytest.mark.parametrize("name", BITES)
def test_each_schema_keyword_bites(name: str) -> None:
    schema, good, bad = BITES[name]
    constraint = JsonSchema(schema)
    json.loads(good)  # the allowed text is JSON
    assert constraint.matches(good)
    assert not constraint.matches(bad)


def test_whitespace_between_tokens_is_capped() -> None:
    schema = JsonSchema({"type": "array"}, max_whitespace=4)
    assert schema.matches("[ 1 ,\n2 ]") and schema.matches("[    1]")
    assert not schema.matches("[     1]")


def test_bad_constraints_give_clear_errors(models: dict) -> None:
    with pytest.raises(ConfigError, match="regular expression"):
        Regex("a(")
    with pytest.raises(ConfigError, match="non-empty list"):
        Choice([])
    with pytest.raises(ConfigError, match="grammar"):
        Grammar("start: a b\na: 'x'")  # b is undefined
    with pytest.raises(GenzooError, match="no token of this vocabulary"):
        models["gpt-arith"].generate("", constraint=Regex("[a-z]+"), engine="reference")  # arith has no letters
    with pytest.raises(ConfigError, match="constraint"):
        models["gpt-arith"].generate("", constraint=Regex("1"), num_beams=2)


# ----- grammar data -------------------------------------------------------------------------------------------------
def _balanced(text: str) -> bool:
    stack = []
    for ch in text:
        if ch in "([{":
            stack.append(ch)
        elif not stack or "([{"[")]}".index(ch)] != stack.pop():
            return False
    return not stack


@pytest.mark.parametrize("name", GRAMMARS)
def test_grammar_data_is_the_language_of_its_lark_grammar(name: str) -> None:
    lines = corpus(name, 4000).split("\n")
    parser, ours = lark.Lark(pcfg(name).lark(), parser="lalr"), Grammar.builtin(name)
    assert len(set(lines)) > len(lines) // 4 and corpus(name, 4000) == "\n".join(lines)  # varied, deterministic
    for line in lines:
        assert parses(parser, line) and ours.matches(line), line
        if name == "brackets":
            assert _balanced(line) and line
        elif name == "json":
            assert isinstance(json.loads(line), dict)
        else:
            assert re.fullmatch(r"[0-9+\-*/()]+", line)
    assert not Grammar.builtin("brackets").matches("(()")


def test_grammar_spec_reads_text_with_the_text_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("genzoo.data.grammar.CORPUS_CHARS", 5000)
    data = genzoo.load_dataset("grammar:brackets#context=8,tokenizer=char")
    assert data.tokenizer.decode(data.streams["train"][:200].tolist()) == corpus("brackets", 5000)[:200]
    assert data.info.shape == (8,) and data.tokenizer.vocab_size == 7  # ()[]{} and the newline
    with pytest.raises(genzoo.DataError, match="unknown grammar"):
        genzoo.load_dataset("grammar:nope")


# ----- CLI ----------------------------------------------------------------------------------------------------------
def test_cli_samples_under_a_regex_a_grammar_a_schema_and_a_choice(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    run = tmp_path / "run"
    genzoo.train("gpt", "grammar:json#context=16", steps=2, out=run, overrides={**FAST, "layers": 1, "heads": 2,
                                                                                "width": 16})
    schema = tmp_path / "s.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"id": {"type": "integer", "maximum": 9}},
                                  "required": ["id"]}))
    grammar = tmp_path / "g.lark"
    grammar.write_text('start: "[" (NUM ("," NUM)*)? "]"\nNUM: /[0-9]/\n')
    checks = {("--regex", "[a-z]{3}"): lambda t: re.fullmatch("[a-z]{3}", t),
              ("--grammar", str(grammar)): lambda t: re.fullmatch(r"\[([0-9](,[0-9])*)?\]", t),
              ("--grammar", "json"): lambda t: isinstance(json.loads(t), dict),
              ("--json-schema", str(schema)): lambda t: json.loads(t)["id"] <= 9,
              ("--choice", "true,false"): lambda t: t in ("true", "false")}
    for (flag, value), check in checks.items():
        result = CliRunner().invoke(app, ["sample", str(run), "--prompt", "", "--stop", "\\n", "--max-new-tokens",
                                          "60", flag, value, "--engine", "reference", "--seed", "3"])
        assert result.exit_code == 0, result.output
        assert check(result.stdout.strip()), (flag, result.stdout)
    both = CliRunner().invoke(app, ["sample", str(run), "--regex", "a", "--choice", "a"])
    assert both.exit_code != 0 and "one constraint" in str(both.exception)


# ----- Hugging Face models ------------------------------------------------------------------------------------------
def test_a_tiny_hugging_face_model_generates_under_constraints(tmp_path: Path) -> None:
    """A byte-level BPE HF model with an end-of-sequence token: EOS ends a text only once it is complete."""
    pytest.importorskip("transformers")
    from test_hf import _tiny_hf

    folder = _tiny_hf(tmp_path / "hf", "gpt2")
    model = genzoo.load_pretrained(str(folder))
    eos = next(iter(model.eos_ids))
    outs = model.generate("the", constraint=Choice([" cat", " dog", " bird"]), num_return_sequences=4, seed=0,
                          return_details=True, engine="reference")
    assert all(o.text in (" cat", " dog", " bird") and o.finish_reason == "stop" and o.complete for o in outs)
    outs = model.generate("", constraint=JsonSchema(PERSON), max_new_tokens=40, num_return_sequences=3, seed=1,
                          return_details=True, engine="reference")
    for out in outs:
        assert out.finish_reason == "length" or person_valid(json.loads(out.text)), out
    compiled = compile_constraint(Regex("[a-z]+"), model.tokenizer, model.vocab_out, model.eos_ids, (), "reference")
    assert not compiled.mask(compiled.walker.initial)[0][eos]
    assert compiled.mask(compiled.walker.walk(compiled.walker.initial, b"ab"))[0][eos]
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    for flags, check in ((["--regex", "[a-z]{2,5}"], lambda t: re.fullmatch("[a-z]{2,5}", t)),
                         (["--json-schema", json.dumps(PERSON)], lambda t: person_valid(json.loads(t)))):
        result = CliRunner().invoke(app, ["sample", "--model", f"hf:{folder}", "--prompt", "", "--max-new-tokens",
                                          "60", "--engine", "reference", *flags])
        assert result.exit_code == 0 and check(result.stdout.strip()), result.output


# ----- the fast engine (llguidance, optional) -----------------------------------------------------------------------
def _llguidance() -> None:
    pytest.importorskip("llguidance")


@pytest.mark.parametrize("name", BITES)
def test_each_schema_keyword_bites_in_the_fast_engine_or_it_is_refused(name: str) -> None:
    _llguidance()
    from genzoo.tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    schema, good, bad = BITES[name]
    constraint = JsonSchema(schema)
    try:
        compiled = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "fast")
    except ConfigError as err:  # a node shape the fast engine gets wrong: refused, the reason named
        assert name == "required-without-properties" and "'required'" in str(err)
        auto = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "auto")
        assert auto.engine == "reference"
        return
    assert compiled.engine == "fast"
    assert compiled.matcher().accepts(tok.encode_bytes(good.encode()))
    assert not compiled.matcher().accepts(tok.encode_bytes(bad.encode()))


def test_the_fast_engine_allows_no_more_than_the_reference_and_generates_valid_text(models: dict,
                                                                              json_bpe: genzoo.Dataset) -> None:
    _llguidance()
    tok = json_bpe.tokenizer
    constraint = Regex(r'\{"age":(0|[1-9][0-9]?)(,"ok":(true|false))?\}')
    fast = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "fast").matcher()
    ref = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "reference").matcher()
    for token in tok.encode('{"age":42,"ok":true}'):
        # llguidance also drops non-canonical splits of forced text ('{' when '{"' is forced): a subset, never more
        assert fast.allowed()[token] and not (fast.allowed() & ~ref.allowed()).any()
        fast.advance(token)
        ref.advance(token)
    assert fast.finished and ref.finished  # complete and nothing can follow: both end by themselves
    outs = models["gpt-json"].generate("", constraint=JsonSchema(PERSON), max_new_tokens=40, num_return_sequences=4,
                                       seed=2, return_details=True, engine="fast")
    assert all(person_valid(json.loads(o.text)) for o in outs if o.finish_reason == "stop")
    auto = compile_constraint(JsonSchema(PERSON), tok, tok.vocab_size, frozenset(), ("\n",), "auto")
    assert auto.engine == "reference"  # stop strings are the reference engine's
    with pytest.raises(ConfigError, match="stop strings"):
        compile_constraint(JsonSchema(PERSON), tok, tok.vocab_size, frozenset(), ("\n",), "fast")


def test_a_constraint_the_vocabulary_cannot_write_is_one_clear_error() -> None:
    """A character tokenizer without digits cannot write an integer (only the leading whitespace JSON allows, up to
    its cap): an error naming the problem, not a NaN draw."""
    data = text_dataset("the cat sat on the mat.\n" * 20, DataOptions(context=16), "letters")
    model = genzoo.create("gpt", data, layers=1, width=16, heads=2)
    engines = ["reference", *(["fast"] if importlib.util.find_spec("llguidance") else [])]
    for engine in engines:  # the fast engine gives an empty mask: the decoding loop names the dead end
        with pytest.raises(GenzooError, match="no token"):
            model.generate("the ", max_new_tokens=20, temperature=1.0, constraint=JsonSchema({"type": "integer"}),
                           engine=engine)
