"""Likelihood and energy families side by side: held-out bits/dim, sample quality, speed and anomaly AUROC.

Protocol: each model trains on the data with its defaults, seed 0, for its budget (3 minutes, `ebm` 5 minutes;
`gmm` fits in one call); its best checkpoint by the validation metric (EMA weights where kept) is scored by
`genzoo eval` (seed 0: held-out bits/dim on the test split in the convention of docs/evaluation.md, FD and the
other sample metrics, samples/s) and by `genzoo score` on the test split against out-of-distribution sets (uniform
noise on the data's levels, and every other data spec given with --ood, resized and snapped to the model's images),
giving the AUROC of the model's anomaly score. Writes bench/results/<name>.json and prints a markdown table.

    python bench/likelihood.py [--data digits] [--models realnvp glow ...] [--budget ebm=5m ...]
                               [--ood mnist:../shared/data] [--name likelihood_digits] [--keep runs/bench-ll]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.contract import Capability
from genzoo.runs import RunDir

MODELS = ["gmm", "realnvp", "glow", "pixelcnn", "gated-pixelcnn", "made", "rbm", "ebm", "vae"]
BUDGETS = {"ebm": "5m"}
DEFAULT_BUDGET = "3m"


def train_and_measure(name: str, data: str, budget: str, folder: Path, oods: list[str],
                      n: int | None) -> dict[str, Any]:
    run = genzoo.train(name, data, budget=budget, out=folder / name, seed=0, progress=False)
    result = genzoo.evaluate(run, seed=0, n=n, report=False)
    train = [m for m in RunDir(run).metrics() if m["split"] == "train"]
    result["training"] = {"budget": budget, "steps": train[-1]["step"], "steps_per_s": train[-1].get("steps_per_s")}
    model = genzoo.load(run)
    result["anomaly"] = {}
    if Capability.ANOMALY_SCORE in model.capabilities:
        for ood in ["noise", *oods]:
            scored = genzoo.score(model, data, split="test", ood=ood)
            result["anomaly"][ood] = {"auroc": scored.auroc, "score": scored.score_name, "notes": list(scored.notes)}
    return result


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(results: list[dict[str, Any]], oods: list[str]) -> str:
    head = ["model", "steps (budget)", "best @ step", "bits/dim ↓ (kind)", "FD ↓", "samples/s", "train steps/s",
            *[f"AUROC vs {o}" for o in ["noise", *oods]]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = r["rows"]["model"]
        ll, cost = row.get("likelihood"), row["cost"]
        bpd = f"{ll['bits_per_dim']:.3f} ({ll['kind']})" if ll else "–"
        aurocs = [_cell(r["anomaly"].get(o, {}).get("auroc"), ".3f") for o in ["noise", *oods]]
        cells = [f"`{r['model']}`", f"{r['training']['steps']} ({r['training']['budget']})",
                 str(r["checkpoint"].get("step")), bpd, _cell(row.get("fd"), ".3f"),
                 _cell(cost["samples_per_s"], ",.0f"), _cell(r["training"]["steps_per_s"], ".1f"), *aurocs]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="data spec (e.g. mnist:../shared/data#binarize)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--budget", nargs="*", default=[], metavar="MODEL=T", help="override a model's budget")
    parser.add_argument("--default-budget", default=DEFAULT_BUDGET)
    parser.add_argument("--ood", nargs="*", default=[], help="out-of-distribution data specs besides noise")
    parser.add_argument("--name", default="likelihood_digits", help="result file name in bench/results/")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--n", type=int, help="samples per evaluation (default: as many as held-out examples; pixel "
                                              "by pixel samplers on 28x28 images want fewer)")
    args = parser.parse_args()
    budgets = {**BUDGETS, **dict(item.split("=", 1) for item in args.budget)}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for name in args.models:
            results.append(train_and_measure(name, args.data, budgets.get(name, args.default_budget), folder,
                                             args.ood, args.n))
            print(markdown(results[-1:], args.ood).splitlines()[-1], flush=True)
    print(markdown(results, args.ood))
    protocol = __doc__.split("\n\n")[1] + f" Budget {args.default_budget} unless named; n = {args.n or 'default'}."
    path = write_result(args.name, {"data": args.data, "protocol": protocol, "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
