"""VQ-VAE with its learned prior beside the plain VAE: FD of samples, reconstruction, code usage, speed.

Protocol: each model trains on the data with its defaults (overrides with --set), seed 0, for a budget in training
STEPS (so a loaded machine gives the same numbers, later; vqvae splits its steps between its two stages, half each);
its best checkpoint by its validation metric (for vqvae: the prior stage's, on the autoencoder stage 1 ended with)
is scored by `genzoo eval` (seed 0: FD/KID and precision/recall of samples in the feature space of
docs/evaluation.md, held-out bits/dim, samples/s, and the model's task metrics: vqvae's reconstruction error, code
perplexity, codes used and prior NLL per code). Writes bench/results/<name>.json and prints a markdown table.

    python bench/vqvae.py [--data digits] [--steps 2000] [--models vqvae vae] [--set vqvae:num_codes=32 ...]
                          [--name vqvae_digits] [--keep /tmp/vqvae-runs/bench]

A smoke run takes seconds: python bench/vqvae.py --steps 20 --n 100 --name vqvae_smoke
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
from genzoo.contract import parse_override
from genzoo.runs import RunDir


def train_and_measure(name: str, data: str, steps: int, overrides: dict[str, Any], folder: Path,
                      n: int | None) -> dict[str, Any]:
    run = genzoo.train(name, data, steps=steps, out=folder / name, seed=0, overrides=overrides, progress=False)
    result = genzoo.evaluate(run, seed=0, n=n, report=False)
    last = RunDir(run).metrics()[-1]  # the final validation: its clock includes the periodic validations
    result["training"] = {"steps": last["step"], "seconds": last["time"], "steps_per_s": last["step"] / last["time"],
                          "overrides": overrides}
    return result


def _cell(value: Any, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["model", "steps", "best @ step", "FD ↓", "KID ↓", "precision", "recall", "bits/dim (kind)",
            "rec. MSE", "code perplexity (used)", "samples/s", "train steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        row = r["rows"]["model"]
        ll, task = row.get("likelihood"), row.get("task", {})
        usage = (f"{task['code_perplexity']:.1f} ({task['codes_used']:.0f})" if "code_perplexity" in task else "–")
        cells = [f"`{r['model']}`", str(r["training"]["steps"]), str(r["checkpoint"].get("step")),
                 _cell(row.get("fd"), ".3f"), _cell(row.get("kid"), ".4f"), _cell(row.get("precision"), ".3f"),
                 _cell(row.get("recall"), ".3f"), f"{ll['bits_per_dim']:.3f} ({ll['kind']})" if ll else "–",
                 _cell(task.get("reconstruction_mse_error"), ".4f"), usage,
                 _cell(row["cost"]["samples_per_s"], ",.0f"), _cell(r["training"]["steps_per_s"], ".1f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="data spec (e.g. mnist:../shared/data)")
    parser.add_argument("--models", nargs="+", default=["vqvae", "vae"])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of every model")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="MODEL:KEY=VALUE",
                        help="a hyperparameter of one model, e.g. vqvae:num_codes=32 (repeatable)")
    parser.add_argument("--n", type=int, help="samples per evaluation (default: the eval protocol's)")
    parser.add_argument("--name", default="vqvae_digits", help="result file name in bench/results/")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    overrides: dict[str, dict[str, Any]] = {name: {} for name in args.models}
    for item in args.sets:
        model, _, assignment = item.partition(":")
        key, value = parse_override(assignment)
        overrides.setdefault(model, {})[key] = value
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for name in args.models:
            results.append(train_and_measure(name, args.data, args.steps, overrides[name], folder, args.n))
            print(markdown(results[-1:]).splitlines()[-1], flush=True)
    print(markdown(results))
    protocol = __doc__.split("\n\n")[1] + f" Steps {args.steps}; n = {args.n or 'default'}."
    path = write_result(args.name, {"data": args.data, "protocol": protocol, "command": " ".join(sys.argv),
                                    "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
