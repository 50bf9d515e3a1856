"""`genzoo train MODEL --data SPEC ...` (and `genzoo train --out RUN --resume`); data-parallel with
`--nproc N` or under `torchrun --nproc-per-node N -m genzoo train ...`."""

from __future__ import annotations

from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.contract import parse_override
from genzoo.errors import ConfigError
from genzoo.runs import RunDir
from genzoo.training import train as train_run
from genzoo.training.distributed import is_main_process


@app.command()
def train(
    model: str = typer.Argument(None, help="Model name (see `genzoo list`); optional with --resume."),
    data: str = typer.Option(None, "--data", "-d", help="Data spec: digits, mnist:DIR, toy:moons, csv:FILE, a folder."),
    data_b: str = typer.Option(None, "--data-b", help="Second data spec, for models between two domains."),
    budget: str = typer.Option(None, "--budget", "-b", help="Wall-clock budget for this invocation: 90s, 10m, 1h."),
    steps: int = typer.Option(None, "--steps", min=1, help="Total number of training steps."),
    out: Path = typer.Option(None, "--out", "-o", help="Run directory (default: runs/MODEL-DATA-TIME)."),
    seed: int = typer.Option(None, "--seed", min=0, help="Seed for initialisation and batch order (default 0; "
                                                         "a resumed run keeps its own)."),
    sets: list[str] = typer.Option([], "--set", help="Hyperparameter or trainer setting, key=value (repeatable)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint, with "
                                                        "its saved model, data and settings."),
    image_size: int = typer.Option(None, "--image-size", min=1, help="Resize images to this square side."),
    device: str = typer.Option(None, "--device", help="auto (default), cpu, cuda, cuda:1, mps."),
    precision: str = typer.Option(None, "--precision", help="auto, fp32, bf16 or fp16 (default: the model's)."),
    init: str = typer.Option(None, "--init", help="Start from a trained run directory or hf:NAME (fine-tuning)."),
    lora: bool = typer.Option(False, "--lora", help="Train LoRA adapters only (gpt, hf); --set lora_rank=N."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    nproc: int = typer.Option(1, "--nproc", min=1, help="Data-parallel processes on this machine (like torchrun "
                                                        "--nproc-per-node N); --set batch_size is the global batch."),
    tracker: str = typer.Option(None, "--tracker", help="Also log to an experiment tracker: mlflow (store: "
                                                        "MLFLOW_TRACKING_URI or --set tracking_uri=...)."),
) -> None:
    """Train MODEL on your data; writes a run directory (config, weights, metrics, samples)."""
    if resume and (init or lora):
        raise ConfigError("--init and --lora start a new run; --resume continues one as it was started")
    if not resume and (model is None or not data):
        raise ConfigError("give a model and --data (e.g. genzoo train vae --data digits); see `genzoo train --help`")
    options = {k: v for k, v in {"device": device, "precision": precision, "tracker": tracker}.items()
               if v is not None}
    run = train_run(model, data, steps=steps, budget=budget, out=out, seed=seed,
                    overrides=dict(parse_override(item) for item in sets), resume=resume, image_size=image_size,
                    init=init, lora=lora, data_b=data_b, progress=not quiet, nproc=nproc, **options)
    if not is_main_process():  # under torchrun, process 0 reports
        return
    config = RunDir(run).config
    data_text = config["data"].get("spec_text") or config["data"]["spec"]
    console.print(f"run saved to [bold]{run}[/] ({config['model']} on {data_text})")
    previews = sorted((run / "samples").glob("latest.*"))
    shown = previews[0] if previews else run / "samples"
    console.print(f"samples: {shown}   next: genzoo sample {run}")
