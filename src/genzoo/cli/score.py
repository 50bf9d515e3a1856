"""`genzoo score RUN --data SPEC [--ood SPEC|noise] [--out scores.csv]`: anomaly scores and their AUROC."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import typer

from genzoo.cli.app import app, console
from genzoo.eval.scoring import format_auroc, score
from genzoo.io import dumps_json


@app.command("score")
def score_command(
    run: Path = typer.Argument(..., help="Run directory of a model with a likelihood or an energy."),
    data: str = typer.Option(None, "--data", help="Data spec to score (default: the run's own data)."),
    ood: str = typer.Option(None, "--ood", help="Out-of-distribution data spec (resized and snapped to the model's "
                                                "images), or 'noise': reports the AUROC of in vs out."),
    out: Path = typer.Option(None, "--out", "-o", help="CSV file: one row per example (set, index, score, "
                                                        "bits/dim where the model has a likelihood)."),
    split: Literal["all", "train", "val", "test"] = typer.Option("all", "--split", help="Which split of the data "
                                                                  "(and of --ood) to score."),
    checkpoint: Literal["best", "last"] = typer.Option("best", "--checkpoint", help="best (by validation) or last."),
    seed: int = typer.Option(0, "--seed", help="Seed of the noise set (--ood noise)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """One anomaly score per example (higher = more unusual): NLL, the VAE's bound, energy or free energy."""
    result = score(run, data, split=split, ood=ood, out=out, checkpoint=checkpoint, seed=seed)
    summary = result.summary()
    if as_json:
        console.print_json(dumps_json(summary))
        return
    line = f"{summary['n']} examples, mean {result.score_name} {summary['mean_score']:.4g}"
    if "mean_bits_per_dim" in summary:
        line += f" ({summary['mean_bits_per_dim']:.4f} bits/dim)"
    console.print(line)
    if result.ood_scores is not None:
        console.print(f"{summary['n_ood']} out-of-distribution examples ({ood}), mean {result.score_name} "
                      f"{summary['mean_score_ood']:.4g}; AUROC [bold]{format_auroc(result.auroc)}[/]")
    for note in result.notes:
        console.print(f"note: {note}")
    if out is not None:
        console.print(f"wrote {out}")
