"""`genzoo arena --data SPEC --budget T`: train every applicable model under one budget, score, recommend."""

from __future__ import annotations

from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.selection.arena import arena, leaderboard


def print_arena(results: dict, out: Path) -> None:
    """The leaderboard, the recommendations and where the report is."""
    narrow = console.width < 140
    few = len(results["models"]) < 6  # narrow and few models: transposed; narrow and many: the goals' metrics only
    console.print(leaderboard(results, by_metric=narrow and few, compact=narrow and not few))
    if narrow and not few:
        console.print("(the goals' metrics only on a narrow terminal: every metric is in report.html and results.json)")
    for rec in results.get("recommendations") or []:
        console.print(f"[bold]{rec['goal']}[/]: {rec['recommend']} — {rec['reason']}", highlight=False)
    console.print(f"results: [bold]{out / 'results.json'}[/]   report: [bold]{out / 'report.html'}[/]")


@app.command("arena")
def arena_command(
    data: str = typer.Option(..., "--data", help="Data spec (digits, toy:moons, text:FILE, an image folder ...)."),
    budget: str = typer.Option(..., "--budget", "-b", help="Training time per model (90s, 10m ...)."),
    models: str = typer.Option(None, "--models", help="Comma-separated models (default: every applicable one); "
                                                      "the baselines always run on image and vector data."),
    out: Path = typer.Option(Path("arena"), "--out", "-o", help="Folder for runs, results.json and report.html."),
    seed: int = typer.Option(0, "--seed", help="First seed (training and evaluation)."),
    seeds: int = typer.Option(1, "--seeds", min=1, help="Seeds per model: >1 gives mean ± standard error."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted arena in --out."),
    quick: bool = typer.Option(False, "--quick", help="Train each model for its calibrated quick_steps, with "
                                                      "--budget only as a cap."),
    n: int = typer.Option(None, "--n", help="Samples per evaluation (default: as many as held-out examples)."),
) -> None:
    """Train every applicable model with the same budget, split, seed and device; evaluate each the same way."""
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    results = arena(data, budget=budget, models=names, out=out, seed=seed, seeds=seeds, resume=resume, quick=quick,
                    n=n, progress=True, log=lambda line: console.print(line, highlight=False))
    print_arena(results, out)
