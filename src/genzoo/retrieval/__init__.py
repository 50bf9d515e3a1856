"""Retrieval: a hybrid (vector + BM25) index over documents, and retrieval-augmented generation with citations."""

from __future__ import annotations

from genzoo.retrieval.chunking import Chunk, chunk_document, read_documents
from genzoo.retrieval.index import BuildReport, Hit, Index, build_index, reciprocal_rank_fusion, write_index
from genzoo.retrieval.rag import RagAnswer, augment_messages, build_prompt, cite, parse_citations, rag_generate

__all__ = ["BuildReport", "Chunk", "Hit", "Index", "RagAnswer", "augment_messages", "build_index", "build_prompt",
           "chunk_document", "cite", "parse_citations", "rag_generate", "read_documents", "reciprocal_rank_fusion",
           "write_index"]
