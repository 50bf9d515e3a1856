"""maskgit against gpt on tiny Shakespeare (characters) at the same budget in training steps.

Both models get the same size (``--layers``, ``--heads``, ``--width``), context (``--context``, default 256: one window
holds a whole 256-token sample), batch and number of training steps, each with its own defaults otherwise (learning
rate, warm-up and cosine schedule of the trainer), one process, trained one after the other. Measured:

* held-out likelihood: gpt's exact bits/char on the test split (``genzoo.metrics.text.text_metrics``); maskgit has
  no likelihood, only a *pseudo*-NLL (each token given all the others, ``task_metrics``): not comparable, reported
  apart;
* samples (``--samples`` sequences of ``--context`` tokens from the empty prompt, seed 0), for gpt and for maskgit at
  several decoding iterations T: bits/char under two judges -- a character trigram of the training split (fixed
  interpolation 0.6/0.3/0.1 of the trigram, bigram and unigram frequencies; chars 3.. of each sample) and the trained
  gpt (its exact log-likelihood: a judge that favours gpt's own samples) -- and the share of distinct 4-grams
  (diversity); the same numbers for real held-out windows as the reference;
* generation of one 256-token sequence: network evaluations (gpt: one per token, with the KV cache; maskgit: at most
  T) and wall time (median of ``--repeats``).

    python bench/maskgit.py [--data /work/shared/data/tinyshakespeare.txt] [--steps 600] [--context 256]

Writes bench/results/maskgit_shakespeare.json (with steps/s and the machine's load: a loaded machine slows every
time, not the step-budget numbers).
"""

from __future__ import annotations

import argparse
import itertools
import math
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import genzoo
from common import write_result
from genzoo.data import DataOptions
from genzoo.data.text import read_text, text_dataset
from genzoo.metrics.text import generation_speed, text_metrics

DEFAULT_DATA = "/work/shared/data/tinyshakespeare.txt"


class TrigramJudge:
    """p(c | a b) = 0.6 f(c | a b) + 0.3 f(c | b) + 0.1 f(c), relative frequencies of the training characters."""

    def __init__(self, ids: list[int], vocab: int) -> None:
        self.vocab = vocab
        self.uni = Counter(ids)
        self.bi = Counter(itertools.pairwise(ids))
        self.tri = Counter(zip(ids, ids[1:], ids[2:], strict=False))
        self.ctx1 = Counter(ids[:-1])
        self.ctx2 = Counter(itertools.pairwise(ids[:-1]))
        self.total = len(ids)

    def prob(self, a: int, b: int, c: int) -> float:
        tri = self.tri[a, b, c] / self.ctx2[a, b] if self.ctx2[a, b] else 0.0
        bi = self.bi[b, c] / self.ctx1[b] if self.ctx1[b] else 0.0
        uni = (self.uni[c] + 1) / (self.total + self.vocab)  # add-one: every character has some mass
        return 0.6 * tri + 0.3 * bi + 0.1 * uni

    def bits_per_char(self, rows: list[list[int]]) -> float:
        nats = [-math.log(self.prob(*row[i - 2 : i + 1])) for row in rows for i in range(2, len(row))]
        return sum(nats) / len(nats) / math.log(2)


def distinct_4grams(rows: list[list[int]]) -> float:
    grams = [tuple(row[i : i + 4]) for row in rows for i in range(len(row) - 3)]
    return len(set(grams)) / len(grams)


@torch.no_grad()
def judge_row(ids: torch.Tensor, trigram: TrigramJudge, gpt: genzoo.GenerativeModel) -> dict[str, float]:
    rows = ids.tolist()
    gpt_nats = -gpt.log_likelihood(ids).values.sum().item() / ids.numel()
    return {"trigram_bits_per_char": trigram.bits_per_char(rows), "gpt_bits_per_char": gpt_nats / math.log(2),
            "distinct_4grams": distinct_4grams(rows)}


def train(name: str, dataset: genzoo.Dataset, args: argparse.Namespace, out: Path) -> tuple[genzoo.GenerativeModel,
                                                                                             dict[str, float]]:
    size = {"layers": args.layers, "heads": args.heads, "width": args.width}
    start = time.perf_counter()
    run = genzoo.train(name, dataset, steps=args.steps, out=out / name, seed=0, overrides=size,
                       batch_size=args.batch, progress=False, eval_every=max(1, args.steps // 4),
                       sample_every=10**9, checkpoint_every=10**9, val_examples=256)
    seconds = time.perf_counter() - start
    model = genzoo.load(run, checkpoint="last").eval()
    return model, {"steps": args.steps, "train_seconds": seconds, "steps_per_s": args.steps / seconds,
                   "params": model.num_parameters()}


def timed(fn: object, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=DEFAULT_DATA, help="tiny Shakespeare text file")
    parser.add_argument("--steps", type=int, default=600, help="training steps of each model (the budget)")
    parser.add_argument("--context", type=int, default=256, help="tokens per window (and per sample)")
    parser.add_argument("--batch", type=int, default=8, help="windows per training step")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--samples", type=int, default=16, help="samples per model (and real windows) judged")
    parser.add_argument("--iterations", default="8,16,32,64", help="maskgit decoding iterations T to compare")
    parser.add_argument("--repeats", type=int, default=3, help="timings per generation speed (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--name", default="maskgit_shakespeare", help="bench/results/NAME.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = text_dataset(read_text(Path(args.data)), DataOptions(context=args.context), args.data)
    trigram = TrigramJudge(dataset.streams["train"].tolist(), dataset.info.levels)
    result: dict = {"protocol": {k: v for k, v in vars(args).items() if k not in ("name",)},
                    "note": "same size, context, batch and training steps; each model's own defaults otherwise. "
                            "maskgit's pseudo-NLL is not a likelihood and is not comparable with gpt's bits/char."}
    with tempfile.TemporaryDirectory(prefix="maskgit-bench-") as tmp:
        gpt, result["gpt"] = train("gpt", dataset, args, Path(tmp))
        print("gpt", result["gpt"], flush=True)
        maskgit, result["maskgit"] = train("maskgit", dataset, args, Path(tmp))
        print("maskgit", result["maskgit"], flush=True)

    real = next(dataset.batches("test", args.samples)).x
    result["reference_heldout"] = judge_row(real, trigram, gpt)
    held = text_metrics(gpt, dataset, "test", limit=256)
    result["gpt"]["heldout_bits_per_char"] = held["bits_per_char"]
    result["gpt"]["samples"] = judge_row(gpt.sample(args.samples, seed=0), trigram, gpt)
    speed = statistics.median(generation_speed(gpt, args.context, seed=i) for i in range(args.repeats))
    result["gpt"]["generation"] = {"tokens": args.context, "nfe": gpt.cost().nfe_per_sample,
                                   "seconds": args.context / speed, "tokens_per_s": speed}
    print("gpt", result["gpt"], flush=True)

    with torch.no_grad():
        test = next(dataset.batches("test", 256))
        task = maskgit.task_metrics(test, torch.Generator().manual_seed(0))
    result["maskgit"]["heldout_pseudo_nll_nats_per_token"] = task["pseudo_nll_nats_per_token"]
    result["maskgit"]["by_iterations"] = {}
    for steps in (int(s) for s in args.iterations.split(",")):
        seconds = timed(lambda steps=steps: maskgit.sample(1, seed=0, steps=steps), args.repeats)
        samples = maskgit.sample(args.samples, seed=0, steps=steps)
        row = {"nfe": maskgit.cost(steps=steps).nfe_per_sample, "seconds": seconds,
               "tokens_per_s": args.context / seconds, "samples": judge_row(samples, trigram, gpt)}
        result["maskgit"]["by_iterations"][str(steps)] = row
        print("maskgit T =", steps, row, flush=True)
    print(f"-> {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
