"""`genzoo tune MODEL --data SPEC --trials N --budget-per-trial T [--metric fd|bits_per_dim|val_loss] ...`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from genzoo.cli.app import app, console
from genzoo.contract import parse_override
from genzoo.tuning import METRICS, PRUNERS
from genzoo.tuning import tune as tune_study


@app.command()
def tune(
    model: str = typer.Argument(..., help="Model name (see `genzoo list`)."),
    data: str = typer.Option(..., "--data", "-d", help="Data spec: digits, mnist:DIR, toy:moons, a folder."),
    trials: int = typer.Option(20, "--trials", "-n", min=1, help="Finished trials the study should have in total "
                                                                 "(run again with more to add trials)."),
    budget_per_trial: str = typer.Option(None, "--budget-per-trial", help="Training time of each trial: 60s, 2m."),
    steps_per_trial: int = typer.Option(None, "--steps-per-trial", min=1, help="Training steps of each trial (with "
                                        "a time budget too: whichever comes first)."),
    metric: str = typer.Option("val_loss", "--metric", help=f"What to minimise on the validation split: "
                                                            f"{', '.join(METRICS)}."),
    storage: str = typer.Option(None, "--storage", help="Optuna database URL shared by workers and resumes "
                                                        "(default: sqlite:///OUT/study.db)."),
    study_name: str = typer.Option(None, "--study-name", help="Study name (default: MODEL-DATA-METRIC); the same "
                                                              "storage and name continue a study."),
    out: Path = typer.Option(None, "--out", "-o", help="Folder for trial-NNNN runs, best, study.html (default: "
                                                       "tune/STUDY)."),
    seed: int = typer.Option(0, "--seed", min=0, help="Seed of every trial's training and of the sampler."),
    workers: int = typer.Option(1, "--workers", "-j", min=1, help="Processes running trials on the shared storage."),
    sets: list[str] = typer.Option([], "--set", help="Fixed hyperparameter or trainer setting for every trial, "
                                                     "key=value (repeatable; a fixed name is not searched)."),
    pruner: str = typer.Option("median", "--pruner", help=f"Stop bad trials early: {', '.join(PRUNERS)}."),
    tracker: str = typer.Option(None, "--tracker", help="Also log each trial as a run of an experiment named after "
                                                        "the study: mlflow."),
) -> None:
    """Search MODEL's hyperparameters with Optuna; keeps the best run as OUT/best."""
    result = tune_study(model, data, trials=trials, budget_per_trial=budget_per_trial,
                        steps_per_trial=steps_per_trial, metric=metric, storage=storage, study_name=study_name,
                        out=out, seed=seed, workers=workers, overrides=dict(parse_override(s) for s in sets),
                        pruner=pruner, tracker=tracker)
    table = Table(title=f"genzoo tune: {result.study_name}")
    for column in ("trial", "state", f"{metric} ↓", "steps", "parameters"):
        table.add_column(column, justify="left" if column == "parameters" else "right")
    for row in result.trials:
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row["params"].items())
        value = "–" if row["value"] is None else f"{row['value']:.4g}"
        table.add_row(str(row["number"]), row["state"], value, str(row["steps"] or "–"), params)
    console.print(table)
    if result.best_run is None:
        console.print("no trial completed; see the table above")
        return
    console.print(f"best: trial {result.best_trial}, {metric} {result.best_value:.4g} -> [bold]{result.best_run}[/]")
    console.print(f"report: {result.report}   next: genzoo sample {result.best_run}")
