"""`genzoo sample RUN`: draw samples from a trained run into a PNG grid or a .npy array (or text).

The model's own sampling options (``--steps``, ``--mode``, ``--temperature`` ...) are flags generated from its
``SampleOptions`` (:mod:`genzoo.cli.options`); the flags written here are the command's own.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
import typer

from genzoo.cli.app import app, console
from genzoo.cli.options import ModelOptionsCommand, model_options
from genzoo.contract import Capability, GenerativeModel
from genzoo.errors import GenzooError
from genzoo.runs import RunDir, load

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed on a command line -> newline, tab, backslash; other backslashes stay."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


class SampleCommand(ModelOptionsCommand):
    """`genzoo sample`: the model is RUN or the value of ``--model``; ``--opt key=value`` merges in."""

    source_options: ClassVar[tuple[str, ...]] = ("--model",)
    escape_param: ClassVar[str | None] = "opts"
    panel: ClassVar[str] = "Sampling options of model '{name}'"


@app.command(cls=SampleCommand)
def sample(
    run: str = typer.Argument(None, help="Run directory, or hf:NAME_OR_PATH for a pretrained Hugging Face LM."),
    pretrained: str = typer.Option(None, "--model", help="hf:NAME_OR_PATH: sample a pretrained LM (no RUN)."),
    n: int = typer.Option(64, "-n", "--num", min=1, help="Number of samples."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same samples."),
    out: Path = typer.Option(None, "--out", "-o", help="Output .png (grid/scatter) or .npy (arrays in data units)."),
    checkpoint: Literal["best", "last"] = typer.Option("best", "--checkpoint", help="best (by validation) or last."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the run kept an EMA."),
    label: int = typer.Option(None, "--class", help="Class label to sample (class-conditional models)."),
    opts: list[str] = typer.Option([], "--opt", help="Any sampling option of the model as key=value (the value "
                                   "read as JSON when it is JSON), e.g. one whose name a flag here already uses."),
    prompt: str = typer.Option(None, "--prompt", help="Text models: the prompt to continue. Text-to-image models: "
                                                      "what to draw ('a small red circle above a large blue square')."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", min=0, help="Text: tokens to generate."),
    stop: list[str] = typer.Option([], "--stop", help="Text: stop string (repeatable); \\n, \\t and \\\\ "
                                                      "mean newline, tab, backslash: --stop '\\n\\n'."),
    num_return_sequences: int = typer.Option(1, "--num-return-sequences", min=1, help="Text: completions to draw."),
    num_beams: int = typer.Option(1, "--num-beams", min=1, help="Text: beam search with this many beams "
                                                                "(deterministic; 1 = no beam search)."),
    stream: bool = typer.Option(False, "--stream", help="Text: print tokens as they are generated."),
    chat: bool = typer.Option(False, "--chat", help="Text: send --prompt as a user message through the model's "
                                                    "chat template (pretrained chat models)."),
    regex: str = typer.Option(None, "--regex", help="Text: the completion must fully match this regular expression."),
    grammar: str = typer.Option(None, "--grammar", help="Text: the completion must parse under this Lark grammar "
                                                        "(a .lark file, or a built-in: brackets, arith, json)."),
    json_schema: str = typer.Option(None, "--json-schema", help="Text: the completion must be JSON valid under "
                                                                "this JSON Schema (a file, or the schema inline)."),
    choice: str = typer.Option(None, "--choice", help="Text: the completion must be one of these comma-separated "
                                                      "strings."),
    engine: Literal["auto", "reference", "fast"] = typer.Option("auto", "--engine", help="Text: constraint engine "
                                                                "(auto = llguidance when installed and able)."),
    verify: str = typer.Option(None, "--verify", help="Text: draw until a verifier accepts: arith:TARGET (the "
                                                      "expression equals TARGET), python, or z3:'x+y==10;x>y'."),
    tries: int = typer.Option(16, "--tries", min=1, help="Text: most completions --verify draws."),
    rag: Path = typer.Option(None, "--rag", help="Text: answer --prompt from the chunks this index retrieves "
                                                 "(genzoo index build), citing them as [n]."),
    rag_k: int = typer.Option(3, "-k", "--rag-k", min=1, help="Text: chunks --rag retrieves."),
    image: Path = typer.Option(None, "--image", help="Captioners: print the caption of this image (resized to the "
                                                     "model's size)."),
) -> None:
    """Sample from a trained run (best checkpoint, EMA weights when kept) or a pretrained LM.

    Each model has its own sampling options: genzoo sample RUN --help lists RUN's (help, types, defaults, ranges).
    """
    if (run is None) == (pretrained is None):
        raise GenzooError("name a run directory (genzoo sample RUN) or a pretrained model (--model hf:NAME)")
    options = model_options()  # validated while parsing: a bad value has already failed, before this load
    model = load(run or pretrained, checkpoint=checkpoint, ema=not no_ema)
    if image is not None:
        print_caption(model, image, seed, {**options, **({"num_beams": num_beams} if num_beams > 1 else {})})
        return
    if Capability.GENERATE_TEXT in model.capabilities:
        from genzoo.cli.text import constraint_from_flags, sample_text, verify_text

        constraint = constraint_from_flags(regex=regex, grammar=grammar, json_schema=json_schema, choice=choice)
        text_options = {"max_new_tokens": max_new_tokens, "stop": [unescape(s) for s in stop] or None, **options}
        if rag is not None:
            from genzoo.cli.index import rag_answer

            if stream or chat or verify or constraint or num_return_sequences > 1:
                raise GenzooError("--rag writes one cited answer: leave out --stream, --chat, --verify, constraints "
                                  "and --num-return-sequences")
            rag_answer(model, rag, prompt or "", k=rag_k, seed=seed, num_beams=num_beams, **text_options)
            return
        if verify is not None:
            verify_text(model, prompt=prompt or "", seed=seed, spec=verify, tries=tries, constraint=constraint,
                        engine=engine, **text_options)
            return
        sample_text(model, prompt=prompt or "", seed=seed, stream=stream, chat=chat,
                    num_return_sequences=num_return_sequences, num_beams=num_beams, constraint=constraint,
                    engine=engine, **text_options)
        return
    if out is None and run is None:
        raise GenzooError("a pretrained model that does not make text needs --out FILE")
    samples = model.sample(n, seed=seed, labels=None if label is None else torch.tensor([label]), prompt=prompt,
                           **options)
    check_finite(model, samples)
    target = model.data.handler.save(out or RunDir(run).samples_dir / f"sample-seed{seed}.png", samples)
    where = model.provenance
    console.print(f"{n} samples -> [bold]{target}[/] (checkpoint {where['checkpoint']}, step {where['step']}, "
                  f"{where['weights']} weights)")


def print_caption(model: GenerativeModel, image: Path, seed: int, options: dict[str, Any]) -> None:
    """Print the model's caption of ``image`` (read at the model's number of channels, resized to its size)."""
    from genzoo.editing import read_image

    model.require(Capability.CAPTION)
    channels, height, width = model.data.shape
    pixels = read_image(image, channels)[None]
    if tuple(pixels.shape[-2:]) != (height, width):
        pixels = F.interpolate(pixels, size=(height, width), mode="area")
    typer.echo(model.caption(pixels, seed=seed, **options)[0])


def check_finite(model: GenerativeModel, samples: Any) -> None:
    """Refuse samples holding NaN/Inf (a diverged checkpoint): an error naming the weights, and no file."""
    if torch.is_floating_point(samples) and not torch.isfinite(samples).all():
        bad = int((~torch.isfinite(samples)).reshape(len(samples), -1).any(1).sum())
        where = model.provenance
        raise GenzooError(f"{bad} of {len(samples)} samples contain NaN or Inf: the {where['weights']} weights of "
                          f"checkpoint '{where['checkpoint']}' (step {where['step']}) of "
                          f"{where.get('run') or model.name} are broken (diverged training?); nothing was written")
