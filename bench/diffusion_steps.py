"""Diffusion benchmark: sample quality and speed against the number of sampling steps, for each sampler.

For a trained ``ddpm`` run (or one trained here for a budget) draws ``--n`` samples with every sampler (ddpm =
ancestral, ddim eta=0, dpm = DPM-Solver++ 2M) at 1000, 100, 50, 20 and 10 steps and reports the Fréchet distance
to the real training split in the evaluation's feature space (``genzoo.eval.features``: a small classifier fitted
to the labelled data; not Inception, so numbers compare only within one dataset) and samples/s. Writes
``bench/results/diffusion_steps[_<data>].json``.

    python bench/diffusion_steps.py --run RUN [--n 500]
    python bench/diffusion_steps.py --data mnist:../shared/data --budget 20m   # trains first
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.contract import parse_override
from genzoo.eval.features import feature_space
from genzoo.metrics.frechet import frechet_distance
from genzoo.models.diffusion.samplers import ALIASES, SAMPLERS, sampler_class

STEPS = (1000, 100, 50, 20, 10)
#: row labels of the published table (``ddpm`` is the alias of ``ancestral``)
DEFAULT_SAMPLERS = ("ddpm", "ddim", "dpm")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="trained ddpm run directory (else one is trained on --data)")
    parser.add_argument("--data", default="digits", help="data spec used to train, and as the FD reference")
    parser.add_argument("--budget", default="5m", help="training budget when no --run is given")
    parser.add_argument("--n", type=int, default=500, help="samples per configuration")
    parser.add_argument("--batch", type=int, default=250, help="samples per sampling call")
    parser.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    parser.add_argument("--samplers", nargs="+", default=list(DEFAULT_SAMPLERS),
                        help=f"sampler names: {', '.join([*SAMPLERS, *ALIASES])}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="hyperparameter or trainer setting for training (as genzoo train --set)")
    args = parser.parse_args()
    for sampler in args.samplers:  # an unknown name fails here, not after training
        sampler_class(sampler)

    run = args.run
    if run is None:
        overrides = dict(parse_override(item) for item in args.overrides)
        out = Path("runs") / f"bench-ddpm-{args.data.replace(':', '-').replace('/', '_')}"
        run = genzoo.train("ddpm", args.data, budget=args.budget, out=out, overrides=overrides)
    config = genzoo.read_config(run)
    spec = config["data"]["spec"]
    data = genzoo.load_dataset(spec, image_size=config["data"].get("image_size"))
    model = genzoo.load(run)
    space = feature_space(data)
    real = space.features(data.split("train").x)
    rows = []
    for sampler in args.samplers:
        for steps in args.steps:
            start = time.perf_counter()
            samples = torch.cat([model.sample(min(args.batch, args.n - i), seed=i, sampler=sampler, steps=steps)
                                 for i in range(0, args.n, args.batch)])
            seconds = time.perf_counter() - start
            row = {"sampler": sampler, "steps": steps, "nfe": model.cost(sampler=sampler, steps=steps).nfe_per_sample,
                   "fd": frechet_distance(real, space.features(samples)), "samples_per_s": args.n / seconds}
            rows.append(row)
            print(f"{sampler:>5} {steps:>5} steps  FD {row['fd']:8.2f}  {row['samples_per_s']:8.1f} samples/s",
                  flush=True)
    # reference: FD of held-out real images to the training split (what "as good as the data" scores)
    held_out = torch.cat([data.split("val").x, data.split("test").x])[: args.n]
    name = "diffusion_steps" if spec == "digits" else f"diffusion_steps_{spec.split(':')[0]}"
    path = write_result(name, {
        "run": str(run), "data": spec, "train_step": model.provenance["step"], "weights": model.provenance["weights"],
        "hparams": config["hparams"], "n_samples": args.n, "reference": "train split",
        "feature_space": space.describe(),
        "fd_held_out_real": frechet_distance(real, space.features(held_out)), "n_held_out_real": len(held_out),
        "rows": rows})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
