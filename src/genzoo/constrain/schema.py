"""JSON Schema -> an LALR(1) Lark grammar (plus automata for string patterns), for the reference engine.

Supported (every other keyword raises a :class:`~genzoo.errors.ConfigError` naming it, never silently ignored):

* ``type`` (``object``, ``array``, ``string``, ``number``, ``integer``, ``boolean``, ``null``, or a list of them);
* objects: ``properties`` (written in their declared order), ``required`` (a name without ``properties`` takes any
  value), ``additionalProperties`` ``false`` or ``true`` (only declared properties are ever written, which is valid
  either way; a schema there is refused); an object without ``properties``/``required`` is any JSON object;
* ``enum``, ``const`` (written compactly, as ``json.dumps`` writes them);
* arrays: ``items``, ``minItems``, ``maxItems``;
* ``$ref`` to ``#``, ``#/$defs/NAME`` or ``#/definitions/NAME`` (recursion allowed);
* strings: ``pattern`` (a search, as JSON Schema says: unanchored sides match anything), ``minLength``, ``maxLength``
  (in JSON string characters, an escape counting as one);
* numbers: ``minimum``, ``maximum``, ``exclusiveMinimum``, ``exclusiveMaximum``: a bounded ``integer`` is any
  integer in range; a bounded ``number`` is written as an integer in range (sound: every output is valid; fractions
  are not generated);
* ``anyOf`` (alone on its node, besides annotations);
* annotations, which constrain nothing: ``title``, ``description``, ``default``, ``examples``, ``$schema``, ``$id``,
  ``$comment``, ``deprecated``, ``readOnly``, ``writeOnly``.

Whitespace between tokens is ``%ignore``-d and capped by the engine (``max_whitespace``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from genzoo.errors import ConfigError

SUPPORTED = frozenset({"type", "properties", "required", "additionalProperties", "enum", "const", "items",
                       "minItems", "maxItems", "$ref", "$defs", "definitions", "pattern", "minLength", "maxLength",
                       "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "anyOf"})
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                         "readOnly", "writeOnly"})
TYPES = ("object", "array", "string", "number", "integer", "boolean", "null")

#: one character of a JSON string: anything but a quote, a backslash or a control character, or an escape
CHAR = r'([^"\\\x00-\x1f]|\\(["\\bfnrt]|u[0-9a-fA-F]{4}))'
STRING = f'"{CHAR}*"'
INTEGER = r"-?(0|[1-9][0-9]*)"
NUMBER = r"-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?"

_GENERIC = f"""
json_value: json_object | json_array | JSON_STRING | JSON_NUMBER | "true" | "false" | "null"
json_object: "{{" [json_pair ("," json_pair)*] "}}"
json_pair: JSON_STRING ":" json_value
json_array: "[" [json_value ("," json_value)*] "]"
JSON_STRING: /{STRING}/
JSON_NUMBER: /{NUMBER}/
%ignore /[ \\t\\n\\r]+/
"""


def unsupported_keywords(schema: Any, path: str = "#") -> list[tuple[str, str]]:
    """Every (keyword, location) of ``schema`` outside the supported subset, depth first."""
    if isinstance(schema, bool) or not isinstance(schema, dict):
        return []
    found = [(k, path) for k in schema if k not in SUPPORTED and k not in ANNOTATIONS]
    for key in ("properties", "$defs", "definitions"):
        for name, sub in (schema.get(key) or {}).items():
            found += unsupported_keywords(sub, f"{path}/{key}/{name}")
    if isinstance(schema.get("items"), dict):
        found += unsupported_keywords(schema["items"], f"{path}/items")
    for i, sub in enumerate(schema.get("anyOf") or []):
        found += unsupported_keywords(sub, f"{path}/anyOf/{i}")
    if isinstance(schema.get("additionalProperties"), dict):
        found.append(("additionalProperties", f"{path} (a schema; only true or false)"))
    return found


class SchemaCompiler:
    """Builds the grammar rule by rule: one rule per schema node, one per ``$defs`` entry."""

    def __init__(self, root: dict[str, Any] | bool) -> None:
        bad = unsupported_keywords(root)
        if bad:
            keyword, where = bad[0]
            raise ConfigError(f"JSON Schema keyword '{keyword}' at {where} is not supported by the constraint engine "
                              f"(supported: {', '.join(sorted(SUPPORTED))})")
        self.root = root
        self.rules: list[str] = []
        self.terminals: dict[str, str] = {}
        #: terminals whose automaton is built directly (string patterns): name -> (pattern, min, max length)
        self.pattern_terminals: dict[str, tuple[str, int, int | None]] = {}
        self.refs: dict[str, str] = {}
        self.count = 0

    def compile(self) -> str:
        start = self.node(self.root, "#")
        return "\n".join([f"start: {start}", *self.rules, *self.terminals_text(), _GENERIC])

    def terminals_text(self) -> list[str]:
        return [f"{name}: /{regex}/" for name, regex in self.terminals.items()]

    def new_name(self, prefix: str = "s") -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def rule(self, body: str) -> str:
        name = self.new_name()
        self.rules.append(f"{name}: {body}")
        return name

    def terminal(self, regex: str) -> str:
        for name, known in self.terminals.items():
            if known == regex:
                return name
        name = self.new_name("T").upper()
        self.terminals[name] = regex.replace("/", "\\/")
        return name

    # ----- nodes -----------------------------------------------------------------------------------------------
    def node(self, schema: Any, path: str) -> str:
        if schema is True or schema == {} or (isinstance(schema, dict) and set(schema) <= ANNOTATIONS):
            return "json_value"
        if schema is False:
            raise ConfigError(f"the schema at {path} is false: no value is valid")
        if not isinstance(schema, dict):
            raise ConfigError(f"the schema at {path} is not an object: {schema!r}")
        constraining = set(schema) - ANNOTATIONS - {"$defs", "definitions"}
        if "$ref" in schema:
            if constraining != {"$ref"}:
                raise ConfigError(f"'$ref' at {path} beside {sorted(constraining - {'$ref'})} is not supported")
            return self.ref(schema["$ref"], path)
        if "anyOf" in schema:
            if constraining != {"anyOf"}:
                raise ConfigError(f"'anyOf' at {path} beside {sorted(constraining - {'anyOf'})} is not supported "
                                  "(move them into each alternative)")
            if not schema["anyOf"]:
                raise ConfigError(f"'anyOf' at {path} is empty")
            return self.rule(" | ".join(self.node(s, f"{path}/anyOf/{i}") for i, s in enumerate(schema["anyOf"])))
        if "const" in schema:
            return self.rule(_literal(schema["const"]))
        if "enum" in schema:
            if not schema["enum"]:
                raise ConfigError(f"'enum' at {path} is empty: no value is valid")
            return self.rule(" | ".join(_literal(v) for v in schema["enum"]))
        types = schema.get("type", _implied_type(schema))
        types = [types] if isinstance(types, str) else list(types)
        unknown = [t for t in types if t not in TYPES]
        if unknown or not types:
            raise ConfigError(f"'type' at {path}: unknown type {unknown[0] if unknown else '(empty list)'}")
        return self.rule(" | ".join(self.typed(t, schema, path) for t in types))

    def typed(self, kind: str, schema: dict[str, Any], path: str) -> str:
        if kind == "object":
            return self.object(schema, path)
        if kind == "array":
            return self.array(schema, path)
        if kind == "string":
            return self.string(schema, path)
        if kind in ("integer", "number"):
            return self.number(kind, schema, path)
        return '"true" | "false"' if kind == "boolean" else '"null"'

    def ref(self, ref: str, path: str) -> str:
        if ref not in self.refs:
            if ref == "#":
                target: Any = self.root
            else:
                parts = ref.split("/")
                if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
                    raise ConfigError(f"'$ref' {ref!r} at {path}: only '#', '#/$defs/NAME' and '#/definitions/NAME'")
                target = (self.root.get(parts[1]) or {}).get(parts[2]) if isinstance(self.root, dict) else None
                if target is None:
                    raise ConfigError(f"'$ref' {ref!r} at {path} points at nothing")
            name = self.refs[ref] = self.new_name("ref")
            self.rules.append(f"{name}: {self.node(target, ref)}")
        return self.refs[ref]

    def object(self, schema: dict[str, Any], path: str) -> str:
        props = dict(schema.get("properties") or {})
        required = list(schema.get("required") or [])
        for name in required:
            props.setdefault(name, True)
        if not props:
            return "json_object"
        items = [(f"{_literal(name)} \":\" {self.node(sub, f'{path}/properties/{name}')}", name in required)
                 for name, sub in props.items()]
        return f'"{{" {self.members(items)} "}}"'

    def members(self, items: list[tuple[str, bool]]) -> str:
        """Properties in order, optional ones omissible, commas between those present: ``first_i`` writes the
        properties from i on when none is written yet, ``rest_i`` when one is (so each starts with a comma); an
        empty alternative is Lark's ``a | `` (nothing)."""
        first = rest = ""
        for pair, needed in reversed(items):
            new_rest = f'"," {pair} {rest}'
            new_first = f"{pair} {rest}"
            if not needed:
                new_rest, new_first = f"{new_rest} | {rest}", f"{new_first} | {first}"
            first, rest = self.rule(new_first), self.rule(new_rest)
        return first

    def array(self, schema: dict[str, Any], path: str) -> str:
        item = self.node(schema.get("items", True), f"{path}/items")
        low, high = int(schema.get("minItems", 0)), schema.get("maxItems")
        if high is not None and int(high) < low:
            raise ConfigError(f"at {path}: maxItems {high} < minItems {low}")
        if high is not None and int(high) == 0:
            return '"[" "]"'
        tail = self.rule(f'"," {item}')
        repeats = f" {tail}*" if high is None else f" ({tail}) ~ {max(low - 1, 0)}..{int(high) - 1}" if int(high) > 1 \
            else ""
        required = f" ({tail}) ~ {low - 1}" if high is None and low > 1 else ""
        body = f"{item}{required}{repeats}"
        if low >= 1:
            return f'"[" {body} "]"'
        return f'"[" [{self.rule(body)}] "]"'

    def string(self, schema: dict[str, Any], path: str) -> str:
        low, high = int(schema.get("minLength", 0)), schema.get("maxLength")
        if high is not None and int(high) < low:
            raise ConfigError(f"at {path}: maxLength {high} < minLength {low}")
        if "pattern" in schema:
            spec = (schema["pattern"], low, None if high is None else int(high))
            for name, known in self.pattern_terminals.items():
                if known == spec:
                    return name
            name = self.new_name("PATTERN").upper()
            self.pattern_terminals[name] = spec
            self.terminals[name] = f'"{schema["pattern"]}"'  # for lark; the engine runs pattern_fsm's automaton
            return name
        if low == 0 and high is None:
            return "JSON_STRING"
        return self.terminal(f'"{CHAR}{{{low},{"" if high is None else int(high)}}}"')

    def number(self, kind: str, schema: dict[str, Any], path: str) -> str:
        low, high = _bounds(schema, path)
        if low is None and high is None:
            return self.terminal(INTEGER if kind == "integer" else NUMBER)
        if low is not None and high is not None and low > high:
            raise ConfigError(f"at {path}: no integer satisfies the bounds (minimum > maximum)")
        return self.terminal(integer_range(low, high))


def _implied_type(schema: dict[str, Any]) -> list[str]:
    """A node without ``type``: the types its keywords apply to (``properties`` -> object ...), else any."""
    keys = set(schema)
    implied = [t for t, words in (("object", {"properties", "required", "additionalProperties"}),
                                  ("array", {"items", "minItems", "maxItems"}),
                                  ("string", {"pattern", "minLength", "maxLength"}),
                                  ("number", {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}))
               if keys & words]
    return implied or list(TYPES)


def _bounds(schema: dict[str, Any], path: str) -> tuple[int | None, int | None]:
    """The smallest and largest integer the numeric keywords allow (None = unbounded)."""
    low = high = None
    for key, value in schema.items():
        if key not in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"'{key}' at {path} must be a number, got {value!r}")
        if key == "minimum":
            low = max(low, math.ceil(value)) if low is not None else math.ceil(value)
        elif key == "exclusiveMinimum":
            bound = math.floor(value) + 1
            low = max(low, bound) if low is not None else bound
        elif key == "maximum":
            high = min(high, math.floor(value)) if high is not None else math.floor(value)
        else:
            bound = math.ceil(value) - 1
            high = min(high, bound) if high is not None else bound
    return low, high


def _literal(value: Any) -> str:
    """A Lark string literal of the compact JSON text of ``value``."""
    return json.dumps(json.dumps(value, separators=(",", ":"), ensure_ascii=False), ensure_ascii=False)


# ----- integer ranges as regular expressions ------------------------------------------------------------------------
def integer_range(low: int | None, high: int | None) -> str:
    """A regex matching exactly the decimal integers in [low, high] (None = unbounded), without leading zeros."""
    parts = []
    if high is None or high >= 0:
        parts += _nonnegative(max(low, 0) if low is not None else 0, high)
    if low is None or low < 0:
        top = 1 if high is None or high >= 0 else -high
        parts += [f"-({'|'.join(reversed(_nonnegative(top, None if low is None else -low)))})"]
    return "|".join(reversed(parts))  # longer numbers first: lark's lexer takes the first alternative that matches


def _nonnegative(low: int, high: int | None) -> list[str]:
    if high is None:
        digits = len(str(low))
        return [*_nonnegative(low, 10**digits - 1), f"[1-9][0-9]{{{digits},}}"]
    parts = []
    for digits in range(len(str(low)), len(str(high)) + 1):
        lo = max(low, 10 ** (digits - 1) if digits > 1 else 0)
        hi = min(high, 10**digits - 1)
        if lo <= hi:
            parts += _same_length(str(lo), str(hi))
    return parts


def _same_length(lo: str, hi: str) -> list[str]:
    """Regexes for the integers from ``lo`` to ``hi``, two digit strings of the same length."""
    if lo == hi:
        return [lo]
    if len(lo) == 1:
        return [f"[{lo}-{hi}]"]
    if lo[0] == hi[0]:
        return [lo[0] + r for r in _same_length(lo[1:], hi[1:])]
    n = len(lo) - 1
    parts, first, last = [], lo[0], hi[0]
    if lo[1:] != "0" * n:
        parts += [lo[0] + r for r in _same_length(lo[1:], "9" * n)]
        first = chr(ord(first) + 1)
    tail = []
    if hi[1:] != "9" * n:
        tail = [hi[0] + r for r in _same_length("0" * n, hi[1:])]
        last = chr(ord(last) - 1)
    if first <= last:
        parts.append(f"[{first}-{last}]" + "[0-9]" * n)
    return parts + tail


def pattern_fsm(pattern: str, low: int, high: int | None) -> Any:
    """The automaton of a JSON string (quotes included) whose content matches ``pattern`` somewhere (JSON Schema's
    search semantics: a side without an anchor matches anything) and has ``low``..``high`` characters."""
    import interegular

    head, tail = pattern.startswith("^"), pattern.endswith("$") and not pattern.endswith("\\$")
    core = f"({pattern[1 if head else 0 : -1 if tail else None]})"
    core = ("" if head else ".*") + core + ("" if tail else ".*")
    try:
        content = interegular.parse_pattern(core).to_fsm()
    except Exception as err:
        raise ConfigError(f"cannot compile the string pattern {pattern!r}: {err}") from None
    chars = interegular.parse_pattern(f"{CHAR}{{{low},{'' if high is None else high}}}").to_fsm()
    quote = interegular.parse_pattern('"').to_fsm()
    return quote.concatenate(content & chars, quote)
