"""The GANs side by side on `digits` at an equal number of training steps, scored by `genzoo eval`.

Each model (dcgan, wgan-gp, cgan, and stylegan / cyclegan when registered; unknown names are skipped) trains with
its defaults and seed 0 for ``--steps`` training steps (a budget in steps, so machine load changes the time taken,
not the numbers; the time is only a cap with ``--cap``), then the best checkpoint (EMA generator) is scored by the
evaluation protocol with seed 0: FD, KID, precision/recall, samples/s, train steps/s. A class-conditional model
(cgan) also gets its class accuracy: ``--per-class`` samples of each class, labelled by the evaluation classifier
(``feature_space(digits).predict``). Writes bench/results/gans_digits.json.

    python bench/gans.py --steps 4000 [--models dcgan wgan-gp cgan] [--set wgan-gp:n_critic=2] [--keep DIR]
    python bench/gans.py --steps 20 --per-class 10          # a smoke run: seconds
    python bench/gans.py --keep DIR --reuse                  # score runs already trained in DIR/<model>
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.contract import Capability
from genzoo.data.specs import load_dataset
from genzoo.eval import table
from genzoo.eval.features import feature_space
from genzoo.registry import model_names
from genzoo.runs import RunDir

MODELS = ["dcgan", "wgan-gp", "cgan", "stylegan", "cyclegan"]
#: data of the models that do not train on plain digits (a two-domain model translates a built-in unpaired pair)
DATA = {"cyclegan": "pair:digits-thick"}


def class_accuracy(run: Path, per_class: int) -> dict[str, Any]:
    """Share of samples of each requested class that the evaluation classifier labels as that class."""
    model = genzoo.load(run, checkpoint="best")
    dataset = load_dataset(model.data.spec)
    space = feature_space(dataset)
    labels = torch.arange(model.data.num_classes).repeat_interleave(per_class)
    predicted = space.predict(space.features(model.sample(len(labels), seed=0, labels=labels).cpu()))
    right = predicted == labels
    return {"accuracy": right.float().mean().item(), "per_class": per_class, "feature_space": space.describe(),
            "by_class": [right[labels == k].float().mean().item() for k in range(model.data.num_classes)]}


def train_and_score(name: str, steps: int, cap: str | None, overrides: dict[str, str], folder: Path,
                    per_class: int, reuse: bool) -> dict[str, Any]:
    run = folder / name
    if not (reuse and (run / "config.json").exists()):
        genzoo.train(name, DATA.get(name, "digits"), steps=steps, budget=cap, out=run, seed=0, overrides=overrides,
                     progress=False)
    result = genzoo.evaluate(run, seed=0, report=False)
    last = genzoo.load(run, checkpoint="last")
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    result["training"] = {"steps": last.provenance["step"], "steps_per_s": rates[-1] if rates else None,
                          "cap": cap, "overrides": overrides}
    if Capability.CONDITIONAL_SAMPLE in last.capabilities:
        result["class_accuracy"] = class_accuracy(run, per_class)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS, help="models to run (unregistered ones are skipped)")
    parser.add_argument("--steps", type=int, default=4000, help="training steps of every model")
    parser.add_argument("--cap", help="a time cap per model (e.g. 10m); the steps budget is what is compared")
    parser.add_argument("--set", nargs="*", default=[], metavar="MODEL:KEY=VALUE", help="a model's hyperparameter")
    parser.add_argument("--per-class", type=int, default=100, help="samples per class for the class accuracy")
    parser.add_argument("--keep", type=Path, help="keep the runs in this folder (default: a temporary one)")
    parser.add_argument("--reuse", action="store_true", help="score the runs already in --keep DIR/MODEL as they "
                        "are (their own steps are recorded) instead of training them")
    args = parser.parse_args()
    overrides: dict[str, dict[str, str]] = {}
    for item in args.set:
        model, setting = item.split(":", 1)
        key, value = setting.split("=", 1)
        overrides.setdefault(model, {})[key] = value
    registered = set(model_names())
    names = [name for name in args.models if name in registered]
    for name in sorted(set(args.models) - registered):
        print(f"{name}: not registered, skipped", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.keep or Path(tmp)
        results = []
        results, failed = [], {}
        for name in names:
            try:  # a model another session is still writing must not lose the others' numbers
                results.append(train_and_score(name, args.steps, args.cap, overrides.get(name, {}), folder,
                                               args.per_class, args.reuse))
            except Exception as err:  # recorded with the results
                failed[name] = f"{type(err).__name__}: {err}"
                print(f"{name}: failed: {failed[name]}", flush=True)
                continue
            fd = results[-1]["rows"]["model"].get("fd")
            accuracy = results[-1].get("class_accuracy", {}).get("accuracy")
            print(f"{name}: {results[-1]['training']['steps']} steps, FD {fd}"
                  + (f", class accuracy {accuracy:.3f}" if accuracy is not None else ""), flush=True)
    by_space: dict[str, list[dict[str, Any]]] = {}  # one table per feature space: other scores do not compare
    for result in results:
        by_space.setdefault(str(result["rows"]["model"].get("feature_space")), []).append(result)
    for group in by_space.values():
        Console(width=160).print(table(group))
    steps = None if args.reuse else args.steps  # reused runs: each result records its own steps
    path = write_result("gans_digits", {"data": "digits", "steps": steps, "results": results, "failed": failed})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
