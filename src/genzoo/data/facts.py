"""``facts:``: reading comprehension over fictional facts, the training data of a retrieval-augmented reader.

Each example is a pair: the source is a RAG prompt (numbered passages, then the question; see
:mod:`genzoo.retrieval.rag`), the target the answer copied from the passage that states it, with that passage's
number (``"Mirth [2]"``). The facts are about fictional entities (:mod:`genzoo.retrieval.facts`), so nothing can be
learnt by heart: a model trained here learns to find and copy, and answers questions about entities it has never
seen when an index retrieves their documents (``genzoo sample RUN --rag INDEX --prompt ...``). ``facts:N`` shows 1
to N passages per question (default 2; ``facts:1`` only the one stating the answer). Generated from a fixed seed:
3,000 entities (about 6,000 questions), split by entity 80/10/10, so no entity of the test split is in training.
"""

from __future__ import annotations

from genzoo.data.base import SPLITS
from genzoo.data.pairs import Pair, PairDataset, pair_dataset
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError
from genzoo.retrieval.facts import fact_world, reader_examples

#: seed of the training world; evaluation worlds use other seeds and avoid its names
FACTS_SEED = 20261219
FACTS_ENTITIES = 3000


def facts_splits(entities: int = FACTS_ENTITIES, seed: int = FACTS_SEED,
                 passages: int = 2) -> dict[str, list[Pair]]:
    """Reader examples with 1 to ``passages`` passages, split by entity: entity i goes to validation when
    i % 10 == 8, test when 9, else train."""
    world = fact_world(seed, entities)
    examples = reader_examples(world, seed, passages=(1, passages))
    order = {source: i for i, source in enumerate(world.documents)}
    splits: dict[str, list[Pair]] = {split: [] for split in SPLITS}
    for qa, example in zip(world.questions, examples, strict=True):
        bucket = order[qa.source] % 10
        splits["val" if bucket == 8 else "test" if bucket == 9 else "train"].append(example)
    return splits


@register_loader("facts", "facts[:N]  RAG reading comprehension over fictional facts: 1 to N (default 2) numbered "
                          "passages + question -> answer [n] (pairs, for seq2seq)", options=("tokenizer",),
                 path_arg=False)
def load_facts(arg: str | None, options: DataOptions) -> PairDataset:
    if arg and not (arg.isdigit() and 1 <= int(arg) <= 9):
        raise DataError(f"facts:N takes the most passages per prompt, 1 to 9 (got '{arg}'), e.g. facts:2")
    passages = int(arg) if arg else 2
    return pair_dataset(facts_splits(passages=passages), options, f"facts:{passages}", task="facts")
