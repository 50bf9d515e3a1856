"""StyleGAN beside the other GANs: FD/KID, precision/recall, samples/s at an equal budget of steps or of time.

Protocol: each model trains on the data with its defaults (plus any --set), seed 0, for the same number of training
steps (--steps) or the same wall-clock budget (--budget; on a shared machine, read it with the steps and steps/s it
bought). Each of --checkpoints is scored by `genzoo eval` (seed 0, n samples against the held-out split, in the
feature space of the evaluation classifier of the data), EMA generator: ``best`` by the validation metric (val_mmd,
an MMD in pixel space, which on MNIST picks early checkpoints) and ``last``; for stylegan, also with each
--truncation psi. Writes bench/results/<name>.json and prints a markdown table.

    python bench/stylegan.py --data digits --steps 1500 --name stylegan_digits_steps
    python bench/stylegan.py --data mnist:../shared/data --budget 10m --name stylegan_mnist_10m
    python bench/stylegan.py --steps 1500 --keep runs/bench-sg --resume --name stylegan_digits_1500steps
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

MODELS = ["stylegan", "dcgan"]
METRICS = ("fd", "kid", "precision", "recall", "coverage")


def train_and_measure(name: str, args: argparse.Namespace, folder: Path) -> list[dict[str, Any]]:
    overrides = dict(parse_override(item.split(":", 1)[1]) for item in args.set if item.split(":", 1)[0] == name)
    if args.resume and (folder / name).exists():  # continue a kept run to --steps (an equal-steps comparison)
        run = genzoo.train(None, None, steps=args.steps, out=folder / name, resume=True, progress=False)
    else:
        run = genzoo.train(name, args.data, steps=args.steps, budget=args.budget, out=folder / name, seed=0,
                           overrides=overrides, progress=False, batch_size=args.batch_size)
    records = RunDir(run).metrics()
    train = [m for m in records if m["split"] == "train"]
    steps = records[-1]["step"]  # the final validation's
    # the trainer's own rate (of its last invocation); a run too short to log one: steps over elapsed time
    speed = train[-1]["steps_per_s"] if train else steps / records[-1]["time"]
    training = {"steps": steps, "steps_per_s": speed, "budget": args.budget, "overrides": overrides,
                "batch_size": args.batch_size}
    options: list[dict[str, Any]] = [{}]
    if name == "stylegan":
        options += [{"truncation": psi} for psi in args.truncation]
    results = []
    for checkpoint in args.checkpoints:
        model = genzoo.load(run, checkpoint=checkpoint)
        for opts in options:
            result = genzoo.evaluate(model, seed=0, n=args.n, report=False, sample_options=opts)
            row = result["rows"]["model"]
            results.append({"model": name, "sample_options": opts, "training": training,
                            "checkpoint": {"checkpoint": checkpoint, **result["checkpoint"]},
                            "samples_per_s": row["cost"]["samples_per_s"], "parameters": result.get("parameters"),
                            **{k: row.get(k) for k in METRICS}, "reference_fd": result["rows"]["reference"]["fd"]})
    return results


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["model", "options", "steps", "train steps/s", "checkpoint @ step", "FD ↓", "KID ↓", "precision", "recall",
            "samples/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        opts = ", ".join(f"{k}={v}" for k, v in r["sample_options"].items()) or "–"
        cells = [f"`{r['model']}`", opts, str(r["training"]["steps"]), f"{r['training']['steps_per_s'] or 0:.2f}",
                 f"{r['checkpoint']['checkpoint']} @ {r['checkpoint'].get('step')}",
                 f"{r['fd']:.3f}", f"{r['kid']:.4f}", f"{r['precision']:.3f}",
                 f"{r['recall']:.3f}", f"{r['samples_per_s']:,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="data spec (e.g. mnist:../shared/data)")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--steps", type=int, help="training steps per model (equal-steps comparison)")
    parser.add_argument("--budget", help="wall-clock budget per model, e.g. 3m (equal-time comparison)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--set", nargs="*", default=[], metavar="MODEL:KEY=VALUE", help="a model's hyperparameter")
    parser.add_argument("--truncation", nargs="*", type=float, default=[0.7], help="stylegan psi values to score too")
    parser.add_argument("--checkpoints", nargs="+", choices=("best", "last"), default=["best", "last"],
                        help="checkpoints of each run to score")
    parser.add_argument("--n", type=int, default=1000, help="samples per evaluation")
    parser.add_argument("--name", default="stylegan_digits", help="result file name in bench/results/")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--resume", action="store_true", help="continue the runs kept in --keep to --steps")
    args = parser.parse_args()
    if args.steps is None and args.budget is None:
        parser.error("give --steps or --budget")
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        for name in args.models:
            rows = train_and_measure(name, args, folder)
            results += rows
            print("\n".join(markdown(rows).splitlines()[2:]), flush=True)
    print(markdown(results))
    protocol = __doc__.split("\n\n")[1] + (f" Steps {args.steps}." if args.steps else "") + (
        f" Budget {args.budget}." if args.budget else "") + f" Batch {args.batch_size}, n = {args.n}."
    path = write_result(args.name, {"data": args.data, "protocol": protocol, "results": results})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
