"""`genzoo index build DOCS --out INDEX` and `genzoo index query INDEX "question"`: a hybrid retrieval index."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import typer
from rich.table import Table

from genzoo.cli.app import app, console
from genzoo.io import dumps_json
from genzoo.retrieval import Index, RagAnswer, build_index, rag_generate

index_app = typer.Typer(help="Build and query a retrieval index (FAISS vectors + SQLite BM25) over documents.",
                        no_args_is_help=True)
app.add_typer(index_app, name="index")


@index_app.command("build")
def build(
    docs: Path = typer.Argument(..., help="Folder of .txt/.md documents and .jsonl files (one 'text' per line)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (replaced if it is an index)."),
    chunk_size: int = typer.Option(400, "--chunk-size", min=1, help="Characters per chunk (cut at a space)."),
    overlap: int = typer.Option(80, "--overlap", min=0, help="Characters consecutive chunks share."),
    dedup: float = typer.Option(0.95, "--dedup-threshold", min=-1.0, max=1.0,
                                help="Drop a chunk whose cosine similarity to a kept chunk is at least this."),
    no_dedup: bool = typer.Option(False, "--no-dedup", help="Keep near-duplicate chunks."),
    kind: Literal["flat", "hnsw", "ivf"] = typer.Option("flat", "--index", help="flat: exact search; hnsw, ivf: "
                                                        "approximate, for large corpora."),
    field: str = typer.Option("text", "--field", help="The text field of .jsonl documents."),
) -> None:
    """Chunk, embed (all-MiniLM-L6-v2), de-duplicate and index a folder of documents."""
    report = build_index(docs, out, chunk_size=chunk_size, overlap=overlap, dedup_threshold=None if no_dedup else dedup,
                         kind=kind, field=field)
    console.print(f"{report.documents} documents -> {report.chunks} chunks, {report.duplicates} near-duplicates "
                  f"removed, {report.kept} indexed ({kind}) -> [bold]{out}[/] in {report.total_seconds:.1f} s "
                  f"({report.chunks_per_second:.1f} chunks/s)")


@index_app.command("query")
def query(
    index: Path = typer.Argument(..., help="Index folder (genzoo index build)."),
    question: str = typer.Argument(..., help="What to search for."),
    k: int = typer.Option(5, "-k", min=1, help="Chunks to return."),
    mode: Literal["hybrid", "vector", "keyword"] = typer.Option("hybrid", "--mode", help="hybrid: reciprocal rank "
                                                                "fusion (k=60) of vector and BM25 rankings."),
    as_json: bool = typer.Option(False, "--json", help="Print the hits as JSON."),
) -> None:
    """Print the k best chunks for a question, with source, offsets and scores."""
    hits = Index.load(index).search(question, k=k, mode=mode)
    if as_json:
        typer.echo(dumps_json([hit.to_dict() for hit in hits]))
        return
    grid = Table("#", "score", "vector", "bm25", "source", "text", title=f"{mode} search: {question}")
    for rank, hit in enumerate(hits, 1):
        grid.add_row(str(rank), f"{hit.score:.4f}", str(hit.vector_rank or "-"), str(hit.keyword_rank or "-"),
                     f"{hit.source}:{hit.start}-{hit.end}", " ".join(hit.text.split()))
    console.print(grid)


def rag_answer(model: Any, index: Path, question: str, *, k: int, **options: Any) -> RagAnswer:
    """`genzoo sample RUN --rag INDEX --prompt QUESTION`: print the cited answer and the passages behind it."""
    answer = rag_generate(model, Index.load(index), question, k=k, **options)
    typer.echo(answer.text)
    for number, hit in enumerate(answer.passages, 1):
        mark = "cited" if number in answer.cited else "     "
        console.print(f"  [{number}] {mark} {hit.source}:{hit.start}-{hit.end}  {' '.join(hit.text.split())[:100]}",
                      highlight=False, markup=False)
    if answer.invalid_citations:
        console.print(f"  (cites passages that were not retrieved: {answer.invalid_citations})", highlight=False)
    return answer
