"""``captioner`` on ``scenes``: exact match and per-attribute accuracy of its captions, greedy and beam search.

Protocol: ``captioner`` trains on ``scenes:#n=--scenes`` (32x32 drawings, captions as word tokens, cut 80/10/10)
with its defaults but ``--width`` (patch 4, 2 encoder + 2 decoder blocks, batch 64, Adam 1e-3 after 100 warm-up
steps), seed 0, for ``--steps`` training steps: a budget in steps, so a loaded machine gives the same numbers, only
later (steps/s are recorded next to them). The best checkpoint by validation loss captions the first ``--examples``
test images greedily (``genzoo eval``'s task metrics) and by beam search (``--num-beams``); each caption is parsed
with the scene grammar and scored per attribute against the reference (``agreement``: colour, shape and size as
multisets over objects, the count, the relation of two-object scenes stated from either object, and the whole
scene). Chance: the training split's most frequent caption given for every image, scored the same way.
Writes bench/results/<name>.json and prints a markdown table.

    python bench/captioner.py [--steps 400] [--width 64] [--scenes 5000] [--examples 500] [--num-beams 4]
                              [--name captioner_scenes] [--keep DIR]

A smoke run takes seconds: ``python bench/captioner.py --steps 3 --width 16 --scenes 100 --examples 8
--name captioner_smoke``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.models.transformer.captioner import attribute_accuracy
from genzoo.runs import RunDir

COLUMNS = ["exact_match_accuracy", "scene_accuracy", "colour_accuracy", "shape_accuracy", "size_accuracy",
           "count_accuracy", "relation_accuracy", "grammatical_accuracy"]


def measure(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    spec = f"scenes:#n={args.scenes},caption=tokens"
    data = load_dataset(spec)
    begin = time.perf_counter()
    run = genzoo.train("captioner", data, steps=args.steps, out=folder / "captioner", seed=0,
                       overrides={"width": args.width}, progress=False)
    train_seconds = time.perf_counter() - begin
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    test = data.examples("test")[: args.examples]
    references = data.captions["test"][: len(test)]
    start = time.perf_counter()
    greedy = genzoo.evaluate(run, seed=0, data=replace(data, test=test), report=False)["rows"]["model"]["task"]
    greedy_seconds = (time.perf_counter() - start) / len(test)
    model = genzoo.load(run)
    start = time.perf_counter()
    beams = model.caption(test.x, num_beams=args.num_beams)
    beam_seconds = (time.perf_counter() - start) / len(test)
    exact = sum(b == r for b, r in zip(beams, references, strict=True)) / len(test)
    commonest = Counter(data.captions["train"]).most_common(1)[0][0]
    chance = attribute_accuracy([commonest] * len(test), references)
    chance["exact_match_accuracy"] = sum(r == commonest for r in references) / len(test)
    return {"data": spec, "steps": args.steps, "width": args.width, "parameters": model.num_parameters(),
            "train_steps_per_s": rates[-1] if rates else None, "train_seconds": round(train_seconds, 1),
            "best_step": model.provenance["step"], "examples": len(test),
            "greedy": {**greedy, "seconds_per_caption_with_eval": greedy_seconds},
            "beam": {"num_beams": args.num_beams, "exact_match_accuracy": exact,
                     **attribute_accuracy(beams, references), "seconds_per_caption": beam_seconds},
            "chance": {"caption": commonest, **chance}}


def markdown(result: dict[str, Any]) -> str:
    lines = ["| decoding | " + " | ".join(c.removesuffix("_accuracy") for c in COLUMNS) + " |",
             "|" + "---|" * (len(COLUMNS) + 1)]
    rows = {"greedy": result["greedy"], f"beam ({result['beam']['num_beams']})": result["beam"],
            f"chance ('{result['chance']['caption']}' always)": result["chance"]}
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row.get(c, float('nan')):.3f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps")
    parser.add_argument("--width", type=int, default=64, help="captioner width d (its default is 128)")
    parser.add_argument("--scenes", type=int, default=5000, help="scenes drawn (80/10/10 split)")
    parser.add_argument("--examples", type=int, default=500, help="test images to caption (at most 10%% of scenes)")
    parser.add_argument("--num-beams", type=int, default=4, help="beams of the beam-search decoding")
    parser.add_argument("--name", default="captioner_scenes", help="result file bench/results/<name>.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directory here")
    args = parser.parse_args()
    protocol = {"model": f"captioner (defaults, width {args.width})", "seed": 0, "steps": args.steps,
                "examples": args.examples, "num_beams": args.num_beams,
                "scoring": "captions parsed with the scenes grammar; attributes as multisets over objects; relation "
                           "from either object; chance = the commonest training caption for every image"}
    with tempfile.TemporaryDirectory() as tmp:
        result = measure(args, args.keep or Path(tmp))
    path = write_result(args.name, {"protocol": protocol, "result": result})
    print(f"{result['steps']} steps at {result['train_steps_per_s'] or 0:.2f} steps/s, best @ {result['best_step']}")
    print(markdown(result))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
