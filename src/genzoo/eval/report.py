"""Show evaluation results: a terminal table (metrics as rows, reference and runs as columns), and an HTML report
with PNGs (samples, class histogram, worst memorization offenders next to their nearest training examples)."""

from __future__ import annotations

import html
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.table import Table
from torch import Tensor

from genzoo.errors import GenzooError
from genzoo.io import atomic_path, atomic_write_text, save_image_grid, save_scatter

# how an NLL relates to the truth, from the kind of the log-likelihood it came from
NLL_MARK = {"exact": "", "lower_bound": "≤ ", "upper_bound": "≥ ", "estimate": "≈ "}


def _get(row: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(row, dict) or row.get(key) is None:
            return None
        row = row[key]
    return row


def _num(fmt: str, scale: float = 1.0) -> Callable[[Any], str]:
    return lambda v: "–" if v is None else format(v * scale if scale != 1.0 else v, fmt)


def _nll(row: dict[str, Any], key: str, fmt: str) -> str:
    ll = row.get("likelihood")
    if not ll:
        return "–"
    value = ll[key] if ll[key] is not None else math.inf  # eval.json stores an infinite NLL as null
    return NLL_MARK[ll["kind"]] + format(value, fmt)


#: (label, how to read the value from one row)
METRICS: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
    ("samples scored", lambda r: _num("d")(r.get("n_fake"))),
    ("FD ↓", lambda r: _num(".3f")(r.get("fd"))),
    ("KID ×10³ ↓", lambda r: "–" if r.get("kid") is None else f"{r['kid'] * 1e3:.2f} ± {r['kid_std'] * 1e3:.2f}"),
    ("MMD² ×10³ ↓", lambda r: _num(".2f", 1e3)(r.get("mmd2"))),
    ("precision ↑", lambda r: _num(".3f")(r.get("precision"))),
    ("recall ↑", lambda r: _num(".3f")(r.get("recall"))),
    ("density (≈1)", lambda r: _num(".3f")(r.get("density"))),
    ("coverage ↑", lambda r: _num(".3f")(r.get("coverage"))),
    ("C2ST accuracy (0.5 best)", lambda r: _num(".3f")(r.get("c2st_accuracy"))),
    ("C2ST AUROC (0.5 best)", lambda r: _num(".3f")(r.get("c2st_auroc"))),
    ("classes hit", lambda r: "–" if not r.get("classes") else f"{r['classes']['classes_hit']}/"
     f"{r['classes']['num_classes']}"),
    ("class entropy (nats)", lambda r: _num(".3f")(_get(r, "classes", "entropy"))),
    ("class KL to real ↓", lambda r: _num(".4f")(_get(r, "classes", "kl_to_real"))),
    ("modes hit", lambda r: "–" if not r.get("modes") else f"{r['modes']['modes_hit']}/{r['modes']['num_modes']}"),
    ("high-quality samples", lambda r: _num(".3f")(_get(r, "modes", "high_quality"))),
    ("copy z (<-3: copying)", lambda r: _num(".2f")(_get(r, "memorization", "copy_z"))),
    ("authenticity", lambda r: _num(".3f")(_get(r, "memorization", "authenticity"))),
    ("exact copies", lambda r: _num(".3f")(_get(r, "memorization", "exact_copies"))),
    ("NLL nats/example ↓", lambda r: _nll(r, "nll_nats", ".2f")),
    ("bits/dim ↓", lambda r: _nll(r, "bits_per_dim", ".4f")),
    ("test points with log p = -inf/NaN", lambda r: _num("d")(_get(r, "likelihood", "nonfinite") or None)),
    ("likelihood method", lambda r: _get(r, "likelihood", "method") or "–"),
    ("loss nats/token ↓", lambda r: _num(".4f")(_get(r, "text", "loss"))),
    ("perplexity ↓", lambda r: _num(".3f")(_get(r, "text", "perplexity"))),
    ("bits/char ↓", lambda r: _num(".4f")(_get(r, "text", "bits_per_char"))),
    ("bits/byte ↓", lambda r: _num(".4f")(_get(r, "text", "bits_per_byte"))),
    ("generate tokens/s, KV cache", lambda r: _num(",.0f")(_get(r, "text", "gen_tokens_per_s_cache"))),
    ("generate tokens/s, no cache", lambda r: _num(",.0f")(_get(r, "text", "gen_tokens_per_s_no_cache"))),
    ("parameters", lambda r: _num(",d")(_get(r, "cost", "parameters"))),
    ("network evals/sample", lambda r: _num("d")(_get(r, "cost", "nfe_per_sample"))),
    ("samples/s", lambda r: _num(",.0f")(_get(r, "cost", "samples_per_s"))),
    ("train steps/s", lambda r: _num(".1f")(_get(r, "cost", "train_steps_per_s"))),
    ("non-finite samples", lambda r: _num("d")(r.get("nonfinite_samples"))),
]


#: protocol settings that change the numbers (the seed only draws other samples; sample_batch changes nothing)
_SETTINGS = ("n", "n_real", "k", "kid_subsets", "kid_subset_size", "c2st_folds", "likelihood_max")


def check_comparable(results: list[dict[str, Any]]) -> None:
    """Refuse to put side by side results measured in different feature spaces, on different data, or with other
    sample counts or metric settings (FD, for one, falls as the sample count grows)."""
    first = results[0]
    for other in results[1:]:
        a, b = first["protocol"]["feature_space"], other["protocol"]["feature_space"]
        if (a or {}).get("hash") != (b or {}).get("hash") or first["data"]["spec"] != other["data"]["spec"]:
            raise GenzooError(
                f"cannot compare {_label(first)} (data '{first['data']['spec']}', feature space "
                f"{(a or {}).get('name')} {(a or {}).get('hash')}) with {_label(other)} (data "
                f"'{other['data']['spec']}', feature space {(b or {}).get('name')} {(b or {}).get('hash')}): "
                "scores from different feature spaces are not comparable")
        differ = [k for k in _SETTINGS if first["protocol"].get(k) != other["protocol"].get(k)]
        if differ:
            got = "; ".join(f"{k} = {first['protocol'].get(k)} vs {other['protocol'].get(k)}" for k in differ)
            raise GenzooError(f"cannot compare {_label(first)} with {_label(other)}: they were scored with different "
                              f"protocol settings ({got}); the metrics depend on them, so evaluate both with the "
                              "same --n and protocol")


def _label(result: dict[str, Any]) -> str:
    return Path(result["run"]).name if result.get("run") else result["model"]


def _columns(results: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    check_comparable(results)
    return [("real held-out (reference)", results[0]["rows"]["reference"])] + [
        (_label(r) + (f"\n({checkpoint_label(r)})" if checkpoint_label(r) else ""), r["rows"]["model"])
        for r in results]


def checkpoint_label(result: dict[str, Any]) -> str:
    """Which weights a result's numbers come from, e.g. "best @ 500, ema" ("" for a model without a run):
    best and last checkpoints differ."""
    ck = result.get("checkpoint") or {}
    if ck.get("checkpoint") is None:
        return ""
    return f"{ck['checkpoint']} @ {ck.get('step')}, {ck.get('weights')}"


def _caption(results: list[dict[str, Any]]) -> str:
    p = results[0]["protocol"]
    space = p["feature_space"] or {}
    return (f"data {results[0]['data']['spec']} · feature space {space.get('name')} ({space.get('hash')}) · "
            f"{p['n_real']} real training examples · seed {p['seed']} · likelihood on {p['n_test']} test examples"
            + warnings_note(results[0].get("warnings")))


def warnings_note(warnings: list[str] | None) -> str:
    """Caveats for a caption, one per line ("" when there are none)."""
    return "".join(f"\nwarning: {w}" for w in warnings or [])


def table(results: list[dict[str, Any]]) -> Table:
    """A rich table with one row per metric and one column for the reference and each result."""
    return columns_table(_columns(results), _caption(results))


def _metric_rows(columns: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, list[str]]]:
    """(label, one cell per column) for every metric with a value somewhere: the fixed :data:`METRICS`, then each
    model's own task metrics (``task`` in a row, from ``model.task_metrics``) by name."""
    readers = list(METRICS)
    task_keys = dict.fromkeys(k for _, row in columns for k in (row.get("task") or {}))
    readers += [(f"task: {key}", lambda r, key=key: _num(".4g")(_get(r, "task", key))) for key in task_keys]
    rows = [(label, [read(row) for _, row in columns]) for label, read in readers]
    return [(label, cells) for label, cells in rows if any(c != "–" for c in cells)]


def columns_table(columns: list[tuple[str, dict[str, Any]]], caption: str) -> Table:
    """A rich table with one row per metric (those with a value somewhere) and one column per scored row."""
    out = Table(title="genzoo eval", caption=caption, show_lines=False)
    out.add_column("metric", style="bold")
    for name, _ in columns:
        out.add_column(name, justify="right")
    for label, cells in _metric_rows(columns):
        out.add_row(label, *cells)
    return out


def html_table(results: list[dict[str, Any]]) -> str:
    columns = _columns(results)
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in columns)
    body = [f"<tr><th>{html.escape(label)}</th>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
            for label, cells in _metric_rows(columns)]
    return f"<table><tr><th>metric</th>{head}</tr>{''.join(body)}</table>"


def _class_histogram(path: Path, result: dict[str, Any]) -> bool:
    model, ref = result["rows"]["model"].get("classes"), result["rows"]["reference"].get("classes")
    if not model or not ref:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = range(len(model["histogram"]))
    fig, ax = plt.subplots(figsize=(5, 2.5), dpi=100)
    ax.bar([i - 0.2 for i in k], ref["histogram"], width=0.4, label="real held-out", color="0.6")
    ax.bar([i + 0.2 for i in k], model["histogram"], width=0.4, label="samples", color="tab:blue")
    ax.set_xticks(list(k))
    ax.set_xlabel("predicted class")
    ax.set_ylabel("share")
    ax.legend(fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, bbox_inches="tight", format="png")
    plt.close(fig)
    return True


def write_report(folder: Path, result: dict[str, Any], samples: Tensor,
                 offenders: tuple[Tensor, Tensor] | None) -> Path:
    """``folder/index.html`` with the table and PNGs; returns the HTML path."""
    folder.mkdir(parents=True, exist_ok=True)
    figures = []
    if len(samples) and samples.dim() == 4:
        save_image_grid(folder / "samples.png", samples[:64])
        figures.append(("samples.png", "First 64 samples"))
    elif len(samples) and samples.dim() == 2 and samples.shape[1] >= 2:
        save_scatter(folder / "samples.png", samples[:64, :2], title="samples")
        figures.append(("samples.png", "First 64 samples"))
    if _class_histogram(folder / "classes.png", result):
        figures.append(("classes.png", "Predicted classes: real held-out vs samples"))
    if offenders is not None and samples.dim() == 4 and len(offenders[0]):
        worst, neighbours = offenders
        save_image_grid(folder / "neighbours.png", torch.cat([worst, neighbours]), nrow=len(worst))
        figures.append(("neighbours.png", "Top: samples nearest to a training example; bottom: that example"))
    imgs = "".join(f"<figure><img src='{name}' style='image-rendering:pixelated;max-width:640px'>"
                   f"<figcaption>{html.escape(text)}</figcaption></figure>" for name, text in figures)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>genzoo eval: {html.escape(_label(result))}"
            "</title><style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}"
            "th:first-child{text-align:left}</style></head><body>"
            f"<h1>genzoo eval: {html.escape(_label(result))}</h1><p>{html.escape(_caption([result]))}</p>"
            f"{html_table([result])}{imgs}</body></html>")
    path = folder / "index.html"
    atomic_write_text(path, page)
    return path
