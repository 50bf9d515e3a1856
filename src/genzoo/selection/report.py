"""The arena report: one self-contained ``report.html`` (every picture embedded as a base64 PNG) with the
recommendation per goal and its reasons, what is within noise and whether a baseline wins, the leaderboard, a
sample grid per model under the real-data reference row, bar charts per metric (error bars = the spread the
leaderboard uses), training curves from each run's ``metrics.jsonl``, a quality-versus-sampling-speed Pareto plot,
and the protocol and machine."""

from __future__ import annotations

import base64
import html
import io
import json
import tempfile
from pathlib import Path
from typing import Any

from genzoo.contract import DataKind
from genzoo.data import Dataset, load_dataset
from genzoo.io import atomic_write_text, save_image_grid, save_scatter
from genzoo.runs import RunDir
from genzoo.selection.arena import GOAL_METRICS, LEADERBOARD, METRIC, Stat, leaderboard, pareto

_STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1200px}td,th{padding:2px 8px;text-align:right}"
          "th:first-child,td:first-child{text-align:left}table{border-collapse:collapse}tr:nth-child(even)"
          "{background:#f4f4f4}.rec{background:#eef6ee;padding:0.6em 1em;border-left:4px solid #4a4}"
          ".note{background:#fff6e0;padding:0.6em 1em;border-left:4px solid #d90}figure{display:inline-block;"
          "margin:0.5em;vertical-align:top}img.px{image-rendering:pixelated;width:256px}pre{white-space:pre-wrap}")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(data: bytes, alt: str, cls: str = "") -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return f"<img alt='{html.escape(alt)}' class='{cls}' src='data:image/png;base64,{encoded}'>"


def _figure(fig: Any, alt: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=72)
    _plt().close(fig)
    return _png(buffer.getvalue(), alt)


def _stats(results: dict[str, Any], key: str) -> dict[str, Stat]:
    return {name: Stat.from_json(s[key]) for name, s in (results.get("summary") or {}).items() if key in s}


# ----- sections ------------------------------------------------------------------------------------------------
def _recommendations(results: dict[str, Any]) -> str:
    items = "".join(f"<li><b>{html.escape(r['goal'])}</b>: {html.escape(r['recommend'])} — "
                    f"{html.escape(r['reason'])}</li>" for r in results.get("recommendations") or [])
    notes = "".join(f"<li>{html.escape(note)}</li>" for note in results.get("notes") or [])
    seeds = len(results["protocol"]["seeds"])
    noise = (f"Spreads are standard errors over {seeds} seeds; a model is named alone only when it is more than two "
             "standard errors of the difference ahead of every other." if seeds > 1 else
             "Single seed: only KID has a spread of its own (over subsets); other orders are as measured, not tested "
             "against noise. Run with --seeds 3 for standard errors.")
    return (f"<h2>Recommendation</h2><div class='rec'><ul>{items or '<li>no finished model</li>'}</ul>"
            f"<p>{html.escape(noise)}</p></div>"
            + (f"<div class='note'><b>Within noise / baselines</b><ul>{notes}</ul></div>" if notes else ""))


def _leaderboard_html(results: dict[str, Any]) -> str:
    table = leaderboard(results)
    head = "".join(f"<th>{html.escape(str(c.header))}</th>" for c in table.columns)
    rows = []
    for i in range(table.row_count):
        cells = [str(list(c.cells)[i]) for c in table.columns]
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return (f"<h2>Leaderboard</h2><table><tr>{head}</tr>{''.join(rows)}</table>"
            f"<p><small>{html.escape(str(table.caption))}</small></p>")


def _reference_picture(dataset: Dataset) -> str:
    """The real held-out examples, drawn like the models' samples (text: one decoded sequence)."""
    real = next(dataset.batches("val", 1000)).x
    if dataset.info.kind is DataKind.TOKENS:
        tokenizer = dataset.tokenizer
        text = tokenizer.decode(real[0].tolist()) if tokenizer is not None else str(real[0].tolist())
        return f"<pre>{html.escape(text)}</pre>"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "real.png"
        if dataset.info.kind is DataKind.IMAGE:
            save_image_grid(path, real[:64], nrow=8)
        else:
            save_scatter(path, real[:, :2], title="real data")
        return _png(path.read_bytes(), "real data", "px" if dataset.info.kind is DataKind.IMAGE else "")


def _picture(path: Path, name: str, kind: DataKind) -> str:
    """A model's preview as the kind's handler wrote it: a PNG, generated text, or raw arrays (named only)."""
    if path.suffix == ".png":
        return _png(path.read_bytes(), name, "px" if kind is DataKind.IMAGE else "")
    if path.suffix == ".txt":
        return f"<pre>{html.escape(path.read_text(errors='replace')[:600])}</pre>"
    return f"<p>samples saved as {html.escape(path.name)}</p>"


def _samples(results: dict[str, Any], out: Path, dataset: Dataset) -> str:
    parts = [f"<figure>{_reference_picture(dataset)}<figcaption>real held-out data (reference)"
             "</figcaption></figure>"]
    for name, model in results["models"].items():
        entry = next((e for e in model["entries"].values() if e.get("samples_file")), None)
        if entry is None:
            continue
        path = out / entry["samples_file"]
        if not path.is_file():
            continue
        checkpoint = entry["eval"]["checkpoint"]
        caption = f"{name} ({model['family']}, {checkpoint.get('checkpoint')} @ step {checkpoint.get('step')})"
        parts.append(f"<figure>{_picture(path, name, dataset.info.kind)}<figcaption>{html.escape(caption)}"
                     "</figcaption></figure>")
    return "<h2>Samples</h2>" + "".join(parts)


def _bars(results: dict[str, Any]) -> str:
    kind = DataKind(results["data"]["kind"])
    shown = [METRIC[k] for k in LEADERBOARD[kind] if METRIC[k].better != "none" and _stats(results, k)]
    if not shown:
        return ""
    plt = _plt()
    cols = min(3, len(shown))
    rows = -(-len(shown) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, shown, strict=False):
        stats = _stats(results, metric.key)
        names = list(stats)
        errors = [stats[k].se or 0.0 for k in names]
        colors = ["0.55" if results["models"][k]["baseline"] else "tab:blue" for k in names]
        ax.bar(range(len(names)), [stats[k].mean for k in names], yerr=errors, capsize=3, color=colors)
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
        ax.set_title(metric.label, fontsize=10)
        if metric.better == "half":
            ax.axhline(0.5, color="k", lw=0.8, ls="--")
        if metric.timing:
            ax.set_yscale("log")
    for ax in list(axes.flat)[len(shown):]:
        ax.axis("off")
    fig.tight_layout()
    return ("<h2>Metrics</h2><p>Grey bars: baselines. Error bars: standard error over seeds, or the metric's own "
            "spread (KID) with one seed.</p>" + _figure(fig, "bar charts per metric"))


def _pareto(results: dict[str, Any]) -> str:
    goals = GOAL_METRICS[DataKind(results["data"]["kind"])]
    quality, speed = METRIC[goals["quality"]], METRIC[goals["speed"]]
    q, s = _stats(results, quality.key), _stats(results, speed.key)
    names = [k for k in q if k in s]
    if not names:
        return ""
    front = _front(results, quality.key, speed.key)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in names:
        on = name in front
        ax.errorbar(s[name].mean, q[name].mean, yerr=q[name].se or 0.0, fmt="o",
                    color="tab:red" if on else "tab:blue")
        ax.annotate(name, (s[name].mean, q[name].mean), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(speed.label)
    ax.set_ylabel(quality.label)
    ax.set_title("quality vs sampling speed (red: Pareto front)")
    return "<h2>Quality vs sampling speed</h2>" + _figure(fig, "Pareto plot")


def _front(results: dict[str, Any], quality: str, speed: str) -> set[str]:
    summary = {name: {k: Stat.from_json(v) for k, v in stats.items()} for name, stats in results["summary"].items()}
    return set(pareto(summary, quality, speed))


#: columns of a metrics.jsonl row that are not losses
_NOT_LOSSES = {"step", "split", "time", "lr_factor", "steps_per_s", "best", "fit_seconds"}


def _run_curves(run: RunDir) -> tuple[str | None, list[tuple[int, float]], str, list[tuple[int, float]]]:
    """A run's training loss (``loss``, else its first logged loss) and its validation metric, per step."""
    records = run.metrics()
    train = [r for r in records if r.get("split") == "train"]
    keys = [k for k in (train[0] if train else {}) if k not in _NOT_LOSSES]
    loss = "loss" if "loss" in keys else keys[0] if keys else None
    metric = run.model_class().validation_metric
    return (loss, [(r["step"], r[loss]) for r in train if loss in r], metric,
            [(r["step"], r[metric]) for r in records if r.get("split") == "val" and metric in r])


def _curves(results: dict[str, Any], out: Path) -> str:
    panels = [(name, [_run_curves(RunDir(out / e["run"])) for e in model["entries"].values()
                      if e.get("run") and (out / e["run"] / "metrics.jsonl").is_file()])
              for name, model in results["models"].items()]
    panels = [(name, curves) for name, curves in panels if curves]
    if not panels:
        return ""
    plt = _plt()
    cols = min(4, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.4 * cols, 2.5 * rows), squeeze=False)
    for ax, (name, curves) in zip(axes.flat, panels, strict=False):
        val_ax = ax.twinx()
        for loss, train, metric, val in curves:
            if len(train) > 1:  # a model fitted in one call has no curve
                ax.plot(*zip(*train, strict=True), color="tab:blue", lw=1)
                ax.set_ylabel(f"train {loss}", fontsize=8, color="tab:blue")
            if val:
                val_ax.plot(*zip(*val, strict=True), "o--", color="tab:red", ms=3, lw=0.8)
                val_ax.set_ylabel(metric, fontsize=8, color="tab:red")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step", fontsize=8)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return ("<h2>Training curves</h2><p>Blue: the training loss each model logs; red: its own validation metric "
            "(lower is better; the best checkpoint is the one scored). One line per seed.</p>"
            + _figure(fig, "training curves"))


def _protocol(results: dict[str, Any]) -> str:
    shown = {k: results[k] for k in ("genzoo_version", "created", "data", "protocol", "machine")}
    return f"<h2>Protocol and machine</h2><pre>{html.escape(json.dumps(shown, indent=1))}</pre>"


def write_report(out: str | Path, results: dict[str, Any], dataset: Dataset | None = None) -> Path:
    """Write ``out/report.html`` from an arena's results (``dataset``: its data, loaded from the spec if None)."""
    out = Path(out)
    dataset = dataset or load_dataset(results["data"]["spec"])
    title = f"genzoo arena: {results['data']['spec']}"
    body = (f"<h1>{html.escape(title)}</h1>" + _recommendations(results) + _leaderboard_html(results)
            + _samples(results, out, dataset) + _bars(results) + _pareto(results) + _curves(results, out)
            + _protocol(results))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>")
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
