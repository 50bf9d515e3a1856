"""`genzoo advise --data SPEC`: rank the registered models for the data and a goal from the documented rules."""

from __future__ import annotations

import typer
from rich.table import Table

from genzoo.cli.app import app, console
from genzoo.registry import model_class
from genzoo.selection.advise import GOALS, advise


@app.command("advise")
def advise_command(
    data: str = typer.Option(..., "--data", help="Data spec (digits, toy:moons, text:FILE, an image folder ...)."),
    goal: str = typer.Option("quality", "--goal", help=f"What matters most: {', '.join(GOALS)}."),
    latency_ms: float = typer.Option(None, "--latency-ms", help="Limit on the time of one sample (milliseconds)."),
    budget: str = typer.Option(None, "--budget", help="Training time each model would get (90s, 10m ...)."),
) -> None:
    """No training: rank the models that apply to the data, with a one-line reason each (docs/model-selection.md)."""
    ranked = advise(data, goal, latency_ms=latency_ms, budget=budget)
    table = Table(title=f"genzoo advise: {data}, goal {goal}",
                  caption="scores from the rules table (docs/model-selection.md); check with genzoo arena")
    for column in ("#", "model", "family", "score", "why"):
        table.add_column(column, justify="right" if column in ("#", "score") else "left")
    for i, item in enumerate(ranked, 1):
        table.add_row(str(i), item.model, model_class(item.model).family, f"{item.score:+.1f}", "; ".join(item.reasons))
    console.print(table)
