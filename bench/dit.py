"""DiT against U-Net as the ddpm denoiser at an equal budget in training steps, and the diffusion likelihoods.

Trains (or takes) two ``ddpm`` runs on the same data, seed and number of steps, one with the default U-Net and
one with ``--set denoiser=dit``, and reports for each: parameters, training steps/s (from the run's own log: the
machine's load changes it, the steps do not), the Fréchet distance of ``--n`` samples at 20 network evaluations
(DPM-Solver++ 2M) to the training split in the evaluation's feature space, and samples/s. Writes
``bench/results/dit_<data>.json``. With ``--likelihood`` it also computes, for the U-Net run, the variational bound
over all T steps and the probability-flow ODE estimate on the test split (bits/dim, Monte Carlo standard error,
seconds) and writes ``bench/results/diffusion_likelihood.json``.

    python bench/dit.py --steps 1100 --likelihood                     # trains both on digits, then measures
    python bench/dit.py --unet-run RUN_A --dit-run RUN_B --likelihood  # measures existing runs
    python bench/dit.py --steps 20 --n 50 --speed-steps 2 --out /tmp/dit-smoke --result dit_smoke   # seconds
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import steps_per_s_in_turns, write_result
from genzoo.contract import Optimizers, parse_override
from genzoo.eval.features import feature_space
from genzoo.metrics.frechet import frechet_distance
from genzoo.metrics.likelihood import likelihood_summary


def logged_steps_per_s(run: Path) -> float | None:
    """Mean of the training steps/s the run logged (depends on the load while it trained; None: none logged)."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rates = [r["steps_per_s"] for r in records if r.get("split") == "train" and "steps_per_s" in r]
    return sum(rates) / len(rates) if rates else None


def interleaved_steps_per_s(runs: dict[str, Path], steps: int, rounds: int) -> dict[str, float]:
    """Training steps/s of each run's model (fresh weights, its hyperparameters, batch 128) measured in turns in
    this process, so a changing load slows every denoiser alike."""
    step_of, data = {}, None
    for name, run in runs.items():
        config = genzoo.read_config(run)
        data = data or genzoo.load_dataset(config["data"]["spec"], image_size=config["data"].get("image_size"))
        step_of[name] = training_step_of(genzoo.create("ddpm", data.info, **config["hparams"]), data)
    return steps_per_s_in_turns(step_of, steps, rounds)


def training_step_of(model: genzoo.GenerativeModel, data: genzoo.Dataset) -> Callable[[int], None]:
    """step(i): one training step of ``model`` on ``data``'s batch i (batch 128)."""
    optim = Optimizers(model.configure_optimizers())
    return lambda i: model.training_step(data.batch_at(i, 128, seed=0), i, optim)


def measure_samples(run: Path, n: int, batch: int, steps_per_s: float) -> dict[str, Any]:
    config = genzoo.read_config(run)
    data = genzoo.load_dataset(config["data"]["spec"], image_size=config["data"].get("image_size"))
    model = genzoo.load(run)
    space = feature_space(data)
    start = time.perf_counter()
    samples = torch.cat([model.sample(min(batch, n - i), seed=i, sampler="dpm", steps=20) for i in range(0, n, batch)])
    seconds = time.perf_counter() - start
    return {"run": str(run), "denoiser": model.config.denoiser, "parameters": model.num_parameters(),
            "train_step": model.provenance["step"], "weights": model.provenance["weights"],
            "train_steps_per_s": steps_per_s, "logged_train_steps_per_s": logged_steps_per_s(run),
            "nfe": model.cost(sampler="dpm", steps=20).nfe_per_sample,
            "fd_20_nfe": frechet_distance(space.features(data.split("train").x), space.features(samples)),
            "samples_per_s": n / seconds, "hparams": config["hparams"]}


def measure_likelihoods(run: Path, n: int | None, batch: int) -> dict[str, Any]:
    config = genzoo.read_config(run)
    data = genzoo.load_dataset(config["data"]["spec"], image_size=config["data"].get("image_size"))
    model = genzoo.load(run)
    test = data.split("test").x[:n]
    rows = {}
    for method in ("bound", "ode"):
        start = time.perf_counter()
        with torch.no_grad():
            parts = [model.likelihood_estimate(test[i : i + batch], None, method)[0]
                     for i in range(0, len(test), batch)]
        seconds = time.perf_counter() - start
        values, variance = torch.cat([p.values for p in parts]), torch.cat([p.variance for p in parts])
        ll = model.log_likelihood(test[:2], method=method)  # kind and method text
        summary = likelihood_summary(type(ll)(values, ll.kind, ll.discrete, ll.method), model.data.dims)
        stderr = float(variance.sum().sqrt() / len(values))
        summary |= {"stderr_nats": stderr, "stderr_bits_per_dim": stderr / (model.data.dims * math.log(2)),
                    "seconds": seconds, "examples_per_s": len(values) / seconds}
        rows[method] = summary
        print(f"{method:>5}: {summary['bits_per_dim']:.3f} bits/dim ({summary['kind']}) "
              f"+- {summary['stderr_bits_per_dim']:.3f}, {seconds:.0f} s", flush=True)
    return {"run": str(run), "data": config["data"]["spec"], "train_step": model.provenance["step"],
            "weights": model.provenance["weights"], "n_test": len(test),
            "settings": {k: getattr(model.config, k) for k in ("bound_steps", "ode_steps", "ode_probes")},
            "results": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="data spec (both runs, and the FD reference)")
    parser.add_argument("--steps", type=int, default=1100, help="training steps of each run (when training here)")
    parser.add_argument("--unet-run", type=Path, help="an existing U-Net ddpm run (else trained here)")
    parser.add_argument("--dit-run", type=Path, help="an existing DiT ddpm run (else trained here)")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="where runs trained here go")
    parser.add_argument("--seed", type=int, default=0, help="training seed of both runs")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="hyperparameter for both runs (as genzoo train --set)")
    parser.add_argument("--n", type=int, default=500, help="samples per run for the FD")
    parser.add_argument("--batch", type=int, default=250, help="samples (or likelihood examples) per call")
    parser.add_argument("--result", help="result file name under bench/results (default: dit_<data>)")
    parser.add_argument("--speed-steps", type=int, default=10, help="training steps per turn for the steps/s")
    parser.add_argument("--likelihood", action="store_true", help="also both likelihoods of the U-Net run")
    parser.add_argument("--likelihood-n", type=int, default=None, help="test examples for the likelihoods (all)")
    args = parser.parse_args()

    overrides = dict(parse_override(item) for item in args.overrides)
    runs = {}
    for denoiser, given in (("unet", args.unet_run), ("dit", args.dit_run)):
        if given is None:
            out = args.out / f"bench-ddpm-{denoiser}-{args.data.replace(':', '-').replace('/', '_')}"
            given = genzoo.train("ddpm", args.data, steps=args.steps, out=out, seed=args.seed,
                                 overrides=overrides | {"denoiser": denoiser})
        runs[denoiser] = given
    rates = interleaved_steps_per_s(runs, args.speed_steps, rounds=2)
    rows = []
    for denoiser, run in runs.items():
        row = measure_samples(run, args.n, args.batch, rates[denoiser])
        rows.append(row)
        print(f"{denoiser:>5}: {row['parameters']:,} parameters, {row['train_steps_per_s']:.2f} steps/s, "
              f"FD@20 {row['fd_20_nfe']:.2f}, {row['samples_per_s']:.1f} samples/s", flush=True)
    name = args.result or ("dit_digits" if args.data == "digits" else f"dit_{args.data.split(':')[0]}")
    protocol = (f"equal training steps, same seed; steps/s measured in turns in one process ({args.speed_steps} "
                "steps x 2 rounds each after a warm-up step, batch 128)")
    path = write_result(name, {"data": args.data, "n_samples": args.n, "sampler": "dpm, 20 steps",
                               "reference": "train split", "protocol": protocol, "rows": rows})
    print(f"-> {path}")
    if args.likelihood:
        path = write_result("diffusion_likelihood", measure_likelihoods(runs["unet"], args.likelihood_n, args.batch))
        print(f"-> {path}")


if __name__ == "__main__":
    main()
