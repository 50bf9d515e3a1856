"""Command-line flags generated from a model's typed sampling options (``GenerativeModel.SampleOptions``).

:class:`ModelOptionsCommand` is a typer command class (``@app.command(cls=...)``) that, before click parses the
arguments, finds the model the command line names (its RUN argument, or the value of a source option such as
``--model hf:NAME``), reads the model class with :func:`genzoo.runs.resolve_class` (no weights loaded) and adds one
option per ``SampleOptions`` field: ``top_k`` -> ``--top-k``, a bool -> ``--use-cache/--no-use-cache``, a Literal ->
a choice, ``X | None`` -> an optional X, ``Field(ge=..., le=...)`` -> a checked range; the field's description is
its help. So ``genzoo sample RUN --help`` lists RUN's own options, and a wrong value fails with a one-line error
while parsing, before any weights are loaded.

The generated flags live on the click context of one invocation (``ctx.meta``), never on the shared command
object. Only the options the user gave reach the model (its defaults apply otherwise): ``invoke`` takes them out of
the parameters typer passes to the command function (which does not declare them), merges the generic
``--opt key=value`` flag, validates the lot with the model's own ``sample_options`` (which also checks what a flag
cannot: open bounds, validators, ``--opt`` keys; a ConfigError, still before any work) and runs the function, which
reads them with :func:`model_options`.

A field whose name or flag collides with a fixed flag of the command (a model declaring ``seed`` or ``n``) gets no
flag of its own; ``--opt name=value`` still reaches it. When the model cannot be resolved (a missing run
directory, no RUN at all), no option is added: ``--help`` still works and the command body raises its usual error.
"""

from __future__ import annotations

import inspect
import json
import sys
import types
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union, get_args, get_origin

import typer
import typer.main
from pydantic.fields import FieldInfo
from rich.markup import escape
from typer.core import TyperCommand

from genzoo.contract import GenerativeModel, parse_override
from genzoo.errors import ConfigError, GenzooError
from genzoo.runs import resolve_class

__all__ = ["ModelOptionsCommand", "model_options"]

#: the click typer runs on: recent typer vendors its own copy (``typer._click``), whose classes are not ``click``'s,
#: so it is found through typer's public ``BadParameter`` rather than imported
_NoSuchOption: type[Exception] = sys.modules[typer.BadParameter.__module__].NoSuchOption  # type: ignore[attr-defined]
Context = Any  # that click's Context
Parameter = Any  # that click's Parameter

_KEY = "genzoo.cli.options"  # prefix of this module's entries in ctx.meta (shared by nested contexts)
_GIVEN_SOURCES = {"COMMANDLINE", "ENVIRONMENT"}  # ParameterSource names: what the user set, not a default
_SCALARS = (int, float, str, bool)
_given: ContextVar[dict[str, Any]] = ContextVar("genzoo_model_options")


@dataclass(frozen=True)
class _Generated:
    """One generated flag: the click parameter, the model field it feeds, and whether its text is JSON."""

    param: Parameter
    field: str
    json: bool


def model_options() -> dict[str, Any]:
    """The model options given on the command line (generated flags merged with ``--opt``), already validated;
    for the body of a command using :class:`ModelOptionsCommand` (empty elsewhere)."""
    return dict(_given.get({}))


class ModelOptionsCommand(TyperCommand):
    """A typer command whose model options are generated from the model the command line names.

    Subclasses set ``source_options`` (options whose value names the model, preferred over the first positional
    argument), ``escape_param`` (the parameter name of a repeatable ``key=value`` option merged into the model
    options) and ``panel`` (the ``--help`` section title; ``{name}`` is the model's name).
    """

    source_options: ClassVar[tuple[str, ...]] = ()
    escape_param: ClassVar[str | None] = None
    panel: ClassVar[str] = "Options of model '{name}'"

    # ----- parsing: add the model's options before click parses ------------------------------------------------------
    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        cls, error = self._resolve(args)
        ctx.meta[f"{_KEY}.class"] = cls
        ctx.meta[f"{_KEY}.generated"] = [] if cls is None else self._generate(cls, ctx)
        try:
            return super().parse_args(ctx, args)
        except _NoSuchOption as err:
            if error is not None:  # a model flag for a model we could not read: that is the real problem
                raise error from None
            name = err.option_name  # type: ignore[attr-defined]
            raise type(err)(name, f"No such option: {name} ({self._hint(cls, ctx)})",  # type: ignore[call-arg]
                            err.possibilities, ctx) from None  # type: ignore[attr-defined]

    def get_params(self, ctx: Context) -> list[Parameter]:
        """The fixed parameters, then this invocation's generated ones (kept on the context, not on the shared
        command object), then ``--help``."""
        fixed = super().get_params(ctx)
        generated = [g.param for g in ctx.meta.get(f"{_KEY}.generated", ())]
        return [*fixed[:len(self.params)], *generated, *fixed[len(self.params):]]

    def invoke(self, ctx: Context) -> Any:
        """Take the generated values out of what typer passes to the command function, check them with the model's
        own validation (what a flag cannot check: open bounds, validators, ``--opt``), then run the function with
        them available to :func:`model_options`."""
        given = self._take_given(ctx)
        cls = ctx.meta.get(f"{_KEY}.class")
        if cls is not None:
            cls.sample_options(**given)  # a ConfigError here comes before any weights are loaded
        token = _given.set(given)
        try:
            return super().invoke(ctx)
        finally:
            _given.reset(token)

    # ----- which model ---------------------------------------------------------------------------------------------
    def _resolve(self, args: Sequence[str]) -> tuple[type[GenerativeModel] | None, GenzooError | None]:
        """The model class the arguments name, and (if none resolves) the error of the first token that surely
        names the model."""
        first_error: GenzooError | None = None
        for source, sure in self._sources(args):
            try:
                return resolve_class(source), None
            except GenzooError as err:
                first_error = first_error or (err if sure else None)
            except Exception:  # never crash while parsing: the command body raises it with its context
                continue
        return None, first_error

    def _sources(self, args: Sequence[str]) -> list[tuple[str, bool]]:
        """Candidate model sources, surest first, each with whether it surely is one: values of
        ``source_options`` if given; else positional tokens, where a token right after an unknown option (a model
        flag not added yet) may be that flag's value instead."""
        takes_value = self._takes_value()
        named, sure, maybe = [], [], []
        after_unknown = False
        tokens = iter(args)
        for token in tokens:
            if token == "--":
                sure.extend(tokens)
                break
            if token.startswith("-") and token != "-":
                name, eq, value = token.partition("=")
                if len(token) > 2 and token[1] != "-" and token[:2] in takes_value:  # -n64: short option + value
                    name, eq, value = token[:2], "=", token[2:]
                if name in takes_value and takes_value[name] and not eq:
                    value = next(tokens, "")
                if name in self.source_options and value:
                    named.append(value)
                after_unknown = name not in takes_value and not eq
                continue
            (maybe if after_unknown else sure).append(token)
            after_unknown = False
        if named:
            return [(source, True) for source in named]
        return [*((source, True) for source in sure), *((source, False) for source in maybe)]

    def _takes_value(self) -> dict[str, bool]:
        """Each fixed option string, and whether it takes a value (so that value is not mistaken for RUN)."""
        return {opt: not (getattr(p, "is_flag", False) or getattr(p, "count", False))
                for p in self.params if p.param_type_name == "option" for opt in [*p.opts, *p.secondary_opts]}

    def _hint(self, cls: type[GenerativeModel] | None, ctx: Context) -> str:
        if cls is None:
            return f"model options need a model: genzoo {ctx.info_name} RUN --help lists them"
        flags = [opt for g in ctx.meta.get(f"{_KEY}.generated", ()) for opt in g.param.opts]
        return f"model '{cls.name}' takes: {', '.join(flags) or 'no options'}"

    # ----- generating the flags --------------------------------------------------------------------------------------
    def _generate(self, cls: type[GenerativeModel], ctx: Context) -> list[_Generated]:
        taken_names = {p.name for p in self.params}
        taken_flags = {opt for p in super().get_params(ctx) for opt in [*p.opts, *p.secondary_opts]}
        panel = self.panel.format(name=cls.name)
        markup = getattr(self, "rich_markup_mode", None) == "rich"  # then help text is rich markup: escape "[...]"
        out = []
        for name, info in cls.SampleOptions.model_fields.items():
            flag = "--" + name.replace("_", "-")
            if name in taken_names or {flag, "--no-" + flag[2:]} & taken_flags:
                continue  # a fixed flag of the command wins; --opt NAME=VALUE still reaches the field
            out.append(_generated_option(name, info, panel, lenient=name in _validated_fields(cls), markup=markup))
        return out

    # ----- handing the values to the command body --------------------------------------------------------------------
    def _take_given(self, ctx: Context) -> dict[str, Any]:
        """Remove the generated values from ``ctx.params`` (the typed function does not take them) and return the
        ones the user gave, merged with ``--opt key=value``."""
        given: dict[str, Any] = {}
        for generated in ctx.meta.get(f"{_KEY}.generated", ()):
            value = ctx.params.pop(generated.param.name, None)
            source = ctx.get_parameter_source(generated.param.name)
            if source is not None and source.name in _GIVEN_SOURCES:
                given[generated.field] = _read_json(value) if generated.json else value
        for key, value in _escapes(ctx.params.get(self.escape_param) if self.escape_param else None):
            if key in given:
                raise ConfigError(f"sampling option '{key}' is given twice (as a flag and with --opt)")
            given[key] = value
        return given


def _escapes(items: Sequence[str] | None) -> Iterator[tuple[str, Any]]:
    for item in items or ():
        if "=" not in item:
            raise ConfigError(f"--opt expects key=value, got '{item}'")
        yield parse_override(item)


def _read_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _validated_fields(cls: type[GenerativeModel]) -> set[str]:
    """Fields with a validator that may accept more than the annotation says (aliases): their flags accept any
    text and leave the check to the model."""
    decorators = cls.SampleOptions.__pydantic_decorators__.field_validators.values()
    names = set(cls.SampleOptions.model_fields) if any("*" in d.info.fields for d in decorators) else set()
    return names | {f for d in decorators if d.info.mode != "after" for f in d.info.fields}


def _generated_option(name: str, info: FieldInfo, panel: str, lenient: bool, markup: bool) -> _Generated:
    annotation, is_json = _cli_annotation(info.annotation)
    choices = ""
    if lenient and get_origin(annotation) is Literal:  # an alias the Literal does not list must reach the validator
        annotation, choices = str, "(one of: " + ", ".join(map(str, get_args(annotation))) + ")"
    default = None if info.is_required() else info.get_default(call_default_factory=True)
    shown: bool | str = default is not None
    if default is not None and (is_json or annotation is str):
        default, shown = (None, json.dumps(default, default=str)) if is_json else (str(default), True)
    low, high, note = _bounds(info, annotation)
    flag = name.replace("_", "-")
    decls = [f"--{flag}/--no-{flag}"] if annotation is bool else [f"--{flag}"]
    help_text = " ".join(filter(None, [info.description, choices, note, "(JSON)" if is_json else ""]))
    help_text = escape(help_text) if markup else help_text
    option = typer.Option(default, *decls, help=help_text, min=low, max=high, rich_help_panel=panel,
                          show_default=shown)
    return _Generated(_typer_param(f"model_option__{name}", annotation, option), name, is_json)


def _cli_annotation(annotation: Any) -> tuple[Any, bool]:
    """The type a flag parses (``X | None`` -> X; Annotated stripped), and whether it is read as JSON text (lists,
    dicts, unions of several types: anything a single scalar flag cannot say)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _cli_annotation(get_args(annotation)[0])
    if origin in (Union, types.UnionType):
        arms = [a for a in get_args(annotation) if a is not type(None)]
        return _cli_annotation(arms[0]) if len(arms) == 1 else (str, True)
    if origin is Literal or annotation in _SCALARS:
        return annotation, False
    if isinstance(annotation, type) and issubclass(annotation, Enum | Path):
        return annotation, False
    return str, True


def _bounds(info: FieldInfo, annotation: Any) -> tuple[float | None, float | None, str]:
    """Inclusive (min, max) for the flag's range check, and a note for bounds a flag cannot check (open bounds of
    floats), which the model's validation checks instead."""
    limits: dict[str, float] = {}
    for meta in _metadata(info):
        for key in ("ge", "gt", "le", "lt"):
            if getattr(meta, key, None) is not None:
                limits[key] = getattr(meta, key)
    if annotation not in (int, float):
        return None, None, ""
    low, high, notes = limits.get("ge"), limits.get("le"), []
    if "gt" in limits:
        if annotation is int:
            low = limits["gt"] + 1
        else:
            notes.append(f"> {limits['gt']}")
    if "lt" in limits:
        if annotation is int:
            high = limits["lt"] - 1
        else:
            notes.append(f"< {limits['lt']}")
    return low, high, f"(must be {' and '.join(notes)})" if notes else ""


def _metadata(info: FieldInfo) -> list[Any]:
    """Constraint objects of a field, including those of ``Annotated[...]`` inside ``X | None``."""
    found = list(info.metadata)
    stack = [info.annotation]
    while stack:
        current = stack.pop()
        if get_origin(current) is Annotated:
            found.extend(current.__metadata__)
            stack.append(get_args(current)[0])
        elif get_origin(current) in (Union, types.UnionType):
            stack.extend(get_args(current))
    # Field(ge=...) inside Annotated is a FieldInfo holding its own constraint objects
    return [m for meta in found for m in (meta.metadata if isinstance(meta, FieldInfo) else [meta])]


def _typer_param(dest: str, annotation: Any, option: Any) -> Parameter:
    """The click parameter typer itself builds for ``dest: annotation = option`` (so generated flags parse, check
    and print in ``--help`` exactly like the fixed ones), from a one-parameter stub command."""

    def stub(**_: Any) -> None:  # pragma: no cover -- never called, only its signature is read
        """Stub."""

    stub.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(dest, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation)])
    stub.__annotations__ = {dest: annotation}
    app = typer.Typer(add_completion=False)
    app.command()(stub)
    return next(p for p in typer.main.get_command(app).params if p.name == dest)
