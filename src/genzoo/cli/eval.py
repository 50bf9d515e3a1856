"""`genzoo eval RUN [RUN ...]` and `genzoo eval --real A --fake B`: the one evaluation protocol from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
from rich.table import Table

from genzoo.cli.app import app, console
from genzoo.contract import parse_override
from genzoo.data.specs import read_examples
from genzoo.errors import GenzooError
from genzoo.eval import compare_sets, evaluate, table
from genzoo.eval.report import columns_table, warnings_note
from genzoo.io import dumps_json


@app.command("eval")
def eval_command(
    runs: list[Path] = typer.Argument(None, help="Run directories to evaluate (several: compared side by side), "
                                                 "or hf:NAME_OR_PATH (a pretrained LM, with --data text:FILE)."),
    n: int = typer.Option(None, "--n", "-n", help="Samples to draw (default: as many as held-out examples, ≤2000)."),
    seed: int = typer.Option(0, "--seed", help="Sampling and metric seed: the same seed gives the same numbers."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON instead of a table."),
    real: str = typer.Option(None, "--real", help="Real set: .npz/.npy file, image folder or data spec."),
    fake: str = typer.Option(None, "--fake", help="Generated set to score against --real (no model involved)."),
    data: str = typer.Option(None, "--data", help="Score runs on this data instead of their own (text is read with "
                                                   "the model's tokenizer); with --real/--fake: its feature space."),
    no_report: bool = typer.Option(False, "--no-report", help="Skip the HTML report and PNGs in RUN/eval/."),
    opts: list[str] = typer.Option([], "--opt", help="Sampling option key=value for the model (e.g. steps=50)."),
) -> None:
    """Score runs (samples vs real data, with a real-data reference row) or two sets of examples."""
    if (real is None) != (fake is None):
        raise GenzooError("--real and --fake go together: genzoo eval --real A --fake B")
    if real is not None:
        if runs:
            raise GenzooError("give either run directories or --real/--fake, not both")
        row = compare_sets(read_examples(real), read_examples(fake, finite=False), features=data, seed=seed)
        if as_json:
            console.print_json(dumps_json(row))
        else:
            console.print(_sets_table(row, real, fake, seed))
        return
    if not runs:
        raise GenzooError("name at least one run directory, or use --real A --fake B")
    options = dict(parse_override(item) for item in opts)
    results = [evaluate(run, n=n, seed=seed, data=data, report=not no_report, sample_options=options,
                        progress=not as_json) for run in runs]
    if as_json:
        console.print_json(dumps_json(results if len(results) > 1 else results[0]))
        return
    console.print(table(results))
    for run in (Path(r["run"]) for r in results if r["run"]):
        console.print(f"wrote {run / 'eval.json'}" + ("" if no_report else f" and {run / 'eval' / 'index.html'}"))


def _sets_table(row: dict[str, Any], real: str, fake: str, seed: int) -> Table:
    """The --real/--fake table: the fake set's column, after the reference column when there is one."""
    space = row["feature_space"]
    caption = (f"real {real} ({row['n_real']} examples scored) · feature space {space['name']} ({space['hash']}) "
               f"· seed {seed}" + warnings_note(row["warnings"]))
    reference = [("real held-out (reference)", row["reference"])] if row.get("reference") else []
    return columns_table([*reference, (fake, row)], caption)
