"""seq2seq on the built-in algorithmic tasks: exact match and character error rate, greedy decoding vs beam search.

Protocol: for each task (``task:reverse``, ``task:sort``, ``task:add``: 8,000 training pairs, 500 test pairs, see
docs/seq2seq.md) ``seq2seq`` trains with its defaults (width 128, 2 encoder + 2 decoder layers, batch 64, AdamW
lr 1e-3 after 100 warm-up steps), seed 0, for ``--steps`` training steps: a budget in steps, so a
loaded machine gives the same numbers, only later (steps/s are recorded next to them). The best checkpoint by
validation loss is scored on the first ``--examples`` test pairs: greedy decoding through ``genzoo eval``'s task
metrics (exact match, character error rate, conditional NLL per token), and beam search with ``--num-beams`` beams
(length-normalised log-probability), answer by answer. Writes bench/results/<name>.json and prints a markdown table.

    python bench/seq2seq.py [--tasks reverse sort add] [--steps 800] [--num-beams 4] [--examples 500]
                            [--name seq2seq_tasks] [--keep DIR]

A smoke run takes seconds: ``python bench/seq2seq.py --tasks reverse --steps 5 --examples 8 --name seq2seq_smoke``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data.specs import load_dataset
from genzoo.generation import beam_search, generation_config
from genzoo.models.transformer.encoder_decoder import char_error_rate
from genzoo.runs import RunDir

TASKS = ["reverse", "sort", "add"]


def beam_answers(model: Any, sources: list[list[int]], num_beams: int) -> tuple[list[str], float]:
    """The best beam-search answer to each source, and the seconds per answer."""
    cfg = generation_config(num_beams=num_beams, max_new_tokens=model.seq_len)
    start, answers = time.perf_counter(), []
    for source in sources:
        tokens, _ = beam_search(model, [*source, model.bos], cfg)[0]
        answers.append(model.decode_tokens(tokens))
    return answers, (time.perf_counter() - start) / max(1, len(sources))


def measure(task: str, steps: int, num_beams: int, examples: int, folder: Path) -> dict[str, Any]:
    spec = f"task:{task}"
    begin = time.perf_counter()
    run = genzoo.train("seq2seq", spec, steps=steps, out=folder / task, seed=0, progress=False)
    train_seconds = time.perf_counter() - begin
    rates = [m["steps_per_s"] for m in RunDir(run).metrics() if m["split"] == "train" and "steps_per_s" in m]
    data = load_dataset(spec)
    test = data.examples("test")[:examples]
    start = time.perf_counter()
    greedy = genzoo.evaluate(run, seed=0, data=_only(data, test), report=False)["rows"]["model"]["task"]
    greedy_seconds = (time.perf_counter() - start) / len(test)
    model = genzoo.load(run)
    pad, eos = model.pad, next(iter(model.eos_ids))
    sources = [[t for t in row if t != pad] for row in test.cond.tolist()]
    references = [model.decode_tokens(row[: row.index(eos)]) for row in test.x.tolist()]
    answers, beam_seconds = beam_answers(model, sources, num_beams)
    return {"task": task, "steps": steps, "train_steps_per_s": rates[-1] if rates else None,
            "train_seconds": round(train_seconds, 1), "best_step": model.provenance["step"],
            "examples": len(test), "greedy": {**greedy, "seconds_per_answer_with_eval": greedy_seconds},
            "beam": {"num_beams": num_beams,
                     "exact_match_accuracy": sum(a == r for a, r in zip(answers, references, strict=True)) / len(test),
                     "char_error_rate": char_error_rate(answers, references), "seconds_per_answer": beam_seconds}}


def _only(data: Any, test: Any) -> Any:
    """The dataset with its test split cut to ``test`` (``genzoo eval`` scores the test split)."""
    from dataclasses import replace

    return replace(data, test=test)


def markdown(results: list[dict[str, Any]]) -> str:
    head = ["task", "steps", "train steps/s", "best @ step", "greedy exact ↑", "greedy CER ↓", "beam exact ↑",
            "beam CER ↓", "cond. NLL/token ↓"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        g, b = r["greedy"], r["beam"]
        cells = [f"task:{r['task']}", str(r["steps"]), f"{r['train_steps_per_s'] or 0:.2f}", str(r["best_step"]),
                 f"{g['exact_match_accuracy']:.3f}", f"{g['char_error_rate']:.4f}",
                 f"{b['exact_match_accuracy']:.3f} ({b['num_beams']} beams)", f"{b['char_error_rate']:.4f}",
                 f"{g['conditional_nll_per_token']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=TASKS, choices=TASKS, help="built-in tasks to train on")
    parser.add_argument("--steps", type=int, default=800, help="training steps per task (default: seq2seq's "
                                                                "quick_steps)")
    parser.add_argument("--num-beams", type=int, default=4, help="beams of the beam-search decoding")
    parser.add_argument("--examples", type=int, default=500, help="test pairs to decode (at most 500)")
    parser.add_argument("--name", default="seq2seq_tasks", help="result file bench/results/<name>.json")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run directories here")
    args = parser.parse_args()
    protocol = {"model": "seq2seq (defaults)", "seed": 0, "steps": args.steps, "num_beams": args.num_beams,
                "examples": args.examples, "decoding": "greedy via genzoo eval task metrics; beam search with "
                "length-normalised log-probability, answer by answer"}
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:  # written after each task, so a long run keeps what it has measured
            results.append(measure(task, args.steps, args.num_beams, args.examples, args.keep or Path(tmp)))
            path = write_result(args.name, {"protocol": protocol, "results": results})
    print(markdown(results))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
