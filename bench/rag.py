"""Retrieval-augmented generation on fictional facts: retrieval recall@k, answer exact match with and without
retrieval, index build and query throughput.

Protocol. A test world of fictional entities (seed 7, names disjoint from the `facts:` training world, so no model
has seen them) is written twice: as one document per entity (the layout the reader was trained on), and as
"gazetteers" of 10 entities per file, whose 400-character chunks each hold about five entities. Each is indexed with
`genzoo.retrieval.build_index` (all-MiniLM-L6-v2, exact flat index, chunks 400/80, dedup 0.95). A question is
retrieved when one of the top-k chunks contains the sentence stating its answer; recall@k is given for vector, BM25
(keyword) and hybrid (RRF, k=60) search.

Exact match: a reader trained on `facts:` (RAG prompts over another world -> "answer [n]"; pass its run with
--reader, e.g. one from `genzoo train seq2seq --data facts:`) answers each question greedily (a) without retrieval
(no passages), (b) with the top --rag-k hybrid chunks (`genzoo.retrieval.rag_generate`), (c) with the gold chunk
alone (an upper bound for the reader). An answer is exact when, with its citation markers removed, it equals the
answer string; it cites correctly when a cited passage contains the answer's sentence.

    python bench/rag.py --reader /tmp/rag-runs/reader [--entities 300] [--questions 90] [--rag-k 2]
    python bench/rag.py --only reader --reader RUN   # re-measure the reader, keep the retrieval numbers
    python bench/rag.py --smoke        # seconds: 30 entities, 20 questions, no reader unless given
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, write_result

TEST_SEED = 7
GAZETTEER = 10  # entities per gazetteer file
KS = (1, 5, 10)
MODES = ("vector", "keyword", "hybrid")


def recall_table(index: Any, world: Any, ks: tuple[int, ...]) -> dict[str, Any]:
    """recall@k per mode, and the query throughput of each mode (questions embedded in one batch)."""
    questions = [qa.question for qa in world.questions]
    table: dict[str, Any] = {}
    for mode in MODES:
        started = time.perf_counter()
        hits = index.search_batch(questions, k=max(ks), mode=mode)
        seconds = time.perf_counter() - started
        table[mode] = {f"recall@{k}": sum(any(qa.fact in h.text for h in found[:k])
                                          for qa, found in zip(world.questions, hits, strict=True)) / len(questions)
                       for k in ks}
        table[mode]["queries_per_s_batched"] = len(questions) / seconds
    started = time.perf_counter()
    for question in questions[:50]:
        index.search(question, k=5, mode="hybrid")
    table["hybrid"]["queries_per_s_one_by_one"] = min(50, len(questions)) / (time.perf_counter() - started)
    return table


def exact_match(reader: str, index: Any, world: Any, n: int, k: int) -> dict[str, Any]:
    import genzoo
    from genzoo.retrieval import build_prompt, cite, rag_generate

    model = genzoo.load(reader)
    counts = {"without_retrieval": 0, "with_retrieval": 0, "gold_passage": 0, "cites_correctly": 0}
    examples = []
    started = time.perf_counter()
    for qa in world.questions[:n]:
        closed = model.generate(build_prompt(qa.question, []), temperature=0, stop=("\n",), max_new_tokens=32)
        rag = rag_generate(model, index, qa.question, k=k, mode="hybrid", temperature=0)
        gold_prompt = build_prompt(qa.question, [world.documents[qa.source]])
        gold = cite(model.generate(gold_prompt, temperature=0, stop=("\n",), max_new_tokens=32), gold_prompt, [])
        counts["without_retrieval"] += cite(closed, "", []).answer == qa.answer
        counts["with_retrieval"] += rag.answer == qa.answer
        counts["gold_passage"] += gold.answer == qa.answer
        counts["cites_correctly"] += any(qa.fact in hit.text for hit in rag.cited_passages)
        if len(examples) < 5:
            examples.append({"question": qa.question, "answer": qa.answer, "without": closed.strip(),
                             "with": rag.text, "cited_sources": [h.source for h in rag.cited_passages]})
    seconds = time.perf_counter() - started
    return {"reader": str(reader), "questions": n, "rag_k": k,
            **{f"exact_match_{key}" if key != "cites_correctly" else key: value / n for key, value in counts.items()},
            "seconds": seconds, "examples": examples}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entities", type=int, default=300, help="entities in the test world (2 questions each)")
    parser.add_argument("--questions", type=int, default=90, help="questions the reader answers (exact match)")
    parser.add_argument("--only", choices=["all", "retrieval", "reader"], default="all",
                        help="reader: only the exact-match part, merged into the existing results file")
    parser.add_argument("--reader", default=None, help="run directory of a reader trained on facts: (skip if none)")
    parser.add_argument("--rag-k", type=int, default=2, help="chunks the reader is shown")
    parser.add_argument("--chunk-size", type=int, default=400)
    parser.add_argument("--overlap", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the encoder and the reader)")
    parser.add_argument("--smoke", action="store_true", help="tiny run: 30 entities, 20 questions")
    parser.add_argument("--name", default="rag", help="results file bench/results/NAME.json")
    args = parser.parse_args()

    import torch

    from genzoo.data.facts import FACTS_ENTITIES, FACTS_SEED
    from genzoo.embed import SentenceEncoder
    from genzoo.retrieval import Index, build_index
    from genzoo.retrieval.facts import fact_world

    torch.set_num_threads(args.threads)
    entities, questions = (30, 20) if args.smoke else (args.entities, args.questions)
    world = fact_world(TEST_SEED, entities, avoid=fact_world(FACTS_SEED, FACTS_ENTITIES).names)
    encoder = SentenceEncoder()
    load_started = time.perf_counter()
    encoder.encode(["load"])
    result: dict[str, Any] = {"protocol": {"test_seed": TEST_SEED, "entities": entities,
                                           "questions": len(world.questions), "chunk_size": args.chunk_size,
                                           "overlap": args.overlap, "encoder": encoder.name, "index": "flat",
                                           "threads": args.threads},
                              "encoder_load_seconds": time.perf_counter() - load_started, "corpora": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        world.write(folder / "per-entity")
        sources = list(world.documents)
        (folder / "gazetteer").mkdir()
        for start in range(0, len(sources), GAZETTEER):
            text = " ".join(world.documents[s] for s in sources[start : start + GAZETTEER])
            (folder / "gazetteer" / f"gazetteer-{start // GAZETTEER:03d}.txt").write_text(text + "\n")
        indexes = {}
        for corpus in ("per-entity", "gazetteer") if args.only != "reader" else ("per-entity",):
            report = build_index(folder / corpus, folder / f"{corpus}.index", chunk_size=args.chunk_size,
                                 overlap=args.overlap, encoder=encoder)
            indexes[corpus] = Index.load(folder / f"{corpus}.index", encoder=encoder)
            if args.only == "reader":
                continue
            result["corpora"][corpus] = {"build": {"documents": report.documents, "chunks": report.chunks,
                                                   "duplicates_removed": report.duplicates,
                                                   "seconds": report.total_seconds,
                                                   "embed_seconds": report.embed_seconds,
                                                   "chunks_per_s": report.chunks_per_second},
                                         "recall": recall_table(indexes[corpus], world, KS)}
            print(corpus, result["corpora"][corpus], flush=True)
        if args.only == "reader":
            result = {**json.loads((RESULTS / f"{args.name}.json").read_text()), "exact_match": None}
            result.pop("machine")
        if args.reader and args.only != "retrieval":
            result["exact_match"] = exact_match(args.reader, indexes["per-entity"], world, questions, args.rag_k)
            print(result["exact_match"], flush=True)
    print(markdown(result))
    print("->", write_result(args.name, result))


def markdown(result: dict[str, Any]) -> str:
    lines = ["| corpus | mode | " + " | ".join(f"recall@{k}" for k in KS) + " | queries/s (batched) |",
             "|---|---|" + "---|" * (len(KS) + 1)]
    for corpus, numbers in result["corpora"].items():
        for mode in MODES:
            row = numbers["recall"][mode]
            lines.append(f"| {corpus} | {mode} | " + " | ".join(f"{row[f'recall@{k}']:.3f}" for k in KS)
                         + f" | {row['queries_per_s_batched']:.1f} |")
    if result.get("exact_match"):
        em = result["exact_match"]
        lines += ["", "| reader | without retrieval | with retrieval (hybrid, k={rag_k}) | gold passage | "
                  "cites correctly |".format(**em), "|---|---|---|---|---|",
                  f"| {Path(em['reader']).name} | {em['exact_match_without_retrieval']:.3f} | "
                  f"{em['exact_match_with_retrieval']:.3f} | {em['exact_match_gold_passage']:.3f} | "
                  f"{em['cites_correctly']:.3f} |"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
