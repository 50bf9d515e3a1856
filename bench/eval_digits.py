"""Every family on one yardstick: train each model on `digits` for a fixed budget and score it with `genzoo eval`.

Each model trains with its defaults and seed 0 for its budget; the best checkpoint (EMA weights where kept) is
scored by the evaluation protocol (docs/evaluation.md) with seed 0, next to the real-data reference row. Writes
bench/results/eval_digits.json (the full evaluation results) and prints the side-by-side table.

    python bench/eval_digits.py [--models vae dcgan ddpm gpt] [--budget ddpm=5m ...] [--keep runs/bench-eval]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.eval import table
from genzoo.runs import RunDir

#: budgets that give each family recognisable digits on 2 CPU cores (README, "Models")
BUDGETS = {"vae": "60s", "dcgan": "60s", "wgan-gp": "3m", "ddpm": "5m", "gpt": "2m", "lstm": "2m"}


def train_and_score(name: str, budget: str, folder: Path) -> dict:
    run = genzoo.train(name, "digits", budget=budget, out=folder / name, seed=0, progress=False)
    result = genzoo.evaluate(run, seed=0, report=False)
    train = [m for m in RunDir(run).metrics() if m["split"] == "train"]
    result["training"] = {"budget": budget, "steps": train[-1]["step"], "steps_per_s": train[-1]["steps_per_s"]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["vae", "dcgan", "ddpm", "gpt"])
    parser.add_argument("--budget", nargs="*", default=[], metavar="MODEL=T", help="override a model's budget")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    budgets = {**BUDGETS, **dict(item.split("=", 1) for item in args.budget)}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        results = []
        for name in args.models:
            results.append(train_and_score(name, budgets[name], folder))
            print(f"{name}: scored in {results[-1]['seconds']} s", flush=True)
    Console(width=160).print(table(results))
    path = write_result("eval_digits", {"data": "digits", "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
