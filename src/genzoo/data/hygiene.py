"""Data hygiene: exact and near-duplicate examples within a dataset and across its splits (``genzoo data check``),
their removal (``#dedup=true``) and the test-leak check ``genzoo eval`` runs.

A test example that repeats a training example inflates every metric measured on it, so each dataset can be checked
and cleaned. What an example is, and when two are *near* duplicates, depends on the kind of data (``near`` is a
similarity in (0, 1]; ``None`` takes the kind's default, :data:`DEFAULT_NEAR`):

* **images**: the weighted Jaccard similarity of pixel intensities in [0, 1], ``s(a, b) = sum_i min(a_i, b_i) /
  sum_i max(a_i, b_i) = (S - L1) / (S + L1)`` with ``S = sum(a) + sum(b)`` and ``L1 = |a - b|_1``: the changed ink
  relative to the ink of both images, so a small shape moved on a black background (sparse images) is not a near
  copy, while a digit with one pixel flipped is (``s = 0.95`` for a digit with 19.5 of 64 pixels' worth of ink).
  Mean pixel differences, and perceptual hashes of 8x8 images, do not separate these (docs/data-hygiene.md).
* **vectors**: ``s(a, b) = 1 - mean_i |a_i - b_i|`` with features in units of their training-split standard
  deviation. Vectors default to exact duplicates only: samples of a continuous density (the ``toy:`` sets) are
  close to each other by nature, not by copying. Near pairs of images and vectors are found exactly (no sampling,
  no misses; :func:`value_pairs`).
* **text** (``text:``, ``jsonl:``, ``grammar:``): the documents of each split (blocks separated by a blank line,
  decoded from the split's tokens); a near duplicate has a Jaccard similarity of its character 5-gram set at least
  ``near`` (candidates from MinHash LSH with :data:`NUM_PERM` permutations, ``datasketch``; then the exact Jaccard).
* **sequences** (``task:``, ``pairs:``): source and target token ids together; Jaccard of token 3-gram sets, the same
  way.
* **two domains** (``pair:``, ``--data-b``): each domain on its own (``DataReport.domain_b``).

Exact duplicates have identical bytes (values, token ids) or identical text after whitespace is collapsed.

Duplicates are resolved in the order test, validation, train: an example is *kept* unless it repeats (exactly or
nearly) an example kept before it. So held-out splits stay as whole as possible, training copies of held-out
examples go first, and what ``check`` counts as duplicates is exactly what ``#dedup=true`` removes.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from genzoo.contract import DataKind
from genzoo.data.base import SPLITS, Dataset, TensorDataset
from genzoo.data.pair import PairedDataset
from genzoo.data.text import TokenDataset
from genzoo.errors import DataError

#: default ``near`` per way of comparing examples (measured on digits, scenes, MNIST, tiny Shakespeare: see
#: docs/data-hygiene.md)
DEFAULT_NEAR = {"images": 0.95, "vectors": 1.0, "text": 0.8, "sequences": 0.8}
#: MinHash permutations (the LSH estimate of a Jaccard similarity has standard error ~ sqrt(J (1 - J) / NUM_PERM))
NUM_PERM = 128
CHAR_SHINGLE, TOKEN_SHINGLE = 5, 3
#: example pairs a report lists per finding
SHOWN = 5
#: the order in which duplicates are resolved: the first occurrence in this order is kept
KEEP_ORDER = ("test", "val", "train")
#: comparisons across splits: (later split, earlier split)
CROSS = (("val", "train"), ("test", "train"), ("test", "val"))
#: queries per block of the range search (bounds memory to ROWS x examples distances)
ROWS = 512

Progress = Callable[[str, int, int], None]


# ----- examples -----------------------------------------------------------------------------------------------------
@dataclass
class Examples:
    """Every example of a dataset in one comparable form: ``split[i]`` names the split of example ``i``; ``keys``
    are exact-duplicate keys; ``values`` (images, vectors) or ``shingles`` (text, sequences) what near duplicates are
    judged on; ``labels`` show an example (text, sequences)."""

    how: str
    split: list[str]
    keys: list[bytes]
    values: Tensor | None = None
    shingles: list[set[bytes]] | None = None
    labels: list[str] = field(default_factory=list)
    #: keys equal for near-identical examples, cheap to compute (no pairwise search); None: the exact keys
    coarse: list[bytes] | None = None

    def index_in_split(self) -> list[int]:
        """The position of each example within its split."""
        seen: dict[str, int] = {}
        out = []
        for name in self.split:
            out.append(seen.get(name, 0))
            seen[name] = out[-1] + 1
        return out


def _digest(data: bytes) -> bytes:
    return hashlib.blake2b(data, digest_size=16).digest()


def _normal(text: str) -> str:
    return " ".join(text.split())


def documents(dataset: TokenDataset, split: str) -> list[str]:
    """The documents of a text split: its decoded text cut at blank lines (empty blocks dropped)."""
    text = dataset.tokenizer.decode(dataset.streams[split].tolist())
    return [doc for doc in re.split(r"\n\s*\n", text) if doc.strip()]


def _char_shingles(text: str) -> set[bytes]:
    text = _normal(text).lower()
    if len(text) <= CHAR_SHINGLE:
        return {text.encode()}
    return {text[i : i + CHAR_SHINGLE].encode() for i in range(len(text) - CHAR_SHINGLE + 1)}


def _token_shingles(ids: Sequence[int]) -> set[bytes]:
    ids = list(ids)
    if len(ids) <= TOKEN_SHINGLE:
        return {np.asarray(ids, dtype=np.int64).tobytes()}
    return {np.asarray(ids[i : i + TOKEN_SHINGLE], dtype=np.int64).tobytes()
            for i in range(len(ids) - TOKEN_SHINGLE + 1)}


def examples_of(dataset: Dataset, shingled: bool = True) -> Examples:
    """The examples of ``dataset`` (every split, in train, val, test order) in the form its kind is compared in;
    without ``shingled``, text and sequences lack the shingles near duplicates are found by (for exact keys only)."""
    if isinstance(dataset, TokenDataset):
        docs = {split: documents(dataset, split) for split in SPLITS}
        texts = [doc for split in SPLITS for doc in docs[split]]
        return Examples("text", [s for s in SPLITS for _ in docs[s]], [_digest(_normal(t).encode()) for t in texts],
                        shingles=[_char_shingles(t) for t in texts] if shingled else None,
                        labels=[_snippet(t) for t in texts],
                        coarse=[_digest(re.sub(r"[^0-9a-z]+", "", t.lower()).encode()) for t in texts])
    if not isinstance(dataset, TensorDataset):
        raise DataError(f"data '{dataset.info.spec}' cannot be checked for duplicates: it is neither held in memory "
                        "nor text")
    parts = [dataset.split(split) for split in SPLITS]
    names = [split for split, part in zip(SPLITS, parts, strict=True) for _ in range(len(part))]
    x = torch.cat([p.x for p in parts])
    if dataset.info.kind is DataKind.TOKENS:
        cond = torch.cat([p.cond for p in parts]) if parts[0].cond is not None else x[:, :0]
        pad = (dataset.info.extra.get("pairs") or {}).get("pad")
        strip = lambda ids: [t for t in ids if t != pad]  # noqa: E731
        # -1 separates source from target, so that no shingle runs from one into the other
        seqs = [[*strip(c), -1, *strip(r)] for c, r in zip(cond.tolist(), x.tolist(), strict=True)]
        keys = [_digest(np.asarray(s, dtype=np.int64).tobytes()) for s in seqs]
        labels = [_sequence_label(dataset, strip(c), strip(r)) for c, r in zip(cond.tolist(), x.tolist(), strict=True)]
        return Examples("sequences", names, keys, shingles=[_token_shingles(s) for s in seqs] if shingled else None,
                        labels=labels,
                        coarse=keys)
    flat = x.reshape(len(x), -1).float()
    keys = [_digest(row.numpy().tobytes()) for row in flat]
    if dataset.info.kind is not DataKind.VECTOR:
        # pixels rounded to quarters of their range: equal for copies that differ by a little noise
        coarse = [_digest(row.numpy().tobytes()) for row in (flat * 4).round().to(torch.uint8)]
        return Examples("images", names, keys, values=flat, coarse=coarse)
    if dataset.info.std is not None:
        flat = flat / torch.tensor(dataset.info.std, dtype=torch.float32)
    # no coarse key: nearby samples of a continuous density are not copies of each other
    return Examples("vectors", names, keys, values=flat)


def _snippet(text: str, width: int = 60) -> str:
    text = _normal(text)
    return text if len(text) <= width else text[: width - 1] + "…"


def _sequence_label(dataset: TensorDataset, source: list[int], target: list[int]) -> str:
    decode = dataset.tokenizer.decode if dataset.tokenizer is not None else str
    return _snippet(f"{decode(source)} -> {decode(target)}")


# ----- near pairs ---------------------------------------------------------------------------------------------------
def value_pairs(values: Tensor, near: float, weighted: bool, progress: Progress | None = None,
                rows: int = ROWS) -> np.ndarray:
    """Every pair (i < j) of rows of ``values`` with similarity >= ``near``, as an (M, 2) array: the weighted
    Jaccard similarity of non-negative rows (images) when ``weighted``, else ``1 - mean|a - b|`` (vectors).

    Both say the L1 distance of a near pair is at most ``limit = alpha + beta (S_a + S_b)`` (``S`` a row's sum:
    ``beta = (1 - near) / (1 + near)`` for images, ``alpha = (1 - near) D`` for vectors). Nothing is missed: rows are
    sorted by ``S``, and since ``|S_a - S_b| <= L1``, a block of rows is compared only with the rows after it up to
    the sum that bound allows; of those, an L2 range search (``|d|_2^2 <= min(R L1, L1^2)``, ``R`` the largest value
    range) proposes candidates and the L1 distance decides. ``rows``: rows per block."""
    n, dims = values.shape
    if n < 2:
        return np.zeros((0, 2), dtype=np.int64)
    alpha, beta = (0.0, (1 - near) / (1 + near)) if weighted else ((1 - near) * dims, 0.0)
    x = values.double()  # float64: the expansion |a|^2 - 2 a.b + |b|^2 cancels badly in float32 at small radii
    spread = float((x.amax(0) - x.amin(0)).max())
    total = x.sum(1)
    order = total.argsort()
    x, total = x[order], total[order]
    sq = x.square().sum(1)
    found = []
    for start in range(0, n, rows):
        stop = min(start + rows, n)
        top = (alpha + float(total[stop - 1]) * (1 + beta)) / (1 - beta)
        reach = int(torch.searchsorted(total, top + 1e-9, right=True))
        limit = alpha + beta * (total[start:stop, None] + total[None, start:reach])
        dist = sq[start:stop, None] - 2 * x[start:stop] @ x[start:reach].T + sq[None, start:reach]
        i, j = (dist <= torch.minimum(spread * limit, limit.square()) + 1e-9).nonzero(as_tuple=True)
        i, j = i[i < j], j[i < j]  # columns begin at row `start` too: j > i is a pair not seen yet
        close = (x[i + start] - x[j + start]).abs().sum(1) <= limit[i, j] + 1e-9
        a, b = order[i[close] + start], order[j[close] + start]
        found.append(torch.stack([torch.minimum(a, b), torch.maximum(a, b)], 1))
        if progress:
            progress("near duplicates", stop, n)
    return torch.cat(found).numpy()


def jaccard(a: set[bytes], b: set[bytes]) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def shingle_pairs(shingles: list[set[bytes]], near: float, progress: Progress | None = None) -> np.ndarray:
    """Every pair (i < j) whose shingle sets have Jaccard similarity >= ``near``, found by MinHash LSH (a pair LSH
    does not propose is missed with a probability that falls steeply with the similarity above ``near``)."""
    try:
        from datasketch import MinHash, MinHashLSH
    except ImportError:  # pragma: no cover - an optional dependency
        raise DataError("checking text for near duplicates needs datasketch: pip install 'genzoo[multimodal]'"
                        ) from None
    lsh = MinHashLSH(threshold=near, num_perm=NUM_PERM)
    hashes = MinHash.bulk(shingles, num_perm=NUM_PERM)
    for i, h in enumerate(hashes):
        lsh.insert(i, h)
        if progress and (i % 1000 == 0 or i == len(hashes) - 1):
            progress("near duplicates (hashing)", i + 1, len(hashes))
    pairs = []
    for i, h in enumerate(hashes):
        pairs += [(i, j) for j in lsh.query(h) if j > i and jaccard(shingles[i], shingles[j]) >= near]
        if progress and (i % 1000 == 0 or i == len(hashes) - 1):
            progress("near duplicates (pairs)", i + 1, len(hashes))
    return np.asarray(sorted(pairs), dtype=np.int64).reshape(-1, 2)


def near_pairs(ex: Examples, near: float, progress: Progress | None = None) -> np.ndarray:
    if ex.values is not None:
        return value_pairs(ex.values, near, ex.how == "images", progress)
    return shingle_pairs(ex.shingles or [], near, progress)


# ----- reports ------------------------------------------------------------------------------------------------------
@dataclass
class Finding:
    """Examples that repeat another: ``exact`` identical copies, ``near`` near (not identical) ones, out of
    ``total``; ``pairs`` a few ``(split, index, split, index, "exact"|"near")`` examples."""

    exact: int
    near: int
    total: int
    pairs: list[tuple[str, int, str, int, str]] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.exact + self.near

    @property
    def fraction(self) -> float:
        return self.count / self.total if self.total else 0.0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "count": self.count, "fraction": self.fraction}


@dataclass
class DataReport:
    """What :func:`check` found: ``duplicates`` (examples of the whole dataset that repeat one kept before them:
    what ``#dedup=true`` removes), ``leaks`` (per ``"later/earlier"`` split pair: examples of the later split that
    repeat one of the earlier), ``sizes`` per split; ``domain_b`` the second domain's report."""

    spec: str
    kind: str
    how: str
    near: float
    sizes: dict[str, int]
    duplicates: Finding
    leaks: dict[str, Finding]
    labels: dict[str, str] = field(default_factory=dict)
    domain_b: DataReport | None = None

    def to_json(self) -> dict[str, Any]:
        return {"spec": self.spec, "kind": self.kind, "how": self.how, "near": self.near, "sizes": self.sizes,
                "duplicates": self.duplicates.to_json(),
                "leaks": {name: f.to_json() for name, f in self.leaks.items()}, "labels": self.labels,
                "domain_b": None if self.domain_b is None else self.domain_b.to_json()}


def check_near(near: float | None, how: str) -> float:
    """``near``, or the default of ``how`` when None; a DataError unless it is in (0, 1]."""
    value = DEFAULT_NEAR[how] if near is None else near
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise DataError(f"near-duplicate threshold must be a similarity in (0, 1] (1 = exact only), got {near!r}")
    return float(value)


def _neighbours(n: int, ex: Examples, pairs: np.ndarray) -> tuple[np.ndarray, list[list[int]]]:
    """Exact-duplicate group ids and near neighbour lists."""
    group: dict[bytes, int] = {}
    groups = np.asarray([group.setdefault(k, len(group)) for k in ex.keys], dtype=np.int64)
    adjacent: list[list[int]] = [[] for _ in range(n)]
    for i, j in pairs.tolist():
        adjacent[i].append(j)
        adjacent[j].append(i)
    return groups, adjacent


Dropped = list[tuple[int, int, str]]


def _resolve(ex: Examples, groups: np.ndarray, adjacent: list[list[int]]) -> tuple[np.ndarray, Dropped]:
    """Keep flags in :data:`KEEP_ORDER` (an example is dropped when it repeats a kept one) and, for each dropped
    example, the kept example it repeats and how."""
    n = len(ex.split)
    keep = np.zeros(n, dtype=bool)
    kept_group: dict[int, int] = {}
    dropped = []
    for i in sorted(range(n), key=lambda k: (KEEP_ORDER.index(ex.split[k]), k)):
        if int(groups[i]) in kept_group:
            dropped.append((i, kept_group[int(groups[i])], "exact"))
            continue
        twin = next((j for j in adjacent[i] if keep[j]), None)
        if twin is not None:
            dropped.append((i, twin, "near"))
            continue
        keep[i] = True
        kept_group[int(groups[i])] = i
    return keep, dropped


def _cross(ex: Examples, groups: np.ndarray, adjacent: list[list[int]], later: str, earlier: str) -> Finding:
    where = ex.index_in_split()
    in_earlier = {int(groups[i]): i for i in range(len(ex.split)) if ex.split[i] == earlier}
    exact = near = 0
    pairs = []
    members = [i for i in range(len(ex.split)) if ex.split[i] == later]
    for i in members:
        twin, how = in_earlier.get(int(groups[i])), "exact"
        if twin is None:
            twin, how = next((j for j in adjacent[i] if ex.split[j] == earlier), None), "near"
        if twin is None:
            continue
        exact += how == "exact"
        near += how == "near"
        if len(pairs) < SHOWN:
            pairs.append((later, where[i], earlier, where[twin], how))
    return Finding(exact, near, len(members), pairs)


def _scan(dataset: Dataset, near: float | None, progress: Progress | None = None
          ) -> tuple[Examples, float, np.ndarray, list[list[int]]]:
    """The examples, the threshold used, exact-duplicate groups and near neighbours of ``dataset``."""
    ex = examples_of(dataset)
    threshold = check_near(near, ex.how)
    pairs = near_pairs(ex, threshold, progress) if threshold < 1 else np.zeros((0, 2), dtype=np.int64)
    return ex, threshold, *_neighbours(len(ex.split), ex, pairs)


def check(data: str | Dataset, near: float | None = None, progress: Progress | None = None) -> DataReport:
    """Exact and near duplicates within ``data`` (a spec or a loaded dataset) and leaks across its splits.

    ``near`` is the similarity at or above which two examples count as near duplicates (module docstring; None: the
    kind's :data:`DEFAULT_NEAR`, 1: exact duplicates only). ``progress(stage, done, total)`` is called as the work
    goes on (for big datasets)."""
    if near is not None:
        check_near(near, "images")  # a bad threshold fails before any data is read
    if isinstance(data, str):
        from genzoo.data.specs import load_dataset

        data = load_dataset(data)
    if isinstance(data, PairedDataset):
        report = check(data.a, near, progress)
        return replace(report, spec=data.info.spec, domain_b=check(data.b, near, progress))
    ex, threshold, groups, adjacent = _scan(data, near, progress)
    _, dropped = _resolve(ex, groups, adjacent)
    where = ex.index_in_split()
    shown = [(ex.split[i], where[i], ex.split[j], where[j], how) for i, j, how in dropped[:SHOWN]]
    duplicates = Finding(sum(h == "exact" for *_, h in dropped), sum(h == "near" for *_, h in dropped),
                         len(ex.split), shown)
    leaks = {f"{later}/{earlier}": _cross(ex, groups, adjacent, later, earlier) for later, earlier in CROSS}
    labels = {}
    if ex.labels:
        index = {(ex.split[i], where[i]): i for i in range(len(ex.split))}
        for finding in (duplicates, *leaks.values()):
            for a, i, b, j, _ in finding.pairs:
                labels[f"{a}:{i}"] = ex.labels[index[(a, i)]]
                labels[f"{b}:{j}"] = ex.labels[index[(b, j)]]
    sizes = {split: ex.split.count(split) for split in SPLITS}
    return DataReport(data.info.spec, data.info.kind.value, _describe(ex.how), threshold, sizes, duplicates, leaks,
                      labels)


def _describe(how: str) -> str:
    return {"images": "weighted Jaccard of pixel intensities, sum min(a, b) / sum max(a, b)",
            "vectors": "1 - mean |a - b| of features in training std units",
            "text": f"Jaccard of character {CHAR_SHINGLE}-grams of documents (MinHash LSH, {NUM_PERM} permutations)",
            "sequences": f"Jaccard of token {TOKEN_SHINGLE}-grams of source + target (MinHash LSH, "
                         f"{NUM_PERM} permutations)"}[how]


# ----- #dedup=true --------------------------------------------------------------------------------------------------
def deduplicated(dataset: Dataset, near: float | None = None) -> Dataset:
    """``dataset`` without the examples :func:`check` counts as duplicates (each example stays in its split);
    ``info.extra["dedup"]`` records how many were removed per split."""
    if isinstance(dataset, PairedDataset):
        if dataset.info.extra.get("aligned_heldout"):
            raise DataError(f"data '{dataset.info.spec}' cannot be deduplicated: its held-out splits are aligned "
                            "pairs, which removing examples from each domain would break")
        pair = PairedDataset(deduplicated(dataset.a, near), deduplicated(dataset.b, near))
        pair.info = replace(pair.info, extra={**dataset.info.extra, "dedup": pair.a.info.extra["dedup"]})
        return pair
    ex, threshold, groups, adjacent = _scan(dataset, near)
    keep, _ = _resolve(ex, groups, adjacent)
    split_of = np.asarray(ex.split)
    removed = {split: int((~keep[split_of == split]).sum()) for split in SPLITS}
    record = {"removed": removed, "total_removed": sum(removed.values()), "near": threshold, "how": ex.how}
    info = replace(dataset.info, extra={**dataset.info.extra, "dedup": record})
    if isinstance(dataset, TokenDataset):
        return _text_kept(dataset, info, keep, split_of)
    assert isinstance(dataset, TensorDataset)
    kept = {split: keep[split_of == split] for split in SPLITS}
    parts = {split: dataset.split(split)[torch.from_numpy(kept[split])] for split in SPLITS}
    for split, part in parts.items():
        if not len(part):
            raise DataError(f"data '{dataset.info.spec}': removing duplicates leaves the {split} split empty")
    out = replace(dataset, info=info, **parts)
    captions = getattr(dataset, "captions", None)  # texts beside the tensors (captioned images) follow them
    if captions is not None:
        out.captions = {split: [text for text, k in zip(captions[split], kept[split], strict=True) if k]
                        for split in SPLITS}
    return out


def _text_kept(dataset: TokenDataset, info: Any, keep: np.ndarray, split_of: np.ndarray) -> TokenDataset:
    """The text splits rebuilt from their kept documents, tokenised again with the same tokenizer."""
    tok = dataset.tokenizer
    streams = {}
    for split in SPLITS:
        docs = documents(dataset, split)
        text = "\n\n".join(doc for doc, k in zip(docs, keep[split_of == split], strict=True) if k)
        ids = tok.encode_bytes(text.encode()) if tok.source == "byte" else tok.encode(text)
        if len(ids) < dataset.context:
            raise DataError(f"data '{dataset.info.spec}': after removing duplicates the {split} split has "
                            f"{len(ids)} tokens, fewer than one context window of {dataset.context}")
        streams[split] = torch.tensor(ids, dtype=torch.long)
    return TokenDataset(info, streams, tok)


# ----- leaks, for every evaluation ----------------------------------------------------------------------------------
@dataclass
class LeakReport:
    """Test examples that repeat a training example: ``exact`` identical, ``near`` equal after coarse rounding
    (images: pixels to quarters of their range; text: lowercased, letters and digits only), of ``total``."""

    exact: int
    near: int
    total: int

    @property
    def fraction(self) -> float:
        return (self.exact + self.near) / self.total if self.total else 0.0

    def warning(self) -> str | None:
        """One line for ``genzoo eval`` when the test split leaks into training, else None."""
        if not self.exact + self.near:
            return None
        return (f"{self.exact + self.near} of {self.total} test examples ({100 * self.fraction:.1f}%) repeat a "
                f"training example ({self.exact} exactly, {self.near} nearly): test metrics are inflated; "
                "'genzoo data check' lists them, '#dedup=true' removes them")

    def to_json(self) -> dict[str, Any]:
        return {"exact": self.exact, "near": self.near, "total": self.total, "fraction": self.fraction}


def leak_report(dataset: Dataset) -> LeakReport:
    """How many test examples repeat a training example: exact keys plus a coarse-rounding key, no pairwise
    search, so it is cheap enough for every evaluation (``check`` does the thorough search)."""
    if isinstance(dataset, PairedDataset):
        dataset = dataset.a
    ex = examples_of(dataset, shingled=False)
    coarse = ex.coarse or ex.keys
    train = [i for i, s in enumerate(ex.split) if s == "train"]
    exact_keys, coarse_keys = {ex.keys[i] for i in train}, {coarse[i] for i in train}
    test = [i for i, s in enumerate(ex.split) if s == "test"]
    exact = sum(ex.keys[i] in exact_keys for i in test)
    near = sum(ex.keys[i] not in exact_keys and coarse[i] in coarse_keys for i in test)
    return LeakReport(exact, near, len(test))
