"""`genzoo data check SPEC`: exact and near-duplicate examples within a dataset and leaks across its splits."""

from __future__ import annotations

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from genzoo.cli.app import app, console, err_console
from genzoo.data.hygiene import DataReport, Finding, check
from genzoo.io import dumps_json

data_app = typer.Typer(help="Inspect datasets: duplicates and split leaks.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
def check_command(
    spec: str = typer.Argument(..., help="Data spec (digits, mnist:DIR, text:FILE, task:reverse, a folder ...)."),
    near: float = typer.Option(None, "--near", help="Similarity in (0, 1] from which two examples are near "
                               "duplicates (1: exact only). Default per kind: images 0.98 (1 - mean |pixel "
                               "difference|), text and sequences 0.8 (Jaccard of shingles), vectors 1."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Report exact and near duplicates within SPEC and test/validation examples that repeat training ones."""
    with Progress(TextColumn("[bold]check[/] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True, console=err_console, disable=as_json) as bar:
        task = bar.add_task("loading", total=None)
        report = check(spec, near, lambda stage, done, total: bar.update(task, description=stage, completed=done,
                                                                           total=total))
    if as_json:
        console.print_json(dumps_json(report.to_json()))
        return
    for part in (report, report.domain_b):
        if part is not None:
            console.print(_table(part, "domain B" if part is report.domain_b else None))


def _table(report: DataReport, domain: str | None) -> Table:
    sizes = ", ".join(f"{split} {n}" for split, n in report.sizes.items())
    title = f"{report.spec}{f' ({domain})' if domain else ''}: {report.kind}, {sizes}"
    caption = f"near: similarity ≥ {report.near:g}, {report.how}"
    table = Table(title=title, caption=caption)
    for column in ("finding", "exact", "near", "of", "fraction", "e.g. (split:index)"):
        table.add_column(column, justify="right" if column in ("exact", "near", "of", "fraction") else "left")
    rows: list[tuple[str, Finding]] = [("duplicates (#dedup=true removes)", report.duplicates)]
    rows += [(f"{later} repeats {earlier}", f) for later, _, earlier in
             (name.partition("/") for name in report.leaks) for f in [report.leaks[f"{later}/{earlier}"]]]
    for name, finding in rows:
        table.add_row(name, str(finding.exact), str(finding.near), str(finding.total), f"{finding.fraction:.2%}",
                      _pairs(finding, report.labels))
    return table


def _pairs(finding: Finding, labels: dict[str, str]) -> str:
    shown = []
    for a, i, b, j, how in finding.pairs[:3]:
        pair = f"{a}:{i}={b}:{j}" if how == "exact" else f"{a}:{i}≈{b}:{j}"
        if f"{a}:{i}" in labels:
            pair += f" {labels[f'{a}:{i}']!r}"
        shown.append(pair)
    return "\n".join(shown)
