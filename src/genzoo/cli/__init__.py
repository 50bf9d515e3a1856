"""Command-line interface: a thin layer over the Python API (each command in its own module)."""

from __future__ import annotations

import sys

from genzoo.cli import (  # noqa: F401  (modules register commands)
    advise,
    arena,
    data,
    demo,
    edit,
    eval,
    export,
    index,
    info,
    list_models,
    sample,
    score,
    serve,
    train,
    tune,
)
from genzoo.cli.app import app, err_console
from genzoo.errors import GenzooError


def main() -> None:
    """Console-script entry point: user errors and operating-system errors print one line and exit 2."""
    try:
        app()
    except GenzooError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except OSError as err:  # read-only or full disk, a file where a folder should be ...
        where = f": {err.filename}" if err.filename else ""
        err_console.print(f"[bold red]error:[/] {err.strerror or err}{where}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
