"""Retrieval-augmented generation: retrieved chunks, numbered, become the context of any text model's prompt.

The prompt lists the k retrieved chunks as numbered passages, then the question:

    Answer from the passages; cite them as [n].
    [1] The capital of Veloria is Mirth. ...
    [2] ...
    Question: What is the capital of Veloria?
    Answer:

and the model's answer cites the passages it used by their numbers ("Mirth [1]"). The answer's citations are parsed
back ([n] markers with 1 <= n <= k; other numbers are reported as invalid) and mapped to their chunks, so a response
names the sources it rests on. Every text model works: the prompt goes through its ``generate`` (continuing models
see the prompt and write on; encoder-decoder models read it as their source); a chat request gets the same prompt
as its last user message (:func:`augment_messages`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from genzoo.contract import Capability
from genzoo.errors import GenzooError
from genzoo.retrieval.index import Hit, Index

INSTRUCTION = "Answer from the passages; cite them as [n]."
_CITATION = re.compile(r"\[(\d+)\]")


def build_prompt(question: str, passages: list[Hit] | list[str]) -> str:
    """The numbered passages (each on one line) and the question, ending in ``Answer:``."""
    lines = [INSTRUCTION]
    for number, passage in enumerate(passages, 1):
        text = passage if isinstance(passage, str) else passage.text
        lines.append(f"[{number}] {' '.join(text.split())}")
    lines += [f"Question: {' '.join(question.split())}", "Answer:"]
    return "\n".join(lines)


def parse_citations(text: str, passages: int) -> tuple[list[int], list[int]]:
    """(valid, invalid) citation numbers in ``text``, each once, in order of first mention; valid means 1..passages."""
    numbers = list(dict.fromkeys(int(m) for m in _CITATION.findall(text)))
    return [n for n in numbers if 1 <= n <= passages], [n for n in numbers if not 1 <= n <= passages]


def strip_citations(text: str) -> str:
    """The answer without its ``[n]`` markers."""
    return " ".join(_CITATION.sub(" ", text).split())


@dataclass
class RagAnswer:
    """A grounded answer: the model's text, the passages it was shown, and which of them it cites."""

    text: str
    prompt: str
    passages: list[Hit]
    cited: list[int] = field(default_factory=list)
    invalid_citations: list[int] = field(default_factory=list)

    @property
    def answer(self) -> str:
        return strip_citations(self.text)

    @property
    def cited_passages(self) -> list[Hit]:
        return [self.passages[n - 1] for n in self.cited]

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "answer": self.answer, "cited": self.cited,
                "invalid_citations": self.invalid_citations,
                "passages": [{"number": n, **hit.to_dict()} for n, hit in enumerate(self.passages, 1)]}


def cite(text: str, prompt: str, passages: list[Hit]) -> RagAnswer:
    """Wrap a generated ``text`` with its parsed citations."""
    valid, invalid = parse_citations(text, len(passages))
    return RagAnswer(text, prompt, passages, valid, invalid)


def rag_generate(model: Any, index: Index, question: str, k: int = 3, mode: str = "hybrid",
                 **options: Any) -> RagAnswer:
    """Answer ``question`` with ``model`` (any text model) from the ``k`` chunks ``index`` retrieves.

    ``options`` are the model's generation options; by default the answer ends at the first newline
    (``stop=("\\n",)``) and has at most 64 new tokens.
    """
    model.require(Capability.GENERATE_TEXT)
    options = {"stop": ("\n",), "max_new_tokens": 64} | {key: v for key, v in options.items() if v is not None}
    if options.get("num_return_sequences", 1) != 1:
        raise GenzooError("a retrieval-augmented answer is one completion: leave num_return_sequences at 1")
    passages = index.search(question, k=k, mode=mode)
    prompt = build_prompt(question, passages)
    return cite(model.generate(prompt, **options).strip(), prompt, passages)


def augment_messages(messages: list[dict[str, Any]], index: Index, k: int = 3,
                     mode: str = "hybrid") -> tuple[list[dict[str, Any]], list[Hit]]:
    """Chat messages whose last user message is replaced by the RAG prompt of its question, and the passages.

    The server's chat endpoint calls this for a request with ``"rag": {"index": NAME, "k": K}``, generates from the
    returned messages, and reports ``cite(answer, prompt, passages).to_dict()`` with the response.
    """
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=None)
    if last is None or not isinstance(messages[last].get("content"), str):
        raise GenzooError("rag needs a user message with text content to retrieve for")
    passages = index.search(messages[last]["content"], k=k, mode=mode)
    prompt = build_prompt(messages[last]["content"], passages)
    return [*messages[:last], {**messages[last], "content": prompt}, *messages[last + 1:]], passages
