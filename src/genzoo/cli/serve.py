"""`genzoo serve RUN_OR_DIR...`: one HTTP server for the given runs and pretrained models (uvicorn + FastAPI);
`genzoo serve-key NAME` makes an API key; `genzoo serve-calibrate` prints the calibrated thresholds of a config's
cascades; `genzoo requests export` writes the request store as JSON lines."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import typer

from genzoo.cli.app import app, console
from genzoo.errors import ConfigError

DEFAULT_STORE = "sqlite:///genzoo-requests.db"

requests_app = typer.Typer(help="The request store of genzoo serve.", no_args_is_help=True)
app.add_typer(requests_app, name="requests")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_config(path: Path | None) -> dict[str, Any]:
    """The ``--config`` YAML file as a dict of :class:`~genzoo.serve.ServeSettings` fields (plus ``models``)."""
    if path is None:
        return {}
    import yaml

    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return raw


@app.command()
def serve(
    sources: list[str] = typer.Argument(None, help="Run directories, hf:ID pretrained models, or NAME=SOURCE to name "
                                                   "one; a folder holding run directories serves them all."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (loopback by default; any other address "
                                                         "needs API keys in --config)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="Port."),
    config: Path = typer.Option(None, "--config", help="YAML settings: limits, store, dedupe, api_keys, block_list, "
                                                       "models (a list of sources)."),
    store: str = typer.Option(None, "--store", help=f"SQLAlchemy URL of the request store [default: {DEFAULT_STORE}]"),
    no_store: bool = typer.Option(False, "--no-store", help="Keep no record of requests."),
    eager: bool = typer.Option(False, "--eager", help="Load every model at start-up instead of on first use."),
    files_dir: Path = typer.Option(None, "--files-dir", help="Where images returned as URLs are kept."),
    timeout: float = typer.Option(None, "--timeout", min=0.001, help="Seconds a request may take before it is "
                                                                     "stopped with a 504 [default: 300, or the "
                                                                     "config's request_timeout]."),
) -> None:
    """Serve models over HTTP: OpenAI-compatible text, image generation and edits, scoring, /health, /metrics."""
    import uvicorn

    from genzoo.serve import ModelRegistry, ServeSettings, create_app
    from genzoo.serve.registry import expand_sources

    raw = read_config(config)
    listed = raw.pop("models", []) or []
    raw["store"] = None if no_store else store or raw.get("store") or DEFAULT_STORE
    if files_dir is not None:
        raw["files_dir"] = files_dir
    if timeout is not None:
        raw["request_timeout"] = timeout
    settings = ServeSettings(**raw)
    if not is_loopback(host) and not settings.api_keys:
        raise ConfigError(f"binding to {host} exposes the models beyond this machine: configure api_keys in --config "
                          "(genzoo serve-key NAME makes one), or bind to loopback")
    registry = ModelRegistry.from_sources(expand_sources([*listed, *(sources or [])]), eager=eager)
    if not registry.models:
        raise ConfigError("nothing to serve: name run directories or hf:ID models (or list them under 'models')")
    console.print(f"serving {', '.join(registry.models)} on http://{host}:{port} (store: {settings.store or 'none'})",
                  highlight=False)
    uvicorn.run(create_app(registry, settings), host=host, port=port, log_level="warning")


@app.command("serve-calibrate")
def serve_calibrate(
    config: Path = typer.Argument(..., help="The serve.yaml whose cascades to calibrate (its models and cascades)."),
    sources: list[str] = typer.Argument(None, help="More sources, as for genzoo serve."),
) -> None:
    """Calibrate each cascade step given a target_escalation and print the thresholds, to pin them in the config."""
    from genzoo.serve import ModelRegistry, ServeSettings
    from genzoo.serve.registry import expand_sources

    raw = read_config(config)
    registry = ModelRegistry.from_sources(expand_sources([*(raw.pop("models", []) or []), *(sources or [])]))
    settings = ServeSettings(**{k: v for k, v in raw.items() if k == "cascades"})
    if not settings.cascades:
        raise ConfigError(f"{config}: no cascades to calibrate")
    for cascade_config in settings.cascades:
        cascade = registry.add_cascade(cascade_config)
        for step, threshold in zip(cascade_config.steps, cascade.thresholds(registry), strict=True):
            if threshold is not None:
                how = f"calibrated to target_escalation {step.target_escalation}" if step.target_escalation else "given"
                console.print(f"{cascade.name}: {step.model} {step.signal} threshold: {threshold:.6g} ({how})",
                              highlight=False)


@app.command("serve-key")
def serve_key(name: str = typer.Argument(..., help="Client name, stored with its requests.")) -> None:
    """Make a random API key: give the key to the client, put the printed entry under api_keys in --config."""
    from genzoo.serve.auth import new_key

    key, entry = new_key(name)
    console.print(f"key (shown once, give it to the client): {key}", highlight=False, soft_wrap=True)
    console.print(f"config entry:\napi_keys:\n  - id: {entry.id}\n    sha256: {entry.sha256}\n"
                  "    requests_per_minute: 60", highlight=False, soft_wrap=True)


@requests_app.command("export")
def export(
    out: Path = typer.Option(..., "--out", "-o", help="JSON-lines file to write."),
    store: str = typer.Option(DEFAULT_STORE, "--store", help="SQLAlchemy URL of the request store."),
) -> None:
    """Write every stored request and response as JSON lines (outputs marked synthetic)."""
    from sqlalchemy.engine import make_url

    from genzoo.serve.store import RequestStore

    url = make_url(store)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        raise ConfigError(f"no request store at {url.database} (genzoo serve writes one where it runs)")
    count = RequestStore(store).export(out)
    console.print(f"{count} requests -> [bold]{out}[/]")
