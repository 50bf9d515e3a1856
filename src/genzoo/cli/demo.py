"""`genzoo demo`: a quick arena on the built-in digits, one model per family that applies to images."""

from __future__ import annotations

from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.cli.arena import print_arena
from genzoo.data import load_dataset
from genzoo.registry import model_class
from genzoo.selection.advise import advise
from genzoo.selection.arena import arena

DATA = "digits"


def representatives(ranked: list[str]) -> list[str]:
    """The best-ranked model of each family, in rank order."""
    chosen: dict[str, str] = {}
    for name in ranked:
        chosen.setdefault(model_class(name).family, name)
    return list(chosen.values())


@app.command()
def demo(
    out: Path = typer.Option(Path("genzoo-demo"), "--out", "-o", help="Folder for the demo's runs and report."),
    models: list[str] = typer.Option(None, "--model", "-m", help="Models to compare (repeatable; default: the "
                                                                  "advice's best of every family)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    budget: str = typer.Option("10m", "--budget", "-b", help="Time cap per model, a safety net only: each model "
                               "trains for its calibrated quick_steps (about a minute on two quiet cores), so a busy "
                               "machine gives the same numbers, later."),
) -> None:
    """Every family on the built-in digits in about 10 minutes: leaderboard, report.html, a recommendation."""
    dataset = load_dataset(DATA)
    names = models or representatives([a.model for a in advise(dataset, "quality")])
    console.print(f"demo on {DATA}: {', '.join(names)} (+ baselines)", highlight=False)
    results = arena(dataset, budget=budget, models=names, out=out, seed=seed, quick=True,
                    resume=(out / "results.json").exists(), progress=True,
                    log=lambda line: console.print(line, highlight=False))
    print_arena(results, out)
