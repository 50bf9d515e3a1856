"""`genzoo export RUN --format onnx|int8|torchscript`: an edge build of a run's sampling network, checked."""

from __future__ import annotations

from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.export import FORMATS, export
from genzoo.io import dumps_json


@app.command("export")
def export_command(
    run: Path = typer.Argument(..., help="Run directory."),
    format: str = typer.Option(..., "--format", "-f", help=f"Artefact: {', '.join(FORMATS)}."),
    out: Path = typer.Option(None, "--out", help="Folder to write (default: RUN/export/FORMAT); replaced atomically."),
    batch: int = typer.Option(1, "--batch", min=1, help="Examples per call: the artefact's fixed batch size."),
    context: int = typer.Option(None, "--context", min=1, help="Token models: positions the artefact reads "
                                                              "(default: the model's context)."),
    opset: int = typer.Option(18, "--opset", min=7, help="ONNX opset version."),
    checkpoint: str = typer.Option("best", "--checkpoint", help="best or last."),
    seed: int = typer.Option(0, "--seed", help="Seed of the inputs the artefact is checked on."),
    as_json: bool = typer.Option(False, "--json", help="Print the sidecar (export.json) as JSON."),
) -> None:
    """Export a run's generator, decoder, flow inverse or next-token network as ONNX, int8 or TorchScript, and
    check it against the original model (max abs difference)."""
    record = export(run, format, out, batch=batch, context=context, opset=opset, checkpoint=checkpoint, seed=seed)
    if as_json:
        console.print_json(dumps_json(record))
        return
    folder = out or run / "export" / format
    shapes = ", ".join(f"{i['name']} {tuple(i['shape'])}" for i in record["inputs"])
    console.print(f"wrote {folder / record['artefact']} ({record['size_bytes'] / 1024:.0f} KiB) and export.json")
    console.print(f"{record['model']}: {shapes} -> {record['output']['name']} {tuple(record['output']['shape'])}")
    console.print(f"max abs difference from the original: {record['max_abs_diff']:.3g} "
                  f"(checked with {record['checked_with']})")
    console.print(f"sampling: {record['sampling']}")
