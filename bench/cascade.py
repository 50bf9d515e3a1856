"""Cascade of a small and a large seq2seq model on ``task:add``: compute saved and quality kept, calibrated to target
escalation rates.

Protocol: ``seq2seq`` trains twice on ``task:add`` (``"12+345" -> "357"``, 8,000 training pairs), seed 0, a budget in
training steps (a loaded machine gives the same numbers, only later; steps/s are recorded): a *small* model
(``--small-set``, default width 32, 2 + 2 layers, 2 heads: 58k parameters) and a *large* one (``--large-set``, default
width 64, 2 + 2 layers, 4 heads: 231k), 1,500 steps each by default. Both answer greedily (temperature 0) through the
server's decoding path (``generate(return_details=True)``: the per-token log-probabilities the cascade reads), on the
first ``--calib`` validation pairs (held out, for calibration) and the first ``--examples`` test pairs. For each
confidence signal (mean / min token log-probability, negative mean entropy) and target escalation rate r, the small
model's threshold is calibrated on the validation answers (:func:`genzoo.serve.cascade.calibrate`, the r-quantile); on
the test pairs a small answer below it is replaced by the large model's. Reported: exact match of small only, large
only, the cascade, and random escalation at the same realised rate (what a signal-free cascade would keep); the
escalation rate realised on test; compute (2 FLOPs x parameters x tokens read and written,
:func:`genzoo.serve.cascade.request_flops`) of the cascade relative to always using the large model. A check then
serves the cascade (``create_app`` with a ``cascades`` config) and asserts that its answers on ``--served`` test
prompts equal the simulated ones.

    python bench/cascade.py [--small-steps 1500] [--large-steps 1500] [--examples 500] [--calib 500]
                            [--rates 0.1,0.3,0.5] [--keep DIR] [--name cascade]

Smoke run (seconds): ``python bench/cascade.py --small-steps 3 --large-steps 3 --examples 16 --calib 16 --served 4
--name cascade_smoke``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.runs import RunDir
from genzoo.serve.cascade import TEXT_SIGNALS, calibrate, request_flops, text_confidence

TASK = "task:add"


def train(name: str, steps: int, overrides: dict[str, Any], folder: Path) -> tuple[Path, float | None]:
    """A trained run (reused when ``folder/name`` holds one) and its last logged training steps/s."""
    run = folder / name
    if not (run / "config.json").is_file():
        genzoo.train("seq2seq", TASK, steps=steps, out=run, seed=0, overrides=overrides, progress=False)
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    return run, (rates[-1] if rates else None)


def answers(model: Any, pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """Greedy answers with their confidence signals, exactness and compute."""
    out = []
    for source, target in pairs:
        result = model.generate(source, temperature=0.0, max_new_tokens=model.seq_len, return_details=True)
        tokens = len(model.prompt_ids(source)) + len(result.logprobs)
        out.append({"text": result.text, "exact": result.text == target, "flops": request_flops(model, tokens),
                    **{s: text_confidence(s, result.logprobs) for s in TEXT_SIGNALS}})
    return out


def pairs_of(split: Any, model: Any) -> list[tuple[str, str]]:
    """(source, target) strings of a split of pair data."""
    pad, eos = model.pad, next(iter(model.eos_ids))
    sources = [model.decode_tokens([t for t in row if t != pad]) for row in split.cond.tolist()]
    targets = [model.decode_tokens(row[: row.index(eos)]) for row in split.x.tolist()]
    return list(zip(sources, targets, strict=True))


def cascade_row(small: list[dict[str, Any]], large: list[dict[str, Any]], calib: list[dict[str, Any]], signal: str,
                rate: float) -> dict[str, Any]:
    threshold = calibrate([a[signal] for a in calib], rate)
    escalate = [a[signal] < threshold for a in small]
    realised = sum(escalate) / len(small)
    exact = sum(lg["exact"] if up else sm["exact"] for sm, lg, up in zip(small, large, escalate, strict=True))
    spent = sum(sm["flops"] + (lg["flops"] if up else 0.0) for sm, lg, up in zip(small, large, escalate, strict=True))
    small_em, large_em = (sum(a["exact"] for a in xs) / len(xs) for xs in (small, large))
    return {"signal": signal, "target_escalation": rate, "threshold": threshold, "escalation_rate": realised,
            "exact_match": exact / len(small),
            "random_escalation_exact_match": (1 - realised) * small_em + realised * large_em,
            "compute_vs_large": spent / sum(a["flops"] for a in large)}


def check_served(small_run: Path, large_run: Path, pairs: list[tuple[str, str]], signal: str, threshold: float,
                 simulated: list[bool]) -> int:
    """Serve the cascade and assert it escalates exactly where the simulation did; returns the prompts checked."""
    from fastapi.testclient import TestClient

    from genzoo.serve import ModelRegistry, ServeSettings, create_app

    registry = ModelRegistry.from_sources([f"small={small_run}", f"large={large_run}"])
    config = {"name": "adder", "steps": [{"model": "small", "signal": signal, "threshold": threshold},
                                         {"model": "large"}]}
    client = TestClient(create_app(registry, ServeSettings(cascades=[config])))
    for (source, _), escalated in zip(pairs, simulated, strict=False):
        body = client.post("/v1/completions", json={"model": "adder", "prompt": source, "temperature": 0,
                                                    "max_tokens": registry.model("small").seq_len}).json()
        assert (body["answered_by"] == "large") == escalated, (source, body["escalations"])
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-steps", type=int, default=1500, help="training steps of the small model")
    parser.add_argument("--large-steps", type=int, default=1500, help="training steps of the large model")
    parser.add_argument("--small-set", default="width=32,layers=2,heads=2", help="small model hyperparameters")
    parser.add_argument("--large-set", default="width=64,layers=2,heads=4", help="large model hyperparameters")
    parser.add_argument("--examples", type=int, default=500, help="test pairs scored")
    parser.add_argument("--calib", type=int, default=500, help="validation pairs to calibrate on")
    parser.add_argument("--rates", default="0.1,0.3,0.5", help="target escalation rates")
    parser.add_argument("--served", type=int, default=50, help="test prompts checked through the server")
    parser.add_argument("--keep", type=Path, default=None, help="folder for the runs (reused when present)")
    parser.add_argument("--name", default="cascade", help="result file name in bench/results/")
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]

    def parse(text: str) -> dict[str, Any]:
        return {k: int(v) for k, v in (kv.split("=") for kv in text.split(",") if kv)}

    with tempfile.TemporaryDirectory(prefix="genzoo-cascade-") as tmp:
        folder = args.keep or Path(tmp)
        start = time.perf_counter()
        small_run, small_rate = train("small", args.small_steps, parse(args.small_set), folder)
        large_run, large_rate = train("large", args.large_steps, parse(args.large_set), folder)
        train_seconds = time.perf_counter() - start
        small_model, large_model = genzoo.load(small_run), genzoo.load(large_run)
        data = load_dataset(TASK)
        test = pairs_of(data.examples("test")[: args.examples], small_model)
        held_out = pairs_of(data.examples("val")[: args.calib], small_model)
        start = time.perf_counter()
        small, large, calib = answers(small_model, test), answers(large_model, test), answers(small_model, held_out)
        answer_seconds = time.perf_counter() - start
        rows = [cascade_row(small, large, calib, s, r) for s in TEXT_SIGNALS for r in rates]
        chosen = next(r for r in rows if r["signal"] == "mean_logprob" and r["target_escalation"] == rates[len(rates)
                                                                                                           // 2])
        simulated = [a["mean_logprob"] < chosen["threshold"] for a in small]
        checked = check_served(small_run, large_run, test[: args.served], "mean_logprob", chosen["threshold"],
                               simulated)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in (("small", small_model),
                                                                           ("large", large_model))}
    result = {"protocol": {"task": TASK, "seed": 0, "decoding": "greedy", "examples": len(test),
                           "calibration_examples": len(held_out), "rates": rates,
                           "small": {"set": parse(args.small_set), "steps": args.small_steps, "steps_per_s": small_rate,
                                     "parameters": params["small"]},
                           "large": {"set": parse(args.large_set), "steps": args.large_steps, "steps_per_s": large_rate,
                                     "parameters": params["large"]},
                           "train_seconds": round(train_seconds, 1), "answer_seconds": round(answer_seconds, 1),
                           "served_check_prompts": checked},
              "small_only_exact_match": statistics.fmean(a["exact"] for a in small),
              "large_only_exact_match": statistics.fmean(a["exact"] for a in large),
              "small_compute_vs_large": sum(a["flops"] for a in small) / sum(a["flops"] for a in large),
              "cascades": rows}
    path = write_result(args.name, result)
    print(f"small only {result['small_only_exact_match']:.3f}  large only {result['large_only_exact_match']:.3f}  "
          f"(params {params['small']:,} vs {params['large']:,})")
    print("| signal | target r | realised r | exact match | random escalation | compute vs large |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['signal']} | {r['target_escalation']} | {r['escalation_rate']:.3f} | {r['exact_match']:.3f} | "
              f"{r['random_escalation_exact_match']:.3f} | {r['compute_vs_large']:.3f} |")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
