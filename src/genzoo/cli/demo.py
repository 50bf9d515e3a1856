"""`genzoo demo`: train a few models briefly on the built-in digits and write sample grids and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer

import genzoo
from genzoo.cli.app import app, console
from genzoo.cli.info import run_summary
from genzoo.io import atomic_write_text, save_image_grid, write_json
from genzoo.training import parse_budget

DEMO_MODELS = ("vae", "dcgan")


@app.command()
def demo(
    out: Path = typer.Option(Path("genzoo-demo"), "--out", "-o", help="Folder for the demo's runs and summary."),
    budget: str = typer.Option("40s", "--budget", "-b", help="Training budget per model."),
    models: list[str] = typer.Option(list(DEMO_MODELS), "--model", "-m", help="Models to train (repeatable)."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
) -> None:
    """Train VAE and DCGAN on digits for a short budget each; write sample grids and summary.md/json."""
    parse_budget(budget)
    out.mkdir(parents=True, exist_ok=True)
    summaries = []
    for name in models:
        run = out / name
        if (run / "config.json").exists():
            console.print(f"{run} exists from an earlier demo: continuing it")
        console.rule(f"{name} on digits, {budget}")
        genzoo.train(name, "digits", budget=budget, out=run, seed=seed, resume=(run / "config.json").exists())
        model = genzoo.load(run)
        grid = out / f"{name}-samples.png"
        save_image_grid(grid, model.sample(64, seed=seed), nrow=8)
        summaries.append({**run_summary(run), "samples_png": str(grid)})
    write_json(out / "summary.json", summaries)
    atomic_write_text(out / "summary.md", _markdown(summaries))
    console.print(_markdown(summaries))
    console.print(f"sample grids and summary in [bold]{out}[/]")


def _markdown(summaries: list[dict]) -> str:
    lines = ["# genzoo demo: digits (8x8, 17 levels)", "",
             "| model | family | parameters | steps | validation metric | best | samples |",
             "|---|---|---|---|---|---|---|"]
    for s in summaries:
        best = f"{s['best_value']:.4g}" if s["best_value"] is not None else "-"
        lines.append(f"| {s['model']} | {s['family']} | {s['parameters']:,} | {s['checkpoints'].get('last')} | "
                     f"{s['validation_metric']} | {best} | {Path(s['samples_png']).name} |")
    lines += ["", "val_nelbo: negative ELBO in nats per image (upper bound on NLL); val_mmd: squared MMD between "
              "samples and held-out digits (0 = indistinguishable by that kernel).", "",
              "```json", json.dumps([{k: s[k] for k in ('model', 'last_val')} for s in summaries], indent=1), "```"]
    return "\n".join(lines) + "\n"
