"""Data-parallel training on CPU: throughput of 1 vs N processes at the same global batch, and matching losses.

Protocol: for each model, on the data, seed 0, the same global batch and number of steps:
  * ``1p``      one process with all ``--threads`` threads (the plain run);
  * ``1p-acc``  one process with ``grad_accum=N`` -- the exact reference of the N-process run;
  * ``Np``      N processes (``genzoo.train(..., nproc=N)``: gloo), ``--threads / N`` threads each.
Throughput is the training loop's steps/s from ``metrics.jsonl`` (from step 1 to the last: process start-up, the
first step's warm-up, validation and checkpoints excluded) times the global batch; ``wall_s`` is the whole call,
start-up included. The loss match is the largest relative difference between the N-process run's logged training
losses and ``1p-acc``'s, step by step. The machine's load average is recorded with the result (other jobs slow every
number down).

    python bench/distributed.py [--models vae ddpm] [--data digits] [--steps 100] [--batch-size 64]
                                [--nproc 2] [--threads 2] [--name distributed] [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch

import genzoo
from common import write_result
from genzoo.runs import RunDir

QUIET = {"progress": False, "log_every": 1, "eval_every": 1_000_000, "sample_every": 1_000_000,
         "checkpoint_every": 1_000_000, "val_examples": 256}


def train_once(model: str, data: str, out: Path, steps: int, batch: int, nproc: int, grad_accum: int,
               threads: int) -> dict[str, Any]:
    torch.set_num_threads(threads)  # nproc > 1: shared out among the processes
    start = time.perf_counter()
    genzoo.train(model, data, steps=steps, out=out, seed=0, nproc=nproc, batch_size=batch, grad_accum=grad_accum,
                 **QUIET)
    wall = time.perf_counter() - start
    records = RunDir(out).metrics()
    train = [r for r in records if r["split"] == "train"]
    val = [r for r in records if r["split"] == "val"]
    rate = (train[-1]["step"] - train[0]["step"]) / (train[-1]["time"] - train[0]["time"])  # after step 1's warm-up
    return {"nproc": nproc, "grad_accum": grad_accum, "threads_per_process": max(1, threads // nproc),
            "steps": train[-1]["step"], "steps_per_s": rate, "examples_per_s": rate * batch, "wall_s": wall,
            "losses": [{k: v for k, v in r.items() if k not in ("time", "split", "steps_per_s", "lr_factor")}
                       for r in train],
            "final_val": {k: v for k, v in val[-1].items() if k not in ("step", "split", "time", "best")}}


def max_relative_difference(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        for key in x.keys() - {"step"}:
            worst = max(worst, abs(x[key] - y[key]) / max(abs(y[key]), 1e-12))
    return worst


def measure(model: str, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    n = args.nproc
    runs = {"1p": (1, 1), "1p-acc": (1, n), f"{n}p": (n, 1)}
    results = {}
    for label, (nproc, accum) in runs.items():
        print(f"{model}: {label} ...", flush=True)
        results[label] = train_once(model, args.data, folder / f"{model}-{label}", args.steps, args.batch_size,
                                    nproc, accum, args.threads)
    parallel, reference = results[f"{n}p"], results["1p-acc"]
    return {"model": model, "runs": results,
            "speedup_vs_1p": parallel["examples_per_s"] / results["1p"]["examples_per_s"],
            "loss_max_rel_diff_vs_1p_acc": max_relative_difference(parallel["losses"], reference["losses"])}


def markdown(rows: list[dict[str, Any]], n: int) -> str:
    lines = ["| model | run | processes x threads | steps/s | examples/s | wall s | final val |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        for label, r in row["runs"].items():
            val = ", ".join(f"{k}={v:.4g}" for k, v in r["final_val"].items())
            lines.append(f"| {row['model']} | {label} | {r['nproc']} x {r['threads_per_process']} | "
                         f"{r['steps_per_s']:.2f} | {r['examples_per_s']:.0f} | {r['wall_s']:.0f} | {val} |")
    lines.append("")
    for row in rows:
        lines.append(f"{row['model']}: {n} processes / 1 process throughput = {row['speedup_vs_1p']:.2f}x; "
                     f"largest relative loss difference vs 1p-acc = {row['loss_max_rel_diff_vs_1p_acc']:.2e}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["vae", "ddpm"])
    parser.add_argument("--data", default="digits")
    parser.add_argument("--steps", type=int, default=100, help="training steps of every run")
    parser.add_argument("--batch-size", type=int, default=64, help="global batch (split over the processes)")
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS") or 2),
                        help="threads in all: the 1-process runs use them all, each of N processes 1/N")
    parser.add_argument("--name", default="distributed", help="writes bench/results/NAME.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        rows = [measure(model, args, folder) for model in args.models]
    settings = {k: v for k, v in vars(args).items() if k != "keep"}
    path = write_result(args.name, {"protocol": __doc__.split("\n\n")[1], "settings": settings, "results": rows})
    print(markdown(rows, args.nproc))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
