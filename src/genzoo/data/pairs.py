"""Input -> target pairs for sequence-to-sequence models: ``pairs:FILE`` and the built-in ``task:NAME`` languages.

* ``pairs:FILE.jsonl#input=src,target=tgt``: one JSON object per line; ``input``/``target`` name its source and
  target fields (defaults ``input`` and ``target``). ``pairs:FILE.tsv`` (any other suffix too): one
  ``source<TAB>target`` pair per line. Pairs are shuffled with the fixed split seed and cut 80/10/10.
* ``task:reverse``, ``task:sort``, ``task:add``: small algorithmic languages with exact answers, generated from a
  fixed seed (:data:`TASK_SEED`). ``reverse`` and ``sort`` map a string of 1-8 lowercase letters to the string
  reversed or sorted (``"abc" -> "cba"``, ``"cab" -> "abc"``); ``add`` maps ``"12+345"`` to ``"357"`` (each
  operand has 1-3 digits, their count uniform). Every task has 8,000 training, 500 validation and 500 test pairs
  with distinct inputs, so the splits never share an input.

One example is a pair of token id sequences: ``Batch.x`` holds the target followed by the end-of-sequence token
``</s>`` and padded with ``<pad>`` to ``T`` = the longest target + 1 (``DataInfo.shape == (T,)``, kind ``tokens``);
``Batch.cond`` holds the source padded with ``<pad>`` to ``S`` = the longest source. ``DataInfo.extra["pairs"]``
records ``source_len`` (S) and the ``eos``/``pad`` ids. Both sides share one tokenizer (the ``tokenizer`` option,
as for ``text:`` data: ``char`` by default over every character of the pairs, ``bpe``, ``byte``, ``hf:NAME`` or a
path); ``<pad>`` and ``</s>`` are added to it unless it has them (a T5 tokenizer does).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import SPLITS, TensorDataset, split_tensors
from genzoo.data.specs import DataOptions, register_loader
from genzoo.errors import DataError
from genzoo.io import json_line_strings
from genzoo.tokenizer import Tokenizer, build_tokenizer

PAD, EOS = "<pad>", "</s>"
#: seed of the built-in tasks: the same pairs and splits on every machine
TASK_SEED = 20261202
TASK_SIZES = {"train": 8000, "val": 500, "test": 500}
LETTERS = "abcdefghijklmnopqrstuvwxyz"

Pair = tuple[str, str]


class PairDataset(TensorDataset):
    """Pairs in memory: targets in ``x``, sources in ``cond``, per split."""


# ----- reading ------------------------------------------------------------------------------------------------------
def read_pairs(path: Path, options: DataOptions) -> list[Pair]:
    """(source, target) strings of a ``.jsonl`` file (fields ``options.input``/``options.target``) or of a
    tab-separated file (one ``source<TAB>target`` per line); blank lines are skipped."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text (byte offset {err.start})") from None
    read = _json_pair if path.suffix == ".jsonl" else _tsv_pair
    pairs = [read(line.removesuffix("\r"), f"{path}:{number}", options)
             for number, line in enumerate(lines, 1) if line.strip()]
    if len(pairs) < 3:
        raise DataError(f"{path}: {len(pairs)} pairs; need at least 3 for train/validation/test splits")
    return pairs


def _json_pair(line: str, where: str, options: DataOptions) -> Pair:
    source, target = json_line_strings(line, where, (options.input, options.target),
                                       " (name the fields with #input=FIELD,target=FIELD)")
    return source, target


def _tsv_pair(line: str, where: str, options: DataOptions) -> Pair:
    parts = line.split("\t")
    if len(parts) != 2:
        raise DataError(f"{where}: expected 'source<TAB>target', found {len(parts) - 1} tabs")
    return parts[0], parts[1]


# ----- built-in tasks -----------------------------------------------------------------------------------------------
def _letters(rng: random.Random, lengths: tuple[int, int], alphabet: str) -> str:
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(*lengths)))


def _number(rng: random.Random, max_digits: int) -> int:
    digits = rng.randint(1, max_digits)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def task_input(name: str, rng: random.Random, lengths: tuple[int, int] = (1, 8), alphabet: str = LETTERS) -> str:
    """One random input of task ``name``: letters of ``lengths`` for reverse/sort, ``"a+b"`` for add."""
    if name == "add":
        return f"{_number(rng, 3)}+{_number(rng, 3)}"
    return _letters(rng, lengths, alphabet)


def task_answer(name: str, source: str) -> str:
    """The exact answer of task ``name`` for ``source``."""
    if name == "reverse":
        return source[::-1]
    if name == "sort":
        return "".join(sorted(source))
    left, right = source.split("+")
    return str(int(left) + int(right))


TASKS = ("reverse", "sort", "add")


def task_pairs(name: str, sizes: dict[str, int] = TASK_SIZES, seed: int = TASK_SEED, lengths: tuple[int, int] = (1, 8),
               alphabet: str = LETTERS) -> dict[str, list[Pair]]:
    """Pairs of task ``name`` per split: distinct inputs drawn in order from one seeded generator, the first
    ``sizes["train"]`` for training, then validation, then test (so no input is in two splits)."""
    if name not in TASKS:
        raise DataError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    rng, seen, inputs = random.Random(seed), set(), []
    total = sum(sizes[s] for s in SPLITS)
    for _ in range(100 * total):
        source = task_input(name, rng, lengths, alphabet)
        if source not in seen:
            seen.add(source)
            inputs.append(source)
        if len(inputs) == total:
            break
    else:
        raise DataError(f"task '{name}' has fewer than {total} distinct inputs of lengths {lengths}")
    out, start = {}, 0
    for split in SPLITS:
        out[split] = [(s, task_answer(name, s)) for s in inputs[start : start + sizes[split]]]
        start += sizes[split]
    return out


# ----- dataset ------------------------------------------------------------------------------------------------------
def with_specials(tok: Tokenizer) -> Tokenizer:
    """The tokenizer with ``<pad>`` and ``</s>`` (added as special tokens unless it has them)."""
    vocab = tok.backend.get_vocab()
    missing = [t for t in (PAD, EOS) if t not in vocab]
    if not missing:
        return tok
    tok.backend.add_special_tokens(missing)
    return Tokenizer(tok.backend, tok.source)


def _padded(rows: list[list[int]], length: int, pad: int) -> Tensor:
    out = torch.full((len(rows), length), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    return out


def pair_dataset(splits: dict[str, list[Pair]], options: DataOptions, source: str,
                 task: str | None = None) -> PairDataset:
    """Tokenise (source, target) pairs per split with one shared tokenizer and pad them to common lengths."""
    texts = [text for split in SPLITS for pair in splits[split] for text in pair]
    train_text = "\n".join(text for pair in splits["train"] for text in pair)
    tok = with_specials(build_tokenizer(options.tokenizer, train_text, "".join(texts), options.vocab_size))
    vocab = tok.backend.get_vocab()
    pad, eos = vocab[PAD], vocab[EOS]
    encoded = {split: [(tok.encode(s), [*tok.encode(t), eos]) for s, t in pairs] for split, pairs in splits.items()}
    source_len = max(len(s) for rows in encoded.values() for s, _ in rows)
    target_len = max(len(t) for rows in encoded.values() for _, t in rows)
    batches = {split: Batch(_padded([t for _, t in rows], target_len, pad),
                            cond=_padded([s for s, _ in rows], source_len, pad))
               for split, rows in encoded.items()}
    used = {"tokenizer": tok.source or options.tokenizer, "vocab_size": options.vocab_size,
            "input": options.input, "target": options.target}
    extra: dict[str, Any] = {"pairs": {"source_len": source_len, "eos": eos, "pad": pad, "task": task},
                             "tokenizer": tok.metadata(), "options": used,
                             "examples": {split: len(rows) for split, rows in encoded.items()}}
    info = DataInfo(kind=DataKind.TOKENS, shape=(target_len,), levels=tok.vocab_size, extra=extra)
    return PairDataset(info, batches["train"], batches["val"], batches["test"], tokenizer=tok)


_PAIR_KEYS = ("input", "target", "tokenizer", "vocab_size")


@register_loader("pairs", "pairs:FILE.jsonl|FILE.tsv[#input=input,target=target,tokenizer=char|bpe|byte|hf:NAME|PATH]"
                          "  source -> target text pairs (JSON lines or tab-separated)", options=_PAIR_KEYS)
def load_pairs(arg: str | None, options: DataOptions) -> PairDataset:
    if not arg:
        raise DataError("pairs: needs a file, e.g. pairs:data.jsonl#input=src,target=tgt or pairs:data.tsv")
    pairs = read_pairs(Path(arg), options)
    index = split_tensors(torch.arange(len(pairs)), None, (0.8, 0.1))
    splits = {split: [pairs[i] for i in part.x.tolist()] for split, part in zip(SPLITS, index, strict=True)}
    return pair_dataset(splits, options, arg)


@register_loader("task", f"task:{'|'.join(TASKS)}  algorithmic pairs with exact answers (\"abc\"->\"cba\", sorted, "
                         "\"12+345\"->\"357\")", path_arg=False)
def load_task(arg: str | None, options: DataOptions) -> PairDataset:
    if arg not in TASKS:
        raise DataError(f"unknown task '{arg}' (known: {', '.join(TASKS)}), e.g. task:reverse")
    return pair_dataset(task_pairs(arg), options, f"task:{arg}", task=arg)
