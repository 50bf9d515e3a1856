"""Foundation benchmark: each image model on `digits` for a fixed wall-clock budget.

Writes bench/results/foundation_<model>.json with steps/s, samples/s, final losses and validation metric, parameter
count and machine info. For the VAE it also times a bare PyTorch loop over the same network and batches (no
trainer, no logging, no checkpoints) in the same run, so the trainer's overhead is reported as a ratio.

    python bench/foundation.py --budget 60s [--models vae dcgan wgan-gp]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.contract import Optimizers
from genzoo.registry import build_model
from genzoo.runs import RunDir
from genzoo.training import parse_budget


def bare_loop_steps_per_s(model_name: str, seconds: float, batch_size: int) -> float:
    """Steps/s of a plain loop: same model, same batches, same optimizer, nothing else."""
    data = genzoo.load_dataset("digits")
    torch.manual_seed(0)
    model = build_model(model_name, data.info)
    optim = Optimizers(model.configure_optimizers())
    start, step = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        model.training_step(data.batch_at(step, batch_size, 0), step, optim)
        step += 1
    return step / (time.perf_counter() - start)


def samples_per_s(model: genzoo.GenerativeModel, n: int = 256, repeats: int = 3) -> float:
    model.sample(8, seed=0)  # warm-up
    start = time.perf_counter()
    for i in range(repeats):
        model.sample(n, seed=i)
    return n * repeats / (time.perf_counter() - start)


def _values(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("step", "split", "time")}


def bench_model(name: str, budget: str, out_root: Path) -> dict:
    run = genzoo.train(name, "digits", budget=budget, out=out_root / name, seed=0, progress=False)
    metrics = RunDir(run).metrics()
    train = [m for m in metrics if m["split"] == "train"]
    val = [m for m in metrics if m["split"] == "val"]
    model = genzoo.load(run)
    result = {
        "model": name, "data": "digits", "budget_s": parse_budget(budget), "steps": train[-1]["step"],
        "steps_per_s": train[-1]["steps_per_s"], "samples_per_s": samples_per_s(model),
        "parameters": model.num_parameters(),
        "final_train": _values(train[-1]), "final_val": _values(val[-1]),
        "best_checkpoint": model.provenance, "validation_metric": model.validation_metric,
        "best_val": _values(next(m for m in val if m["step"] == model.provenance["step"])),
    }
    if name == "vae":
        bare = bare_loop_steps_per_s(name, 10.0, genzoo.model_class(name).train_defaults.get("batch_size", 64))
        result["bare_loop_steps_per_s"] = bare
        result["trainer_overhead_ratio"] = result["steps_per_s"] / bare
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="60s")
    parser.add_argument("--models", nargs="+", default=["vae", "dcgan", "wgan-gp"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            result = bench_model(name, args.budget, Path(tmp))
            path = write_result(f"foundation_{name}", result)
            print(f"{name}: {result['steps']} steps, {result['steps_per_s']:.1f} steps/s, "
                  f"{result['samples_per_s']:.0f} samples/s, {result['validation_metric']}="
                  f"{result['final_val'].get(result['validation_metric'])} (best "
                  f"{result['best_val'].get(result['validation_metric'])}) -> {path}")


if __name__ == "__main__":
    main()
