"""The typer application every command module registers on."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="genzoo",
    help="Every major family of generative model behind one API: train on your data, sample, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


@app.callback()
def _options(
    threads: int = typer.Option(None, "--threads", min=1, envvar="GENZOO_THREADS",
                                help="CPU threads PyTorch may use (default: one per core). On a machine busy with "
                                     "other work, fewer threads can be several times faster."),
) -> None:
    """Every major family of generative model behind one API: train on your data, sample, evaluate."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
