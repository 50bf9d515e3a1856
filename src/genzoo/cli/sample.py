"""`genzoo sample RUN`: draw samples from a trained run into a PNG grid or a .npy array (or text)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
import typer

import genzoo
from genzoo.cli.app import app, console
from genzoo.contract import Capability, parse_override
from genzoo.errors import GenzooError
from genzoo.io import save_samples

_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape(text: str) -> str:
    """``\\n``, ``\\t`` and ``\\\\`` typed on a command line -> newline, tab, backslash; other backslashes stay."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


@app.command()
def sample(
    run: str = typer.Argument(None, help="Run directory, or hf:NAME_OR_PATH for a pretrained Hugging Face LM."),
    pretrained: str = typer.Option(None, "--model", help="hf:NAME_OR_PATH: sample a pretrained LM (no RUN)."),
    n: int = typer.Option(64, "-n", "--num", help="Number of samples."),
    seed: int = typer.Option(0, "--seed", help="Seed: the same seed gives the same samples."),
    out: Path = typer.Option(None, "--out", "-o", help="Output .png (grid/scatter) or .npy (arrays in data units)."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best (by validation) or last."),
    no_ema: bool = typer.Option(False, "--no-ema", help="Use the raw weights even if the run kept an EMA."),
    label: int = typer.Option(None, "--class", help="Class label to sample (class-conditional models)."),
    sampler: str = typer.Option(None, "--sampler", help="Sampler (diffusion: ddpm, ddim, dpm)."),
    steps: int = typer.Option(None, "--steps", help="Number of sampling steps (diffusion)."),
    eta: float = typer.Option(None, "--eta", help="DDIM eta (0 = deterministic)."),
    guidance: float = typer.Option(None, "--guidance", help="Classifier-free guidance scale."),
    mode: str = typer.Option(None, "--mode", help="VAE: 'mean' of p(x|z) (default) or 'sample'."),
    opts: list[str] = typer.Option([], "--opt", help="Other model-specific sampling option key=value."),
    prompt: str = typer.Option(None, "--prompt", help="Text models: the prompt to continue."),
    max_new_tokens: int = typer.Option(200, "--max-new-tokens", help="Text: tokens to generate."),
    temperature: float = typer.Option(1.0, "--temperature", help="Text: softmax temperature (0 = greedy)."),
    top_k: int = typer.Option(None, "--top-k", help="Text: keep the k most likely tokens."),
    top_p: float = typer.Option(None, "--top-p", help="Text: nucleus sampling mass."),
    min_p: float = typer.Option(None, "--min-p", help="Text: drop tokens below min_p * p(most likely)."),
    repetition_penalty: float = typer.Option(None, "--repetition-penalty", help="Text: >1 discourages repeats."),
    stop: list[str] = typer.Option([], "--stop", help="Text: stop string (repeatable); \\n, \\t and \\\\ "
                                                      "mean newline, tab, backslash: --stop '\\n\\n'."),
    num_return_sequences: int = typer.Option(1, "--num-return-sequences", help="Text: completions to draw."),
    stream: bool = typer.Option(False, "--stream", help="Text: print tokens as they are generated."),
    chat: bool = typer.Option(False, "--chat", help="Text: send --prompt as a user message through the model's "
                                                    "chat template (pretrained chat models)."),
) -> None:
    """Sample from a trained run (best checkpoint, EMA weights when kept) or a pretrained LM."""
    if (run is None) == (pretrained is None):
        raise GenzooError("name a run directory (genzoo sample RUN) or a pretrained model (--model hf:NAME)")
    model = genzoo.load(run or pretrained, checkpoint=checkpoint, ema=not no_ema)  # type: ignore[arg-type]
    if Capability.GENERATE_TEXT in model.capabilities:
        from genzoo.cli.text import sample_text

        sample_text(model, prompt=prompt or "", seed=seed, stream=stream, chat=chat, max_new_tokens=max_new_tokens,
                    temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, stop=[unescape(s) for s in stop] or None,
                    num_return_sequences=num_return_sequences)
        return
    options = {k: v for k, v in {"sampler": sampler, "steps": steps, "eta": eta, "guidance": guidance,
                                 "mode": mode}.items() if v is not None}
    options.update(parse_override(item) for item in opts)
    labels = None if label is None else torch.tensor([label])
    samples = model.sample(n, seed=seed, labels=labels, **options)
    target = out or Path(run) / "samples" / f"sample-seed{seed}.png"
    save_samples(target, samples)
    where = model.provenance
    console.print(f"{n} samples -> [bold]{target}[/] (checkpoint {where['checkpoint']}, step {where['step']}, "
                  f"{where['weights']} weights)")
