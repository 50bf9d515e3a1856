"""`genzoo serve RUN_OR_DIR...`: one HTTP server for the given runs and pretrained models (uvicorn + FastAPI)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.errors import ConfigError


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@app.command()
def serve(
    sources: list[str] = typer.Argument(..., help="Run directories, hf:ID pretrained models, or NAME=SOURCE to name "
                                                  "one; a folder holding run directories serves them all."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port."),
    eager: bool = typer.Option(False, "--eager", help="Load every model at start-up instead of on first use."),
    files_dir: Path = typer.Option(None, "--files-dir", help="Where images returned as URLs are kept."),
) -> None:
    """Serve models over HTTP: OpenAI-style /v1/models, /v1/images/generations, /v1/score, /health, /metrics."""
    import uvicorn

    from genzoo.serve import ModelRegistry, ServeSettings, create_app
    from genzoo.serve.registry import expand_sources

    if not _is_loopback(host):
        raise ConfigError(f"binding to {host} exposes the models beyond this machine; API keys are not available yet,"
                          " so this server only binds to loopback (127.0.0.1, ::1, localhost)")
    registry = ModelRegistry.from_sources(expand_sources(sources), eager=eager)
    settings = ServeSettings(files_dir=files_dir)
    console.print(f"serving {', '.join(registry.models)} on http://{host}:{port}", highlight=False)
    uvicorn.run(create_app(registry, settings), host=host, port=port, log_level="warning")
