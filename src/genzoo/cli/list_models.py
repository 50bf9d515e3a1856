"""`genzoo list`: every registered model with its family, data kinds and capabilities."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from genzoo.api import list_models
from genzoo.cli.app import app, console


@app.command("list")
def list_command(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List every model genzoo can train."""
    models = list_models()
    if as_json:
        console.print_json(json.dumps(models))
        return
    table = Table("model", "family", "data", "capabilities", "description")
    for m in models:
        table.add_row(m["name"], m["family"], ", ".join(m["data"]), ", ".join(m["capabilities"]), m["doc"])
    console.print(table)
