"""CycleGAN on the built-in unpaired pair: translation error against the known mapping, at a budget in steps.

Protocol: `cyclegan` trains on `pair:digits-thick` (digits and their 3x3-cross dilation, unpaired in training) for
`--steps` steps, seed 0, one thread unless told, validating every `--eval-every` steps; for each hyperparameter
variant (`--variant NAME:key=value,...`; `default` is the model's defaults) its `best` checkpoint (lowest held-out
cycle error) and its `last` are scored by `genzoo eval` on the aligned test split: `a2b_error` = mean |G_ab(a) -
thick(a)|, `b2a_error` = mean |G_ba(thick(a)) - a|, the cycle errors, and `identity_baseline_error` = mean |a -
thick(a)| (the untranslated input's error). Translations/s: `img2img` over the test split in one batch, best of
three. Training steps/s are recorded with the load average (the machine is shared; quality is compared at equal
steps, so load changes the time, not the numbers). Writes bench/results/<name>.json and prints a markdown table.

    python bench/cyclegan.py [--steps 1000] [--variant no-identity:lambda_identity=0 ...] [--name cyclegan_digits]
                             [--keep /tmp/cyclegan-runs/bench]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.contract import parse_override
from genzoo.runs import RunDir

DATA = "pair:digits-thick"
TASK_KEYS = ("a2b_error", "b2a_error", "cycle_a_error", "cycle_b_error", "identity_baseline_error")


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME:key=value,key=value`` (or just ``NAME`` for the defaults) -> (name, hyperparameters)."""
    name, _, settings = text.partition(":")
    return name, dict(parse_override(item) for item in settings.split(",") if item)


def translations_per_second(run: Path, data: str) -> float:
    model = genzoo.load(run)
    x = genzoo.load_dataset(data).examples("test").x
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        model.img2img(x)
        best = min(best, time.perf_counter() - start)
    return len(x) / best


def train_and_measure(name: str, hparams: dict[str, Any], args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    run = genzoo.train("cyclegan", args.data, steps=args.steps, out=folder / name, seed=args.seed,
                       overrides={**hparams, "eval_every": args.eval_every}, progress=False)
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    result: dict[str, Any] = {"variant": name, "hparams": hparams, "steps": RunDir(run).trainer_state("last")["step"],
                              "train_steps_per_s": rates[-1] if rates else None,
                              "translations_per_s": translations_per_second(run, args.data)}
    for checkpoint in ("best", "last"):
        model = genzoo.load(run, checkpoint=checkpoint)
        evaluated = genzoo.evaluate(model, data=args.data, seed=0, report=False)
        result[checkpoint] = {"step": model.provenance["step"], **evaluated["rows"]["model"]["task"]}
    return result


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["variant", "steps", "checkpoint (step)", "a2b error ↓", "b2a error ↓", "cycle A / B ↓",
            "untranslated input", "translations/s", "train steps/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        for checkpoint in ("best", "last"):
            t = r[checkpoint]
            cells = [f"`{r['variant']}`", str(r["steps"]), f"{checkpoint} ({t['step']})", f"{t['a2b_error']:.3f}",
                     f"{t['b2a_error']:.3f}", f"{t['cycle_a_error']:.3f} / {t['cycle_b_error']:.3f}",
                     f"{t['identity_baseline_error']:.3f}", f"{r['translations_per_s']:,.0f}",
                     "–" if r["train_steps_per_s"] is None else f"{r['train_steps_per_s']:.2f}"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DATA, help="a two-domain data spec whose held-out splits are aligned")
    parser.add_argument("--steps", type=int, default=1000, help="training steps per variant")
    parser.add_argument("--eval-every", type=int, default=250, help="validate (and keep the best) every N steps")
    parser.add_argument("--variant", nargs="*", default=["default"], metavar="NAME:key=value,...",
                        help="hyperparameter variants to train (default: the model's defaults)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--name", default="cyclegan_digits", help="result file name in bench/results/")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = [parse_variant(v) for v in args.variant]
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        results = [train_and_measure(name, hparams, args, folder) for name, hparams in variants]
    protocol = {"data": args.data, "steps": args.steps, "eval_every": args.eval_every, "seed": args.seed,
                "threads": args.threads, "metrics": "genzoo eval task metrics on the aligned test split, data units"}
    path = write_result(args.name, {"protocol": protocol, "results": results})
    print(markdown(results))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
