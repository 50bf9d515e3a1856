"""Edge builds measured: per model, the exported artefacts' agreement with the original, their speed, and the
quality cost of int8.

Each model trains for ``--steps`` steps with seed 0 (a budget in steps: machine load changes the time, not the
numbers): dcgan and vae on digits, gpt on tiny Shakespeare (``--text``, characters, context 64; digits pixels when
the file is missing). Then

* ``genzoo export`` builds onnx, torchscript and int8 at batch ``--batch`` and records each ``max_abs_diff``;
* speed: the time of one batch from the original model, onnxruntime, TorchScript and the int8 model, interleaved
  (one call of each in turn, ``--repeats`` rounds, medians), so load on the machine hits all alike; images: a whole
  ``sample(batch)`` (noise + network + postprocessing); gpt: the next-token logits of a full window (the
  exported network; generation adds a Python loop around it);
* quality of int8: the evaluation protocol (``genzoo.evaluate``, ``--eval-n`` samples, seed 0: FD, KID, precision,
  recall) for the float and int8 image models; held-out bits per character for gpt.

Writes bench/results/export.json.

    python bench/export.py --models dcgan vae --steps 1000 --repeats 15 --eval-n 1000          # reported numbers
    python bench/export.py --models gpt --gpt-steps 600 --repeats 15 --eval-n 1000 --name export_gpt
    python bench/export.py --steps 20 --gpt-steps 20 --repeats 3 --eval-n 200 --name smoke    # a smoke run
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.export import check_inputs, export, load_export, load_int8
from genzoo.runs import RunDir

TEXT = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinyshakespeare.txt"


def data_spec(name: str, text: Path) -> str:
    if name != "gpt":
        return "digits"
    return f"text:{text}#context=64" if text.is_file() else "digits"


def interleaved(calls: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Median seconds per call of each function, timed in turns (one warm-up call each first)."""
    for fn in calls.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def speed(run: Path, folders: dict[str, Path], batch: int, repeats: int) -> dict[str, Any]:
    model = genzoo.load(run)
    int8 = load_int8(folders["int8"])
    onnx, script = load_export(folders["onnx"]), load_export(folders["torchscript"])
    if model.data.kind.value == "tokens":
        with torch.no_grad():
            inputs = check_inputs(model.export_module(batch), 0)
            ids = inputs["ids"]
            calls = {"original": lambda: model(ids), "onnxruntime": lambda: onnx.run(ids=ids),
                     "torchscript": lambda: script.run(ids=ids), "int8": lambda: int8(ids)}
            what = f"next-token logits of {batch} windows of {ids.shape[1]} tokens"
            seconds = interleaved(calls, repeats)
    else:
        calls = {"original": lambda: model.sample(batch, seed=0), "onnxruntime": lambda: onnx.sample(batch, seed=0),
                 "torchscript": lambda: script.sample(batch, seed=0), "int8": lambda: int8.sample(batch, seed=0)}
        what = f"sample({batch})"
        seconds = interleaved(calls, repeats)
    base = seconds["original"]
    return {"what": what, "repeats": repeats,
            "ms_per_batch": {k: round(1000 * v, 3) for k, v in seconds.items()},
            "examples_per_s": {k: round(batch / v, 1) for k, v in seconds.items()},
            "speedup_vs_original": {k: round(base / v, 3) for k, v in seconds.items()}}


def quality(run: Path, spec: str, int8_folder: Path, eval_n: int) -> dict[str, Any]:
    model, int8 = genzoo.load(run), load_int8(int8_folder)
    if model.data.kind.value == "tokens":
        val = torch.cat([b.x for b in load_dataset(spec).batches("val", 64, limit=eval_n)])
        with torch.no_grad():
            bits = {name: m.token_nll(val).mean().item() / math.log(2) for name, m in (("float", model),
                                                                                       ("int8", int8))}
        return {"metric": f"held-out bits per token ({len(val)} windows)", **bits,
                "delta": bits["int8"] - bits["float"]}
    keys = ("fd", "kid", "precision", "recall")
    rows = {name: genzoo.evaluate(m, n=eval_n, seed=0, report=False)["rows"]["model"]
            for name, m in (("float", model), ("int8", int8))}
    out = {name: {k: row[k] for k in keys} for name, row in rows.items()}
    return {"metric": f"evaluation protocol, {eval_n} samples, seed 0", **out,
            "delta": {k: out["int8"][k] - out["float"][k] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["dcgan", "vae", "gpt"])
    parser.add_argument("--steps", type=int, default=2000, help="training steps of the image models")
    parser.add_argument("--gpt-steps", type=int, default=1500, help="training steps of gpt")
    parser.add_argument("--batch", type=int, default=64, help="fixed batch of the artefacts")
    parser.add_argument("--repeats", type=int, default=20, help="timed rounds (medians reported)")
    parser.add_argument("--eval-n", type=int, default=1000, help="samples (images) / windows (text) for quality")
    parser.add_argument("--text", type=Path, default=TEXT, help="tiny Shakespeare for gpt")
    parser.add_argument("--runs", type=Path, default=Path("/tmp/export-bench"), help="where runs are trained")
    parser.add_argument("--reuse", action="store_true", help="use runs already trained in --runs")
    parser.add_argument("--name", default="export", help="result file name under bench/results/")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    console = Console()
    results: dict[str, Any] = {}
    for name in args.models:
        run = args.runs / name
        steps = args.gpt_steps if name == "gpt" else args.steps
        if not (args.reuse and (run / "config.json").exists()):
            genzoo.train(name, data_spec(name, args.text), steps=steps, out=run, seed=0, progress=False)
        train_log = [m for m in RunDir(run).metrics() if m.get("split") == "train" and "steps_per_s" in m]
        folders = {fmt: run / "export" / fmt for fmt in ("onnx", "torchscript", "int8")}
        exports = {fmt: export(run, fmt, folder, batch=args.batch) for fmt, folder in folders.items()}
        results[name] = {
            "data": data_spec(name, args.text), "steps": steps,
            "train_steps_per_s": train_log[-1]["steps_per_s"] if train_log else None,
            "max_abs_diff": {fmt: r["max_abs_diff"] for fmt, r in exports.items()},
            "size_bytes": {fmt: r["size_bytes"] for fmt, r in exports.items()},
            "int8_layers": {k: len(v) for k, v in exports["int8"]["quantization"].items() if isinstance(v, list)},
            "speed": speed(run, folders, args.batch, args.repeats),
            "int8_quality": quality(run, data_spec(name, args.text), folders["int8"], args.eval_n),
        }
        console.print(name, results[name])
        # after each model: a long run interrupted late still leaves the models it finished
        path = write_result(args.name, {"command": " ".join(sys.argv), "threads": torch.get_num_threads(),
                                        "batch": args.batch, "results": results})
        console.print(f"wrote {path}")


if __name__ == "__main__":
    main()
