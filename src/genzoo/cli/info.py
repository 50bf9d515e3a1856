"""`genzoo info RUN`: what a run is, how far it got, and what it can do."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from genzoo.cli.app import app, console
from genzoo.runs import CHECKPOINTS, RunDir


def run_summary(run: Path) -> dict:
    """A JSON-able summary of a run directory (also used by `genzoo demo`)."""
    rundir = RunDir(run)
    config = rundir.config
    model = rundir.load_model()
    checkpoints = {name: rundir.trainer_state(name)["step"] for name in CHECKPOINTS if rundir.has_checkpoint(name)}
    metrics = rundir.metrics()
    last_val = next((m for m in reversed(metrics) if m["split"] == "val"), {})
    last_train = next((m for m in reversed(metrics) if m["split"] == "train"), {})
    return {
        "run": str(run), "model": config["model"], "family": config.get("family"),
        "data": config["data"].get("spec_text") or config["data"]["spec"],
        "shape": config["data"]["info"]["shape"], "levels": config["data"]["info"].get("levels"),
        "parameters": model.num_parameters(), "capabilities": sorted(c.value for c in model.capabilities),
        "checkpoints": checkpoints, "validation_metric": model.validation_metric,
        "best_value": rundir.trainer_state("last").get("best") if "last" in checkpoints else None,
        "last_val": last_val, "steps_per_s": last_train.get("steps_per_s"), "hparams": config["hparams"],
        "seed": config.get("seed"), "train": config.get("train"), "resumes": config.get("resumes", []),
        "genzoo_version": config.get("genzoo_version"),
    }


@app.command()
def info(
    run: Path = typer.Argument(..., help="Run directory."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show a run's model, data, checkpoints, metrics and capabilities."""
    summary = run_summary(run)
    if as_json:
        console.print_json(json.dumps(summary, default=str))
        return
    table = Table(show_header=False, title=str(run))
    for key in ("model", "family", "data", "shape", "levels", "parameters", "capabilities", "checkpoints",
                "validation_metric", "best_value", "steps_per_s", "hparams", "seed", "genzoo_version"):
        value = summary[key]
        table.add_row(key, ", ".join(value) if isinstance(value, list) and key == "capabilities" else str(value))
    console.print(table)
