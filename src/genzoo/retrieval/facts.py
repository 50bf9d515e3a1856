"""A question-answering task whose answers exist only in its documents: facts about fictional entities.

Every name is made of random syllables ("Veloria", "Oda Fenn"), so no model can know an answer beforehand: a model
that answers must have read the document that states it. A world is drawn deterministically from a seed; two seeds
give disjoint worlds (different entities, the same kinds of sentences), which is how a reader model is trained on
one world and tested on entities it has never seen, whose facts only a retrieval index holds.

Each entity gets one short document, its fact sentences in random order. Kinds:

* a country: "The capital of Veloria is Mirth." / "Veloria pays in the golden tarn."
* a company: "Zarnak Industries was founded in 1873 by Oda Fenn."
* a person: "Ilo Bramek was born in Kesh." / "Ilo Bramek works as a glassblower."
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from genzoo.retrieval.chunking import chunk_document
from genzoo.retrieval.rag import build_prompt

_ONSETS = ["b", "br", "d", "f", "g", "k", "kr", "l", "m", "n", "p", "r", "s", "st", "t", "th", "v", "z", "zh", "w"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou", "ei"]
_CODAS = ["", "", "", "n", "r", "l", "s", "th", "k"]
_METALS = ["golden", "silver", "copper", "iron", "amber", "jade", "pearl", "salt"]
_JOBS = ["glassblower", "cartographer", "beekeeper", "clockmaker", "ferryman", "astronomer", "weaver", "brewer",
         "stonemason", "archivist", "lamplighter", "falconer"]


@dataclass(frozen=True)
class QA:
    """A question, its exact answer, the sentence that states it and the document (file name) holding that."""

    question: str
    answer: str
    fact: str
    source: str


@dataclass(frozen=True)
class FactWorld:
    """Documents (file name -> text) and the questions they answer."""

    documents: dict[str, str]
    questions: list[QA]
    names: frozenset[str]

    def write(self, directory: str | Path) -> Path:
        """Write each document as ``DIR/<name>.txt`` (the input of ``genzoo index build``)."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name, text in self.documents.items():
            (folder / name).write_text(text + "\n", encoding="utf-8")
        return folder


class _Names:
    """Fresh syllable names, never the same twice within a world."""

    def __init__(self, rng: random.Random, used: set[str]) -> None:
        self.rng, self.used = rng, used

    def word(self, syllables: tuple[int, int] = (2, 3)) -> str:
        while True:
            count = self.rng.randint(*syllables)
            parts = [self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) for _ in range(count)]
            name = ("".join(parts) + self.rng.choice(_CODAS)).capitalize()
            if name not in self.used:
                self.used.add(name)
                return name

    def person(self) -> str:
        return f"{self.word((1, 2))} {self.word()}"


def fact_world(seed: int, entities: int = 300, avoid: frozenset[str] = frozenset()) -> FactWorld:
    """``entities`` fictional entities (countries, companies, people in turn) with their documents and questions.

    Every name is unique within the world and none is in ``avoid`` (pass another world's ``names`` to get entities
    that world never mentions).
    """
    rng = random.Random(seed)
    names = _Names(rng, set(avoid))
    documents: dict[str, str] = {}
    questions: list[QA] = []
    for i in range(entities):
        kind = ("country", "company", "person")[i % 3]
        source = f"{kind}-{i:04d}.txt"
        if kind == "country":
            country, capital, metal = names.word(), names.word((1, 2)), rng.choice(_METALS)
            money = f"{metal} {names.word((1, 2)).lower()}"
            facts = [f"The capital of {country} is {capital}.", f"{country} pays in the {money}."]
            asked = [QA(f"What is the capital of {country}?", capital, facts[0], source),
                     QA(f"What currency does {country} use?", money, facts[1], source)]
        elif kind == "company":
            company, founder, year = f"{names.word()} Industries", names.person(), str(rng.randint(1600, 1999))
            facts = [f"{company} was founded in {year} by {founder}."]
            asked = [QA(f"In what year was {company} founded?", year, facts[0], source),
                     QA(f"Who founded {company}?", founder, facts[0], source)]
        else:
            person, town, job = names.person(), names.word((1, 2)), rng.choice(_JOBS)
            facts = [f"{person} was born in {town}.", f"{person} works as a {job}."]
            asked = [QA(f"Where was {person} born?", town, facts[0], source),
                     QA(f"What does {person} work as?", job, facts[1], source)]
        rng.shuffle(facts)
        documents[source] = " ".join(facts)
        questions.extend(asked)
    return FactWorld(documents, questions, frozenset(names.used - avoid))


def reader_examples(world: FactWorld, seed: int, chunk_size: int = 400, overlap: int = 80,
                    passages: tuple[int, int] = (1, 2)) -> list[tuple[str, str]]:
    """(RAG prompt, cited answer) pairs that teach a reader model to copy answers from numbered passages.

    Each question gets between ``passages[0]`` and ``passages[1]`` passages: the chunk of its document that states
    the answer, at a random position, among chunks of other documents; the target is the answer and the number of
    the passage it came from (``"Mirth [2]"``), the format :func:`~genzoo.retrieval.rag.rag_generate` parses.
    """
    rng = random.Random(seed)
    chunks = {source: chunk_document(text, source, chunk_size, overlap) for source, text in world.documents.items()}
    sources = list(chunks)
    examples = []
    for qa in world.questions:
        gold = next(c.text for c in chunks[qa.source] if qa.answer in c.text)
        count = rng.randint(*passages)
        others = [rng.choice(chunks[s]).text for s in rng.sample(sources, count) if s != qa.source][: count - 1]
        position = rng.randint(0, len(others))
        shown = [*others[:position], gold, *others[position:]]
        examples.append((build_prompt(qa.question, shown), f"{qa.answer} [{position + 1}]"))
    return examples
