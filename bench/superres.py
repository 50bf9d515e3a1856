"""``sr3`` super-resolution against bicubic upsampling: PSNR and SSIM on held-out images.

Protocol: for each data spec (``digits``: 8x8, 17 levels; ``mnist:../shared/data``: 28x28, when the file is there)
and each upscaling ``--factors`` f that divides the image sides, ``sr3`` trains with its defaults (U-Net width 32,
cosine schedule, v-prediction, batch 128, Adam 1e-3 after 100 warm-up steps, EMA 0.999), seed 0, for ``--steps``
training steps: a budget in steps, so a loaded machine gives the same numbers, only later (steps/s are recorded next
to them). The best checkpoint (EMA weights) upscales the f x f block means of the first ``--examples`` test images
with the default sampler (DPM-Solver++ 2M, 20 steps) through ``genzoo eval``'s task metrics; bicubic upsampling of
the same low-resolution images is the baseline. Writes bench/results/<name>.json and prints a markdown table.

    python bench/superres.py [--data digits mnist:../shared/data] [--factors 2 4] [--steps 400] [--examples 256]
                             [--name superres] [--keep DIR]

A smoke run takes seconds: ``python bench/superres.py --data digits --factors 2 --steps 3 --examples 8
--name superres_smoke``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.runs import RunDir

DATA = ["digits", "mnist:../shared/data"]
MNIST_FILE = Path("../shared/data/mnist-t10k-images-idx3-ubyte.gz")


def measure(spec: str, factor: int, steps: int, examples: int, folder: Path) -> dict[str, Any]:
    data = load_dataset(spec)
    begin = time.perf_counter()
    run = genzoo.train("sr3", data, steps=steps, out=folder / f"{spec.split(':')[0]}-x{factor}", seed=0,
                       overrides={"factor": factor}, progress=False)
    train_seconds = time.perf_counter() - begin
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    test = data.examples("test")[:examples]
    start = time.perf_counter()
    task = genzoo.evaluate(run, seed=0, data=replace(data, test=test), report=False)["rows"]["model"]["task"]
    return {"data": spec, "shape": list(data.info.shape), "factor": factor, "steps": steps,
            "train_steps_per_s": rates[-1] if rates else None, "train_seconds": round(train_seconds, 1),
            "best_step": genzoo.load(run).provenance["step"], "examples": len(test),
            "seconds_per_image": (time.perf_counter() - start) / len(test), **task}


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["data", "factor", "steps", "train steps/s", "sr3 PSNR dB ↑", "bicubic PSNR dB", "sr3 SSIM ↑",
            "bicubic SSIM", "s/image"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        cells = [r["data"], f"x{r['factor']} ({r['shape'][-1] // r['factor']}px -> {r['shape'][-1]}px)",
                 str(r["steps"]), f"{r['train_steps_per_s'] or 0:.2f}", f"{r['psnr_db']:.2f}",
                 f"{r['bicubic_psnr_db']:.2f}", f"{r['ssim']:.3f}", f"{r['bicubic_ssim']:.3f}",
                 f"{r['seconds_per_image']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", nargs="+", default=DATA, help="image data specs (mnist is skipped when "
                        f"{MNIST_FILE} is missing)")
    parser.add_argument("--factors", nargs="+", type=int, default=[2, 4], help="upscaling factors")
    parser.add_argument("--steps", type=int, default=400, help="training steps per model")
    parser.add_argument("--examples", type=int, default=256, help="test images to upscale (at most 256)")
    parser.add_argument("--name", default="superres", help="result file bench/results/<name>.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    protocol = {"model": "sr3 (defaults)", "seed": 0, "steps": args.steps, "examples": args.examples,
                "degradation": "mean of f x f blocks", "sampler": "dpm, 20 steps (default)",
                "baseline": "bicubic upsampling (torch interpolate, clamped to [0, 1])"}
    results: list[dict[str, Any]] = []
    path = None
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.data:
            if spec.startswith("mnist") and not MNIST_FILE.is_file():
                print(f"skipping {spec}: {MNIST_FILE} not found")
                continue
            for factor in args.factors:  # written after each model, so a long run keeps what it has measured
                results.append(measure(spec, factor, args.steps, args.examples, args.keep or Path(tmp)))
                path = write_result(args.name, {"protocol": protocol, "results": results})
    print(markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
