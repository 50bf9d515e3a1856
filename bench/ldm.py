"""Text-to-image on ``scenes:``: latent diffusion (``ldm``) against pixel-space ``ddpm``, both caption-conditioned.

Protocol: both models train on the same scenes data (MiniLM caption embeddings) for the same number of training
steps (``ldm`` spends a quarter of them on its autoencoder), batch size, seed 0, their other defaults, as two
``genzoo train`` processes side by side (one thread each). Each best checkpoint (EMA weights) then draws one image
per held-out test caption (the first ``--captions``) with the dpm sampler at ``--sampler-steps`` and classifier-free
guidance ``--guidance``; the scenes checker gives caption accuracy per attribute and for all attributes, and the
Fréchet distance is taken against the real test images of those captions in genzoo's feature space for the data
(the autoencoder ``genzoo eval`` fits). Reference rows: the real test images checked against their own captions
(the checker's ceiling), against the captions shifted by one (chance: a right-looking image of another caption),
and FD of the validation images against the test images (the floor at that count). Sampling cost: network
evaluations per image and seconds per image. Writes bench/results/<name>.json and prints a markdown table.

    python bench/ldm.py [--steps 1500] [--data 'scenes:#image_size=16'] [--captions 256] [--guidance 4]
    python bench/ldm.py --steps 4 --captions 8 --name ldm_smoke   # seconds: checks the script runs
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data import load_dataset
from genzoo.data.scenes import caption_accuracy
from genzoo.eval.features import feature_space
from genzoo.metrics.frechet import frechet_distance

MODELS = ("ldm", "ddpm")


def train(model: str, data: str, steps: int, batch: int, out: Path, settings: list[str]) -> subprocess.Popen[bytes]:
    """A ``genzoo train`` process (one thread) for ``steps`` steps."""
    command = [sys.executable, "-m", "genzoo", "train", model, "--data", data, "--steps", str(steps), "--out",
               str(out), "--seed", "0", "--quiet", "--set", f"batch_size={batch}",
               *(f"--set={s}" for s in settings)]
    return subprocess.Popen(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)


def training_record(run: Path, checkpoint: str, wall: float | None) -> dict[str, Any]:
    """Steps of the checkpoint, wall seconds of the whole ``genzoo train`` process (start-up and validation
    included; None for runs trained elsewhere) and the trainer's own steps/s and time at that step."""
    steps = json.loads((run / checkpoint / "trainer.json").read_text())["step"]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if r["split"] == "train" and r.get("steps_per_s") and r["step"] <= steps]
    return {"steps": steps, "wall_seconds": wall, "steps_per_s": steps / wall if wall else None,
            "trainer_seconds": logged[-1]["time"] if logged else None,
            "logged_steps_per_s": logged[-1]["steps_per_s"] if logged else None}


def draw(run: Path, checkpoint: str, texts: list[str], guidance: float,
         sampler_steps: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """One image per caption (its prompt), and what it cost."""
    model = genzoo.load(run, checkpoint=checkpoint)
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    images = torch.cat([model.sample(len(part), generator=generator, prompt=part, guidance=guidance,
                                     steps=sampler_steps) for part in (texts[i : i + 128] for i in
                                                                       range(0, len(texts), 128))])
    seconds = time.perf_counter() - start
    cost = model.cost(guidance=guidance, steps=sampler_steps)
    return images, {"nfe_per_image": cost.nfe_per_sample, "seconds_per_image": seconds / len(texts),
                    "parameters": model.num_parameters()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="scenes:#image_size=16", help="captioned scenes data spec")
    parser.add_argument("--steps", type=int, default=1500, help="training steps of each model")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--captions", type=int, default=256, help="held-out captions to draw (one image each)")
    parser.add_argument("--guidance", type=float, default=4.0, help="classifier-free guidance scale")
    parser.add_argument("--sampler-steps", type=int, default=20, help="dpm sampler steps")
    parser.add_argument("--ldm-set", nargs="*", default=["downsample=1"], help="ldm hyperparameters key=value "
                        "(default: an 8x8 latent grid for 16x16 images)")
    parser.add_argument("--ddpm-set", nargs="*", default=[], help="ddpm hyperparameters key=value")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/ldm-runs/bench"), help="where the runs go")
    parser.add_argument("--name", default="ldm", help="result name: bench/results/NAME.json")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best", help="checkpoint to evaluate")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the runs already in --runs (ldm/, ddpm/)")
    args = parser.parse_args()

    dataset = load_dataset(args.data)  # embeds (and caches) the captions once, before the runs read them
    test, texts = dataset.split("test")[: args.captions], dataset.captions["test"][: args.captions]
    settings = {"ldm": args.ldm_set, "ddpm": args.ddpm_set}
    started = time.perf_counter()
    jobs = {} if args.eval_only else {m: train(m, args.data, args.steps, args.batch_size, args.runs / m, settings[m])
                                      for m in MODELS}
    wall: dict[str, float | None] = dict.fromkeys(MODELS) if args.eval_only else {}
    while len(wall) < len(jobs):
        for model, job in jobs.items():
            if model not in wall and job.poll() is not None:
                if job.returncode != 0:
                    raise SystemExit(f"training {model} failed (exit {job.returncode})")
                wall[model] = time.perf_counter() - started
        time.sleep(1.0)
    space = feature_space(dataset)
    real = space.features(test.x)
    shifted = texts[1:] + texts[:1]
    rows: dict[str, Any] = {
        "real images, own captions": {"caption": caption_accuracy(test.x, texts)},
        "real images, captions shifted by one (chance)": {"caption": caption_accuracy(test.x, shifted)},
        "validation images (FD floor)": {"fd": frechet_distance(real, space.features(
            dataset.split("val").x[: args.captions]))},
    }
    for model in MODELS:
        images, cost = draw(args.runs / model, args.checkpoint, texts, args.guidance, args.sampler_steps)
        rows[model] = {"caption": caption_accuracy(images, texts), "fd": frechet_distance(real, space.features(images)),
                       "sampling": cost, "training": training_record(args.runs / model, args.checkpoint, wall[model])}
        dataset.info.handler.save(args.runs / f"{model}-test-captions.png", images[:64])
    (args.runs / "captions.txt").write_text("\n".join(texts[:64]) + "\n")
    protocol = {key: getattr(args, key) for key in ("data", "steps", "batch_size", "captions", "guidance",
                                                    "sampler_steps", "ldm_set", "ddpm_set", "checkpoint")}
    path = write_result(args.name, {"protocol": {**protocol, "threads_per_run": 1, "seed": 0,
                                                 "feature_space": space.name}, "rows": rows})
    print(markdown(rows))
    print(f"-> {path}")


def markdown(rows: dict[str, Any]) -> str:
    keys = ("colour", "shape", "size", "count", "relation", "all")
    head = ["row", *keys, "FD ↓", "NFE/image", "s/image", "train steps", "trainer steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        acc = row.get("caption", {})
        cells = [f"{acc[f'caption_{k}_accuracy']:.3f}" if f"caption_{k}_accuracy" in acc else "–" for k in keys]
        sampling, training = row.get("sampling", {}), row.get("training", {})
        cells += [f"{row['fd']:.2f}" if "fd" in row else "–", str(sampling.get("nfe_per_image", "–")),
                  f"{sampling['seconds_per_image']:.4f}" if sampling else "–",
                  str(training.get("steps", "–")),
                  f"{training['logged_steps_per_s']:.2f}" if training.get("logged_steps_per_s") else "–"]
        lines.append("| " + " | ".join([name, *cells]) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
