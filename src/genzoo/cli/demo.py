"""`genzoo demo`: train a few models briefly on the built-in digits and write sample grids and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from genzoo.cli.app import app, console
from genzoo.cli.info import run_summary
from genzoo.eval import evaluate, table
from genzoo.eval.report import NLL_MARK, checkpoint_label
from genzoo.io import atomic_write_text, save_image_grid, write_json
from genzoo.runs import load
from genzoo.training import parse_budget, train

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
    summaries, results = [], []
    for name in models:
        run = out / name
        if (run / "config.json").exists():
            console.print(f"{run} exists from an earlier demo: continuing it")
        console.rule(f"{name} on digits, {budget}")
        train(name, "digits", budget=budget, out=run, seed=seed, resume=(run / "config.json").exists())
        model = load(run)
        grid = out / f"{name}-samples.png"
        save_image_grid(grid, model.sample(64, seed=seed), nrow=8)
        result = evaluate(run, seed=seed, progress=True)
        results.append(result)
        summaries.append({**run_summary(run), "samples_png": str(grid), "eval": _headline(result),
                          "report": str(run / "eval" / "index.html")})
    write_json(out / "summary.json", summaries)
    atomic_write_text(out / "summary.md", _markdown(summaries))
    console.print(table(results))
    console.print(f"sample grids, summary.md and per-run HTML reports (RUN/eval/index.html) in [bold]{out}[/]")


def _headline(result: dict) -> dict:
    """The few numbers the summary shows: model row and the real-data reference row."""
    def pick(row: dict) -> dict:
        likelihood = row.get("likelihood") or {}
        return {"fd": row.get("fd"), "precision": row.get("precision"), "recall": row.get("recall"),
                "c2st_accuracy": row.get("c2st_accuracy"), "bits_per_dim": likelihood.get("bits_per_dim"),
                "likelihood_kind": likelihood.get("kind")}
    return {"model": pick(result["rows"]["model"]), "reference": pick(result["rows"]["reference"]),
            "checkpoint": checkpoint_label(result) or "-", "feature_space": result["protocol"]["feature_space"],
            "n": result["protocol"]["n"]}


def _fmt(value: object) -> str:
    return f"{value:.3g}" if isinstance(value, float) else "-" if value is None else str(value)


def _bits(row: dict) -> str:
    kind = row.get("likelihood_kind")
    return (NLL_MARK[kind] if kind else "") + _fmt(row.get("bits_per_dim"))


def _markdown(summaries: list[dict]) -> str:
    lines = ["# genzoo demo: digits (8x8, 17 levels)", "",
             "| model | parameters | steps trained | scored checkpoint | FD | precision | recall | C2ST acc. "
             "| bits/dim | samples |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    reference = summaries[0]["eval"]["reference"] if summaries else {}
    rows = [("real held-out (reference)", None, None, "-", reference, "-")]
    rows += [(s["model"], s["parameters"], s["checkpoints"].get("last"), s["eval"]["checkpoint"],
              s["eval"]["model"], Path(s["samples_png"]).name) for s in summaries]
    for name, params, steps, scored, ev, png in rows:
        lines.append(f"| {name} | {_fmt(params)} | {_fmt(steps)} | {scored} | {_fmt(ev.get('fd'))} | "
                     f"{_fmt(ev.get('precision'))} | {_fmt(ev.get('recall'))} | {_fmt(ev.get('c2st_accuracy'))} | "
                     f"{_bits(ev)} | {png} |")
    space = summaries[0]["eval"]["feature_space"] if summaries else {}
    n = summaries[0]["eval"]["n"] if summaries else 0
    lines += ["", f"Feature space: {space.get('name')} ({space.get('hash')}), {n} samples per row; "
              "C2ST accuracy 0.5 = indistinguishable from real; bits/dim marked ≤ is an upper bound (from an ELBO, "
              "say). "
              "Details: each run's eval/index.html and docs/evaluation.md.", "",
              "```json", json.dumps([{k: s[k] for k in ('model', 'last_val')} for s in summaries], indent=1), "```"]
    return "\n".join(lines) + "\n"
