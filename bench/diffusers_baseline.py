"""genzoo's default ``ddpm`` against a plain diffusers baseline at an equal wall-clock budget, in one process.

Baseline (diffusers is a bench-only dependency: ``pip install diffusers``): ``UNet2DModel`` with block channels
(32, 64), one layer per block, attention at the lower level (``DownBlock2D``/``AttnDownBlock2D`` down,
``AttnUpBlock2D``/``UpBlock2D`` up; 0.70 M parameters on one channel), ``DDPMScheduler`` with 1000 linear betas
(1e-4 to 0.02) and the epsilon target, AdamW at 1e-3, batch 128, and an EMA of decay 0.999 (diffusers'
``EMAModel``) whose weights are sampled. It samples with diffusers' own schedulers: DDIM (eta 0), DPM-Solver++ 2M
(``DPMSolverMultistepScheduler``) and the ancestral DDPM sampler over all 1000 steps.

genzoo: ``genzoo.train("ddpm", DATA, budget=BUDGET)`` with every default (the best checkpoint's EMA weights are
sampled), with its samplers dpm (DPM-Solver++ 2M), ddim and ancestral.

Protocol:
* training speed: both training steps measured in turns in this process (``--speed-steps`` steps per turn, three
  rounds, batch 128), so load on the machine slows both alike; the ratio is what the target is about. Each full
  training run also reports its own steps and seconds;
* quality: each trains for ``--budget`` of wall-clock (genzoo's trainer counts its validation and checkpoints in
  it), then draws ``--n`` samples per (sampler, network evaluations) and is scored by ``genzoo eval``'s set
  comparison (``compare_sets``: Fréchet distance and the rest in the data's classifier feature space, against the
  same training images for both).

    python bench/diffusers_baseline.py --data digits --budget 3m
    python bench/diffusers_baseline.py --data mnist:../shared/data --budget 10m --nfe 5 10 20 50

Writes ``bench/results/diffusers_baseline_<data>.json``.
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import steps_per_s_in_turns, write_result
from genzoo.contract import Optimizers, parse_override
from genzoo.eval.protocol import compare_sets
from genzoo.eval.runner import REAL_SEED
from genzoo.registry import model_class
from genzoo.runs.rundir import RunDir
from genzoo.training.ema import EMA
from genzoo.training.trainer import parse_budget

BATCH = 128
NFE = (5, 10, 20, 50, 1000)
BASELINE_CONFIG = {"block_out_channels": [32, 64], "layers_per_block": 1,
                   "blocks": "DownBlock2D, AttnDownBlock2D / AttnUpBlock2D, UpBlock2D",
                   "scheduler": "DDPMScheduler, 1000 linear betas, epsilon", "optimizer": "AdamW 1e-3",
                   "batch": BATCH, "ema": 0.999}


class Baseline:
    """The diffusers baseline: model, noise scheduler, AdamW and EMA, trained a step at a time."""

    def __init__(self, shape: tuple[int, ...], seed: int) -> None:
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.training_utils import EMAModel

        torch.manual_seed(seed)
        channels, height, _ = shape
        self.unet = UNet2DModel(sample_size=height, in_channels=channels, out_channels=channels, layers_per_block=1,
                                block_out_channels=(32, 64), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                                up_block_types=("AttnUpBlock2D", "UpBlock2D"))
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=1e-3)
        self.ema = EMAModel(self.unet.parameters(), decay=0.999)
        self.steps = 0

    def train_step(self, x: Tensor) -> float:
        """One step of the epsilon loss on a batch of images in [0, 1]."""
        self.unet.train()
        x0 = x * 2 - 1
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x0),))
        loss = F.mse_loss(self.unet(self.scheduler.add_noise(x0, noise, t), t).sample, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.ema.step(self.unet.parameters())
        self.steps += 1
        return loss.item()

    def step_on(self, data: genzoo.Dataset) -> Callable[[int], None]:
        """Training steps on ``data``'s batches (for the speed turns)."""
        return lambda step: self.train_step(data.batch_at(step, BATCH, seed=0).x)

    def ema_unet(self) -> torch.nn.Module:
        unet = copy.deepcopy(self.unet).eval()
        self.ema.copy_to(unet.parameters())
        return unet

    @torch.no_grad()
    def sample(self, unet: torch.nn.Module, n: int, sampler: str, steps: int, seed: int) -> Tensor:
        """``n`` images in [0, 1] with diffusers' scheduler ``sampler`` on ``steps`` network evaluations."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        kinds = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ancestral": DDPMScheduler}
        scheduler = kinds[sampler].from_config(self.scheduler.config)
        scheduler.set_timesteps(steps)
        generator = torch.Generator().manual_seed(seed)
        size = unet.config.sample_size
        x = torch.randn(n, unet.config.in_channels, size, size, generator=generator)
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x, generator=generator).prev_sample
        return ((x + 1) / 2).clamp(0, 1)


def genzoo_step(model: genzoo.GenerativeModel, data: genzoo.Dataset) -> Callable[[int], None]:
    """One training step of a fresh genzoo model with its trainer's optimizer and EMA (for the speed turns)."""
    optim = Optimizers(model.configure_optimizers())
    ema = EMA(model, model.train_defaults["ema_decay"], model.ema_targets())
    model.train()

    def step(i: int) -> None:
        model.training_step(data.batch_at(i, BATCH, seed=0), i, optim)
        ema.update(i)

    return step


def train_baseline(data: genzoo.Dataset, seconds: float, seed: int) -> tuple[Baseline, float]:
    baseline = Baseline(data.info.shape, seed)
    train = data.split("train").x
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        baseline.train_step(train[torch.randint(len(train), (BATCH,), generator=generator)])
        if baseline.steps % 200 == 0:
            print(f"  baseline step {baseline.steps}, {time.perf_counter() - start:.0f} s", flush=True)
    return baseline, time.perf_counter() - start


Draw = Callable[[int, str, int, int], Tensor]


def genzoo_run(data: genzoo.Dataset, budget: float, args: argparse.Namespace,
               overrides: dict[str, Any]) -> tuple[dict[str, Any], Draw]:
    """genzoo's ``ddpm`` trained for ``budget`` seconds: its record, and (n, sampler, nfe, seed) -> samples."""
    start = time.perf_counter()
    out = args.out or Path(tempfile.mkdtemp(prefix="genzoo-bench-")) / "ddpm"
    run = genzoo.train("ddpm", data, budget=budget, out=out, seed=args.seed, overrides=overrides)
    model = genzoo.load(run)
    record = {"run": str(run), "parameters": model.num_parameters(), "steps": RunDir(run).trainer_state("last")["step"],
              "checkpoint": model.provenance, "seconds": time.perf_counter() - start,
              "hparams": genzoo.read_config(run)["hparams"]}
    return record, lambda n, s, k, seed: model.sample(n, seed=seed, sampler=s, steps=k).cpu()


def baseline_run(data: genzoo.Dataset, budget: float, args: argparse.Namespace,
                 overrides: dict[str, Any]) -> tuple[dict[str, Any], Draw]:
    """The diffusers baseline trained for ``budget`` seconds (``overrides`` are genzoo's, not its own)."""
    baseline, seconds = train_baseline(data, budget, args.seed)
    ema = baseline.ema_unet()
    record = {"parameters": sum(p.numel() for p in baseline.unet.parameters()), "steps": baseline.steps,
              "seconds": seconds, "weights": "ema, last step", "config": BASELINE_CONFIG}
    return record, lambda n, s, k, seed: baseline.sample(ema, n, s, k, seed)


def grid(nfe: list[int]) -> list[tuple[str, int]]:
    """(sampler, network evaluations): ddim and dpm below 1000, the ancestral sampler over all 1000 steps."""
    return [("ancestral", k) if k == 1000 else (s, k) for k in nfe for s in (("ancestral",) if k == 1000
                                                                           else ("ddim", "dpm"))]


def score(real: Tensor, fake: Tensor, data: genzoo.Dataset) -> dict[str, float]:
    row = compare_sets(real, fake, features=data)
    return {k: row[k] for k in ("fd", "kid", "precision", "recall") if k in row}


def sample_rows(draw: Draw, n: int, batch: int, nfe: list[int], real: Tensor,
                data: genzoo.Dataset, name: str) -> list[dict[str, Any]]:
    rows = []
    for sampler, k in grid(nfe):
        start = time.perf_counter()
        samples = torch.cat([draw(min(batch, n - i), sampler, k, i) for i in range(0, n, batch)])
        seconds = time.perf_counter() - start
        row = {"sampler": sampler, "nfe": k, **score(real, samples, data), "samples_per_s": n / seconds}
        print(f"{name:>9} {sampler:>9} {k:>5} NFE  FD {row['fd']:7.3f}  {row['samples_per_s']:8.1f} samples/s",
              flush=True)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="digits", help="data spec (both models, and the FD reference)")
    parser.add_argument("--budget", default="3m", help="wall-clock training budget of each")
    parser.add_argument("--n", type=int, default=1000, help="samples per (sampler, NFE)")
    parser.add_argument("--batch", type=int, default=500, help="samples per sampling call")
    parser.add_argument("--nfe", type=int, nargs="+", default=list(NFE), help="network evaluations per sample")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed-steps", type=int, default=10, help="training steps per turn for the steps/s")
    parser.add_argument("--out", type=Path, help="a new folder for genzoo's run (default: a temporary one)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a hyperparameter or trainer setting of genzoo's run (as genzoo train --set)")
    parser.add_argument("--models", nargs="+", choices=("genzoo", "baseline"), default=["genzoo", "baseline"],
                        help="which to train and score (both for the published comparison)")
    parser.add_argument("--result", help="result name under bench/results (default: diffusers_baseline_<data>)")
    args = parser.parse_args()
    try:
        import diffusers  # noqa: F401  (a bench-only dependency)
    except ImportError:
        sys.exit("this benchmark needs diffusers: pip install diffusers")
    budget = parse_budget(args.budget)
    data = genzoo.load_dataset(args.data)
    tag = args.data.split(":")[0]
    overrides = dict(parse_override(item) for item in args.overrides)
    hparams = {k: v for k, v in overrides.items() if k in model_class("ddpm").Config.model_fields}

    speed = steps_per_s_in_turns({"genzoo": genzoo_step(genzoo.create("ddpm", data, **hparams), data),
                   "baseline": Baseline(data.info.shape, args.seed).step_on(data)}, args.speed_steps, 3)
    print(f"training steps/s in turns: genzoo {speed['genzoo']:.2f}, baseline {speed['baseline']:.2f} "
          f"({speed['genzoo'] / speed['baseline']:.2f}x)", flush=True)
    train = data.split("train").x
    real = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(REAL_SEED))[:5000]]
    held = torch.cat([data.split("val").x, data.split("test").x])[: args.n]
    result: dict[str, Any] = {
        "data": args.data, "budget_seconds": budget, "n_samples": args.n,
        "speed_in_turns": {**speed, "ratio": speed["genzoo"] / speed["baseline"],
                           "protocol": f"{args.speed_steps} steps x 3 rounds each, batch {BATCH}"},
        "reference_real_held_out": score(real, held, data), "rows": {}}
    for name in args.models:
        trainer = genzoo_run if name == "genzoo" else baseline_run
        result[name], draw = trainer(data, budget, args, overrides)
        print(f"{name}: {result[name]['steps']} steps in {result[name]['seconds']:.0f} s", flush=True)
        result["rows"][name] = sample_rows(draw, args.n, args.batch, args.nfe, real, data, name)
    path = write_result(args.result or f"diffusers_baseline_{tag}", result)
    print(f"-> {path}")


if __name__ == "__main__":
    main()
