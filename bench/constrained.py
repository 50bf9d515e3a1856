"""Constrained decoding: validity with and without constraints, and the per-token cost of masking.

Protocol.
1. Quality: train `gpt` (its defaults, seed 0) on `grammar:arith#context=32` (character tokens) for --steps steps
   (steps, not time, so a loaded machine gives the same model). Draw --samples completions of the prompt "\\n" (a
   line start) at temperature 1, seed 0, ending at the next newline (--max-new-tokens at most), without and with
   `Grammar.builtin("arith")`; report the share that parse under the grammar (our recogniser and lark's LALR parser
   agree on every sample; lark's verdict is reported), the share that ran out of tokens, and the model's mean NLL
   per token of the produced strings (each scored as "\\n" + text + "\\n": the end counts), next to the held-out
   NLL of the test split.
2. Overhead: for a character vocabulary and byte-level BPE vocabularies of --vocab sizes (trained on
   --corpus, tinyshakespeare by default), walk the tokens of fixed valid texts (arith expressions under the arith
   grammar; JSON records under a JSON Schema, whose strings allow most tokens: the hard case) and time, per token,
   computing the mask and advancing the matcher: the reference engine on states it has not seen (cold) and again
   (warm: memoised), and llguidance when installed. Compared with one unconstrained decoding step of a default
   `gpt` over the same vocabulary (batch 1, KV cache).
Writes bench/results/<name>.json and prints markdown tables.

    python bench/constrained.py [--steps 300] [--samples 64] [--vocab 1000 8000 32000] [--name constrained_arith]
    python bench/constrained.py --steps 5 --samples 4 --vocab 300 --texts 1 --name constrained_smoke   # seconds
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
import lark
import torch

import genzoo
from common import write_result
from genzoo.constrain import Grammar, JsonSchema, compile_constraint
from genzoo.constrain.fast import unavailable
from genzoo.data.grammar import corpus, pcfg
from genzoo.tokenizer import Tokenizer, bpe_tokenizer, char_tokenizer

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "city"],
          "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 130},
                         "city": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}}}
RECORDS = ['{"name":"Juliet Capulet","age":13,"city":"Verona","tags":["lover","daughter of the house"]}',
           '{"name":"King Lear","age":80,"city":"Britain","tags":["father","madness upon the heath"]}',
           '{"name":"Prospero","age":55,"city":"Milan","tags":["magician","duke"]}']


# ----- quality ------------------------------------------------------------------------------------------------------
def completion_nll(model: Any, text: str) -> tuple[float, int]:
    """Nats of text + "\\n" after the prompt "\\n" (the completion and its end; read token by token with the cache,
    so texts longer than the context slide its window), and the token count."""
    ids = model.prompt_ids("\n")
    targets = model.tokenizer.encode(text + "\n")
    nats = 0.0
    with torch.no_grad():
        logits, state = model.prefill(torch.tensor([ids]))
        for token in targets:
            nats -= float(logits[0].float().log_softmax(-1)[token])
            logits, state = model.extend(torch.tensor([token]), state)
    return nats, len(targets)


def quality(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    start = time.perf_counter()
    run = genzoo.train("gpt", "grammar:arith#context=32", steps=args.steps, out=folder / "gpt", seed=0,
                       progress=False)
    seconds = time.perf_counter() - start
    model = genzoo.load(run).eval()
    data = genzoo.load_dataset("grammar:arith#context=32")
    with torch.no_grad():
        test = torch.cat([model.token_nll(b.x) for b in data.batches("test", 64)]).mean().item()
    parser, grammar = lark.Lark(pcfg("arith").lark(), parser="lalr"), Grammar.builtin("arith")
    rows = {}
    for label, constraint in (("unconstrained", None), ("grammar", grammar)):
        extra = {"constraint": constraint, "engine": "auto"} if constraint is not None else {}
        t0 = time.perf_counter()
        outs = model.generate("\n", stop=["\n"], max_new_tokens=args.max_new_tokens, seed=0,
                              num_return_sequences=args.samples, return_details=True, **extra)
        gen_seconds = time.perf_counter() - t0
        valid = []
        for out in outs:
            try:
                parser.parse(out.text)
                valid.append(True)
            except lark.exceptions.LarkError:
                valid.append(False)
            assert grammar.matches(out.text) == valid[-1], out.text  # our recogniser agrees with lark
        nll = [completion_nll(model, o.text) for o in outs]
        rows[label] = {"grammatical": sum(valid) / len(valid),
                       "ran_out_of_tokens": sum(o.finish_reason == "length" for o in outs) / len(outs),
                       "nll_nats_per_token": sum(n for n, _ in nll) / sum(k for _, k in nll),
                       "mean_chars": statistics.mean(len(o.text) for o in outs),
                       "tokens_per_s": sum(o.tokens for o in outs) / gen_seconds,
                       "examples": [o.text for o in outs[:5]]}
    # steps per second by the wall clock, setup included
    return {"steps": args.steps, "train_seconds": seconds, "steps_per_s": args.steps / seconds,
            "test_nll_nats_per_token": test, "samples": args.samples, "max_new_tokens": args.max_new_tokens,
            "rows": rows}


# ----- overhead -----------------------------------------------------------------------------------------------------
def per_token_us(compiled: Any, ids: list[int]) -> float:
    """Mean microseconds to compute the mask and advance, per token, along ``ids``."""
    matcher = compiled.matcher()
    start = time.perf_counter()
    for token in ids:
        matcher.allowed()
        matcher.advance(token)
    return (time.perf_counter() - start) / len(ids) * 1e6


def decode_step_us(tokenizer: Tokenizer, repeats: int = 50) -> float:
    """One unconstrained decoding step (KV cache, batch 1) of a default gpt over this vocabulary, untrained."""
    info = genzoo.DataInfo(kind=genzoo.DataKind.TOKENS, shape=(64,), levels=tokenizer.vocab_size)
    model = genzoo.create("gpt", info).eval()
    with torch.no_grad():
        logits, state = model.prefill(torch.tensor([[model.bos, 1, 2, 3]]))
        token = logits.argmax(-1)
        model.extend(token, state)  # warm up
        start = time.perf_counter()
        for _ in range(repeats):
            logits, state = model.extend(token, state)
            token = logits.argmax(-1)
        return (time.perf_counter() - start) / repeats * 1e6


def overhead(args: argparse.Namespace) -> list[dict[str, Any]]:
    shakespeare = Path(args.corpus).read_text(encoding="utf-8")
    arith_text = corpus("arith", 20_000)
    tokenizers = {"char": char_tokenizer(arith_text + "".join(RECORDS))}
    for size in args.vocab:
        tokenizers[f"bpe-{size}"] = bpe_tokenizer(shakespeare + "\n" + arith_text, size)
    arith_lines = arith_text.split("\n")[: args.texts * 4]
    cases = {"arith-grammar": (Grammar.builtin("arith"), arith_lines),
             "json-schema": (JsonSchema(SCHEMA), RECORDS[: args.texts])}
    rows = []
    for tok_name, tok in tokenizers.items():
        step = decode_step_us(tok)
        for case, (constraint, texts) in cases.items():
            ids = [tok.encode(t) for t in texts]
            row: dict[str, Any] = {"vocabulary": tok_name, "vocab_size": tok.vocab_size, "constraint": case,
                                   "tokens": sum(map(len, ids)), "gpt_step_us": step}
            constraint.__dict__.pop("_compiled", None)  # cold: no memoised masks from an earlier vocabulary
            t0 = time.perf_counter()
            ref = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "reference")
            row["reference_compile_ms"] = (time.perf_counter() - t0) * 1e3
            row["reference_cold_us"] = statistics.mean(per_token_us(ref, i) for i in ids)
            row["reference_warm_us"] = statistics.mean(per_token_us(ref, i) for i in ids)
            if unavailable(constraint, tok, ()) is None:
                t0 = time.perf_counter()
                fast = compile_constraint(constraint, tok, tok.vocab_size, frozenset(), (), "fast")
                row["fast_compile_ms"] = (time.perf_counter() - t0) * 1e3
                per_token_us(fast, ids[0])  # warm-up (llguidance builds its token trie lazily)
                row["fast_us"] = statistics.mean(per_token_us(fast, i) for i in ids)
            rows.append(row)
            print(row, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of gpt on grammar:arith")
    parser.add_argument("--samples", type=int, default=64, help="completions drawn with and without the grammar")
    parser.add_argument("--max-new-tokens", type=int, default=48, help="token budget of one completion")
    parser.add_argument("--vocab", type=int, nargs="*", default=[1000, 8000, 32000], help="BPE vocabulary sizes")
    parser.add_argument("--texts", type=int, default=3, help="JSON records (and 4x arith lines) walked per case")
    parser.add_argument("--corpus", default="/work/shared/data/tinyshakespeare.txt", help="text the BPEs learn")
    parser.add_argument("--skip-quality", action="store_true", help="only the overhead tables")
    parser.add_argument("--name", default="constrained_arith", help="bench/results/<name>.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="constrained-") as tmp:
        result: dict[str, Any] = {"protocol": __doc__}
        if not args.skip_quality:
            result["quality"] = quality(args, Path(tmp))
            q = result["quality"]
            print(f"\ngpt on grammar:arith, {q['steps']} steps ({q['steps_per_s']:.1f} steps/s); test NLL "
                  f"{q['test_nll_nats_per_token']:.3f} nats/token\n")
            print("| sampling | grammatical | ran out of tokens | NLL nats/token of the samples | mean chars |")
            print("|---|---|---|---|---|")
            for label, row in q["rows"].items():
                print(f"| {label} | {row['grammatical']:.0%} | {row['ran_out_of_tokens']:.0%} | "
                      f"{row['nll_nats_per_token']:.3f} | {row['mean_chars']:.1f} |")
        result["overhead"] = overhead(args)
    print("\n| vocabulary | constraint | gpt step us | reference cold us | reference warm us | fast us |")
    print("|---|---|---|---|---|---|")
    for r in result["overhead"]:
        fast = f"{r['fast_us']:.0f}" if "fast_us" in r else "-"
        print(f"| {r['vocabulary']} ({r['vocab_size']}) | {r['constraint']} | {r['gpt_step_us']:.0f} | "
              f"{r['reference_cold_us']:.0f} | {r['reference_warm_us']:.0f} | {fast} |")
    print(f"\n-> {write_result(args.name, result)}")


if __name__ == "__main__":
    main()
