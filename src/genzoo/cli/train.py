"""`genzoo train MODEL --data SPEC ...`."""

from __future__ import annotations

from pathlib import Path

import typer

import genzoo
from genzoo.cli.app import app, console
from genzoo.contract import parse_override
from genzoo.runs import read_config


@app.command()
def train(
    model: str = typer.Argument(..., help="Model name (see `genzoo list`)."),
    data: str = typer.Option(None, "--data", "-d", help="Data spec: digits, mnist:DIR, toy:moons, csv:FILE, a folder."),
    budget: str = typer.Option(None, "--budget", "-b", help="Wall-clock budget for this invocation: 90s, 10m, 1h."),
    steps: int = typer.Option(None, "--steps", help="Total number of training steps."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/MODEL-DATA-TIME)."),
    seed: int = typer.Option(0, "--seed", help="Seed for initialisation and batch order (same seed, same numbers)."),
    sets: list[str] = typer.Option([], "--set", help="Hyperparameter or trainer setting, key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint."),
    image_size: int = typer.Option(None, "--image-size", help="Resize images to this square side."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1, mps."),
    init: str = typer.Option(None, "--init", help="Start from a trained run directory or hf:NAME (fine-tuning)."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters only (gpt, hf); --set lora_rank=N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train MODEL on your data; writes a run directory (config, weights, metrics, samples)."""
    if resume:
        if out is None:
            raise genzoo.ConfigError("--resume needs --out RUN_DIR (the run to continue)")
        saved = read_config(out)
        data = data or saved["data"]["spec"]
        image_size = image_size or saved["data"].get("image_size")
        seed = saved["seed"] if seed == 0 else seed
    if not data:
        raise genzoo.ConfigError("--data is required (e.g. --data digits); see `genzoo train --help`")
    overrides = dict(parse_override(item) for item in sets)
    if resume:  # the saved hyperparameters, unless overridden again
        overrides = {**saved["hparams"], **overrides}
    run = genzoo.train(model, data, steps=steps, budget=budget, out=out, seed=seed, overrides=overrides,
                       resume=resume, image_size=image_size, init=init, lora=lora, device=device,
                       progress=not quiet)
    model_info = genzoo.read_config(run)
    console.print(f"run saved to [bold]{run}[/] ({model_info['model']} on {model_info['data']['spec']})")
    previews = sorted((run / "samples").glob("latest.*"))
    shown = previews[0] if previews else run / "samples"
    console.print(f"samples: {shown}   next: genzoo sample {run}")
