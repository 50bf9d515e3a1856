"""Does `genzoo tune` beat the default configuration within a stated budget?

Protocol: an Optuna study of ``--trials`` trials (TPE, ``--workers`` processes sharing one SQLite storage; no
pruning by default, see ``--pruner``) searches the model's declared search space, starting from the default
configuration (trial 0); every trial trains ``--steps`` steps with seed 0 and is scored by ``--metric`` on the
**validation** split. The default configuration is trained the same way (same steps, trainer
settings and best-checkpoint rule) with seeds 0 .. ``--seeds``-1, and the best configuration again with seeds
1 .. ``--seeds``-1 (its seed-0 run is the study's trial). Both are then scored on the **test** split, which the study
never saw: FD against the test examples in the dataset's feature space (as many samples as test examples, sample
seed 0). The gain is beyond seed noise when the best configuration's worst seed beats the default's best seed.
Budgets are in steps, so machine load changes the wall-clock time, not the numbers. Writes
bench/results/<name>.json and prints a markdown table.

    python bench/tune.py [--model vae] [--data digits] [--trials 12] [--steps 200] [--workers 2] [--seeds 3]
                         [--metric fd] [--pruner none] [--no-enqueue-defaults] [--out /tmp/tune-bench] [--name tune]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.registry import model_class
from genzoo.runs import RunDir
from genzoo.tuning import split_metric, trial_train_settings, tune


def train_config(model: str, data: str, steps: int, seed: int, params: dict[str, Any], out: Path) -> Path:
    """A run trained exactly as a trial is, with ``params`` as hyperparameters."""
    return genzoo.train(model, data, steps=steps, seed=seed, out=out,
                        overrides={**trial_train_settings(steps), **params})


def steps_per_s(run: Path) -> float | None:
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m.get("split") == "train" and "steps_per_s" in m]
    return rates[-1] if rates else None


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="vae")
    parser.add_argument("--data", default="digits")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--steps", type=int, default=200, help="training steps of every trial and baseline run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds of the default and best configuration")
    parser.add_argument("--metric", default="fd", help="what the study minimises on the validation split")
    parser.add_argument("--pruner", default="none", help="median prunes on the validation loss, which disagrees "
                        "with FD for a VAE (a larger beta: worse ELBO, better samples); none by default")
    parser.add_argument("--no-enqueue-defaults", action="store_true", help="do not start the study from the "
                        "default configuration")
    parser.add_argument("--out", type=Path, default=Path("/tmp/tune-bench"))
    parser.add_argument("--name", default="tune")
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    dataset = load_dataset(args.data)

    defaults = model_class(args.model).Config()
    space = model_class(args.model).tuning_space()
    enqueue = [] if args.no_enqueue_defaults else [{name: getattr(defaults, name) for name in space}]
    start = time.perf_counter()
    study = tune(args.model, args.data, trials=args.trials, steps_per_trial=args.steps, metric=args.metric,
                 out=args.out / "study", workers=args.workers, seed=0, pruner=args.pruner, enqueue=enqueue)
    study_seconds = time.perf_counter() - start
    if study.best_run is None:
        raise SystemExit("no trial completed")
    best_runs = [study.best_run.resolve()] + [
        train_config(args.model, args.data, args.steps, seed, study.best_params, args.out / f"best-s{seed}")
        for seed in range(1, args.seeds)]
    default_runs = [train_config(args.model, args.data, args.steps, seed, {}, args.out / f"default-s{seed}")
                    for seed in range(args.seeds)]
    test_fd = {name: [split_metric(run, dataset, "fd", "test") for run in runs]
               for name, runs in (("default", default_runs), ("best", best_runs))}
    val = {name: [split_metric(run, dataset, args.metric, "val") for run in runs]
           for name, runs in (("default", default_runs), ("best", best_runs))}
    states = [t["state"] for t in study.trials]
    payload = {
        "protocol": {"model": args.model, "data": args.data, "trials": args.trials, "steps_per_trial": args.steps,
                     "workers": args.workers, "seeds": args.seeds, "study_metric": f"{args.metric} (val split)",
                     "reported": "FD on the test split, sample seed 0", "sampler": "TPE", "pruner": args.pruner,
                     "first_trial": enqueue[0] if enqueue else "sampled"},
        "study": {"seconds": study_seconds, "complete": states.count("complete"), "pruned": states.count("pruned"),
                  "failed": states.count("fail"), "best_trial": study.best_trial, "best_val": study.best_value,
                  "best_params": study.best_params, "trials": study.trials},
        "steps_per_s": {"default_seed0": steps_per_s(default_runs[0]), "best_seed0": steps_per_s(best_runs[0])},
        "val": {name: values for name, values in val.items()},
        "test_fd": {name: {"per_seed": values, **summary(values)} for name, values in test_fd.items()},
        "beyond_noise": max(test_fd["best"]) < min(test_fd["default"]),
    }
    path = write_result(args.name, payload)
    d, b = payload["test_fd"]["default"], payload["test_fd"]["best"]
    print(f"| configuration | test FD per seed | mean ± std |\n|---|---|---|\n"
          f"| default | {', '.join(f'{v:.3f}' for v in d['per_seed'])} | {d['mean']:.3f} ± {d['std']:.3f} |\n"
          f"| tuned (trial {study.best_trial}: {study.best_params}) | {', '.join(f'{v:.3f}' for v in b['per_seed'])}"
          f" | {b['mean']:.3f} ± {b['std']:.3f} |")
    print(f"study: {args.trials} trials x {args.steps} steps in {study_seconds:.0f} s ({payload['study']['pruned']} "
          f"pruned); beyond seed noise: {payload['beyond_noise']}; written to {path}")


if __name__ == "__main__":
    main()
