"""Data hygiene: duplicates within a dataset and across its splits, ``#dedup=true``, the eval leak warning."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from typer.testing import CliRunner

from genzoo.cli import app
from genzoo.contract import Batch, DataInfo, DataKind, GenerativeModel, ModelConfig, SampleOptions
from genzoo.data import DataOptions, TensorDataset, load_dataset, pair_datasets
from genzoo.data.hygiene import DataReport, check, documents, examples_of, jaccard, leak_report, value_pairs
from genzoo.data.pairs import pair_dataset
from genzoo.data.text import TokenDataset
from genzoo.errors import DataError
from genzoo.eval import Protocol, evaluate
from genzoo.tokenizer import char_tokenizer

SIDE = 8


def distinct_images(n: int, seed: int = 0) -> Tensor:
    """Random binary 8x8 patterns: two differ in about half their pixels (similarity ~0.5, far from any threshold)."""
    return (torch.rand(n, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(seed)) < 0.5).float()


def one_pixel_changed(image: Tensor) -> Tensor:
    out = image.clone()
    out[0, 3, 4] = 1.0 - out[0, 3, 4]
    return out


def image_dataset(train: Tensor, val: Tensor, test: Tensor) -> TensorDataset:
    info = DataInfo(kind=DataKind.IMAGE, shape=(1, SIDE, SIDE), levels=2, spec="planted")
    return TensorDataset(info, Batch(train), Batch(val), Batch(test))


@pytest.fixture(scope="module")
def planted() -> TensorDataset:
    """30 distinct images; val[0] = train[0] exactly, test[0] = train[1] exactly, test[1] = train[2] with one pixel
    flipped, test[2] = val[1] exactly, and train[20] = train[3] with one pixel flipped."""
    x = distinct_images(30)
    train = torch.cat([x[:20], one_pixel_changed(x[3])[None]])
    val = torch.stack([x[0], x[20], x[21], x[22]])
    test = torch.stack([x[1], one_pixel_changed(x[2]), x[20], x[23], x[24]])
    return image_dataset(train, val, test)


# ----- images -------------------------------------------------------------------------------------------------------
def test_distinct_images_have_no_duplicates() -> None:
    x = distinct_images(300, seed=1)
    report = check(image_dataset(x[:240], x[240:270], x[270:]))
    assert report.duplicates.count == 0
    assert all(f.count == 0 for f in report.leaks.values())


def test_planted_image_duplicates_and_leaks_are_counted(planted: TensorDataset) -> None:
    report = check(planted)
    # kept in the order test, val, train: train[0], train[1] (copies of held-out), train[2] (near test[1]) go,
    # train[20] (near train[3]) goes; val[1] is repeated by test[2], so val[1] goes
    assert (report.duplicates.exact, report.duplicates.near) == (3, 2)
    assert report.duplicates.total == 21 + 4 + 5
    leaks = {name: (f.exact, f.near, f.total) for name, f in report.leaks.items()}
    assert leaks == {"val/train": (1, 0, 4), "test/train": (1, 1, 5), "test/val": (1, 0, 5)}
    assert set(report.leaks["test/train"].pairs) == {("test", 0, "train", 1, "exact"), ("test", 1, "train", 2, "near")}
    assert report.leaks["test/train"].fraction == pytest.approx(2 / 5)


def test_one_pixel_threshold_is_the_weighted_jaccard() -> None:
    """s = sum min / sum max = (S - L1) / (S + L1): one flipped pixel gives L1 = 1."""
    x = distinct_images(3, seed=2)
    copy = one_pixel_changed(x[0])
    data = image_dataset(torch.stack([x[0], x[1]]), x[2][None], copy[None])
    ink = float(x[0].sum() + copy.sum())
    s = (ink - 1) / (ink + 1)
    assert 0.95 < s < 0.98
    assert check(data, near=s).leaks["test/train"].near == 1  # the threshold itself counts
    assert check(data, near=s + 1e-6).leaks["test/train"].near == 0
    assert check(data, near=1.0).leaks["test/train"].count == 0  # 1: exact duplicates only


def test_value_pairs_match_brute_force() -> None:
    """The pruned range search finds exactly the pairs a full comparison finds: weighted Jaccard of non-negative
    rows (images), 1 - mean|a - b| of any rows (vectors)."""
    g = torch.Generator().manual_seed(3)
    sparse = torch.rand(300, 16, generator=g) * (torch.rand(300, 16, generator=g) < 0.3)
    # brighter copies (b = k a, similarity 1/k): pairs whose sums differ by up to the factor the pruning allows
    scaled = torch.cat([sparse[:40] * k for k in (0.5, 0.6, 0.75, 0.9, 1.0)])
    grid = torch.randint(0, 3, (200, 12), generator=g) / 2
    for values, near, weighted in ((sparse, 0.6, True), (scaled, 0.59, True), (grid, 0.71, True),
                                   (torch.rand(300, 2, generator=g) * 4 - 2, 0.97, False),
                                   (torch.randn(250, 5, generator=g), 0.75, False)):
        x = values.double()
        l1 = torch.cdist(x, x, p=1)
        if weighted:
            ink = x.sum(1)[:, None] + x.sum(1)[None, :]
            similarity = ((ink - l1) / (ink + l1)).nan_to_num(1.0)  # two blank rows are identical
        else:
            similarity = 1 - l1 / x.shape[1]
        brute = {(i, j) for i, j in (similarity >= near).nonzero().tolist() if i < j}
        for rows in (512, 7):  # one block, many blocks
            found = {tuple(p) for p in value_pairs(values, near, weighted, rows=rows).tolist()}
            assert len(brute) > 10 and found == brute


def test_jaccard() -> None:
    assert jaccard({b"a", b"b", b"c"}, {b"b", b"c", b"d"}) == 0.5 and jaccard(set(), set()) == 1.0


def test_digits_report_matches_the_measured_numbers() -> None:
    """sklearn digits (docs/data-hygiene.md): no exact duplicate and, at the default 0.95, no near one; at 0.9, five
    near pairs, one of them a test digit that repeats a training digit."""
    digits = load_dataset("digits")
    report = check(digits)
    assert report.duplicates.count == 0 and all(f.count == 0 for f in report.leaks.values())
    loose = check(digits, near=0.9)
    assert (loose.duplicates.exact, loose.duplicates.near) == (0, 5)
    assert loose.leaks["test/train"].pairs == [("test", 69, "train", 445, "near")]


# ----- text and sequences -------------------------------------------------------------------------------------------
WORDS = [f"{a}{b}{c}" for a, b, c in itertools.product("bcdfg", "aeiou", "klmnp")]


def random_doc(rng: random.Random, words: int = 25) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(words))


def text_dataset_of(splits: dict[str, list[str]]) -> TokenDataset:
    texts = {split: "\n\n".join(docs) for split, docs in splits.items()}
    tok = char_tokenizer("".join(texts.values()))
    streams = {split: torch.tensor(tok.encode(text)) for split, text in texts.items()}
    return TokenDataset(DataInfo(kind=DataKind.TOKENS, shape=(8,), levels=tok.vocab_size, spec="docs"), streams, tok)


def one_word_changed(doc: str) -> str:
    words = doc.split()
    words[len(words) // 2] = "zzz"
    return " ".join(words)


def test_text_documents_exact_and_one_word_near_duplicates() -> None:
    rng = random.Random(0)
    docs = [random_doc(rng) for _ in range(60)]
    data = text_dataset_of({"train": [*docs[:50], one_word_changed(docs[1])], "val": [*docs[50:55], docs[0]],
                            "test": [*docs[55:], docs[2], one_word_changed(docs[3])]})
    assert documents(data, "val")[-1] == docs[0]  # documents are the blocks between blank lines, decoded
    report = check(data)
    assert (report.duplicates.exact, report.duplicates.near) == (2, 2)
    leaks = {name: (f.exact, f.near) for name, f in report.leaks.items()}
    assert leaks == {"val/train": (1, 0), "test/train": (1, 1), "test/val": (0, 0)}
    clean = text_dataset_of({"train": docs[:50], "val": docs[50:55], "test": docs[55:]})
    assert check(clean).duplicates.count == 0


def test_sequence_pairs_compare_source_and_target() -> None:
    """Same source with another target is not a copy; the same pair is."""
    splits = {"train": [("abcdef", "fedcba"), ("ghijkl", "lkjihg"), ("mnopqr", "rqponm")],
              "val": [("abcdef", "zzzzzz"), ("stuvwx", "xwvuts")], "test": [("ghijkl", "lkjihg"), ("yzab", "bazy")]}
    data = pair_dataset(splits, DataOptions(), "hand-made")
    report = check(data, near=1.0)
    assert {name: f.exact for name, f in report.leaks.items()} == {"val/train": 0, "test/train": 1, "test/val": 0}
    assert report.labels["test:0"] == "ghijkl -> lkjihg</s>"


# ----- #dedup=true --------------------------------------------------------------------------------------------------
def npz_with_duplicates(tmp_path: Path) -> tuple[Path, int]:
    """100 distinct images, 12 exact copies and 8 one-pixel copies of some of them, shuffled: 100 unique."""
    x = distinct_images(100, seed=4)
    copies = torch.cat([x[:12], torch.stack([one_pixel_changed(im) for im in x[12:20]])])
    everything = torch.cat([x, copies])[torch.randperm(120, generator=torch.Generator().manual_seed(5))]
    path = tmp_path / "dups.npz"
    np.savez(path, x=(everything[:, 0].numpy() * 255).astype(np.uint8))
    return path, 100


def test_dedup_leaves_no_shared_example_and_the_right_total(tmp_path: Path) -> None:
    path, unique = npz_with_duplicates(tmp_path)
    raw = load_dataset(f"npz:{path}")
    assert check(raw).duplicates.count == 20 and leak_report(raw).exact > 0
    data = load_dataset(f"npz:{path}#dedup=true")
    assert sum(data.size(s) for s in ("train", "val", "test")) == unique
    assert data.info.extra["dedup"]["total_removed"] == 20
    assert sum(data.info.extra["dedup"]["removed"].values()) == 20
    assert data.size("test") == raw.size("test") - data.info.extra["dedup"]["removed"]["test"]
    after = check(data)
    assert after.duplicates.count == 0 and all(f.count == 0 for f in after.leaks.values())
    assert len(set(examples_of(data).keys)) == unique


def test_dedup_keeps_held_out_examples_and_drops_training_copies(planted: TensorDataset) -> None:
    from genzoo.data.hygiene import deduplicated

    clean = deduplicated(planted)
    assert isinstance(clean, TensorDataset)
    assert clean.info.extra["dedup"]["removed"] == {"train": 4, "val": 1, "test": 0}
    assert torch.equal(clean.test.x, planted.test.x)
    assert torch.equal(clean.train.x, planted.train.x[[3, *range(4, 20)]])


def test_dedup_text_removes_repeated_documents(tmp_path: Path) -> None:
    rng = random.Random(1)
    docs = [random_doc(rng, 12) for _ in range(40)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs + docs[:10]) + "\n")  # the test part (the end) repeats training documents
    raw = load_dataset(f"text:{path}#context=8")
    assert leak_report(raw).exact > 0
    data = load_dataset(f"text:{path}#context=8,dedup")
    assert isinstance(data, TokenDataset) and leak_report(data).exact == 0
    kept = [doc for split in ("train", "val", "test") for doc in documents(data, split)]
    assert len(kept) == len(set(kept)) and data.info.extra["dedup"]["total_removed"] > 0


def test_dedup_is_an_option_of_every_loader() -> None:
    data = load_dataset("toy:moons#dedup")  # a loader that takes no other #option
    assert data.info.extra["dedup"]["removed"] == {"train": 0, "val": 0, "test": 0}


# ----- the eval leak warning ----------------------------------------------------------------------------------------
class Copier(GenerativeModel):
    """Returns examples of a fixed pool."""

    name = "copier"
    family = "test"
    Config = ModelConfig
    data_kinds = frozenset({DataKind.VECTOR})

    def __init__(self, data: DataInfo, pool: Tensor) -> None:
        super().__init__(ModelConfig(), data)
        self.pool = pool
        self.anchor = nn.Parameter(torch.zeros(1))

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: SampleOptions) -> Tensor:
        return self.pool[torch.randint(len(self.pool), (n,), generator=generator)]


def vectors(leaked: int) -> TensorDataset:
    x = torch.randn(400, 2, generator=torch.Generator().manual_seed(6))
    test = x[360:].clone()
    test[:leaked] = x[:leaked]
    info = DataInfo(kind=DataKind.VECTOR, shape=(2,), levels=None, spec="blobs")
    return TensorDataset(info, Batch(x[:320]), Batch(x[320:360]), Batch(test))


@pytest.mark.parametrize("leaked", [0, 6])
def test_eval_warns_when_the_test_split_leaks(leaked: int) -> None:
    data = vectors(leaked)
    result = evaluate(Copier(data.info, data.train.x), data=data, n=80, protocol=Protocol(kid_subsets=5, c2st_folds=2),
                      report=False)
    assert result["data"]["leak"] == {"exact": leaked, "near": 0, "total": 40, "fraction": leaked / 40}
    warned = [w for w in result["warnings"] if "repeat a training example" in w]
    assert len(warned) == (1 if leaked else 0)
    if leaked:
        assert warned[0].startswith("6 of 40 test examples (15.0%)")


def test_leak_report_near_copies_of_images(planted: TensorDataset) -> None:
    """Exact copies count as exact; a copy within rounding (a little noise) as near; a far image not at all."""
    x = distinct_images(12, seed=7)
    noisy = (x[1] * 0.9 + 0.05)[None]  # every pixel moved by 0.05: rounds to the same quarter
    data = image_dataset(x[:8], x[8:10], torch.cat([x[0][None], noisy, x[10:12]]))
    report = leak_report(data)
    assert (report.exact, report.near, report.total) == (1, 1, 4)
    assert leak_report(image_dataset(x[:8], x[8:10], x[10:12])).warning() is None


# ----- errors -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("near", [0.0, -0.5, 1.5, float("nan")])
def test_bad_threshold_is_one_clear_error(near: float, planted: TensorDataset) -> None:
    with pytest.raises(DataError, match="threshold must be a similarity in \\(0, 1\\]"):
        check(planted, near=near)


def test_bad_specs_are_clear_errors() -> None:
    with pytest.raises(DataError, match="dedup must be true or false, got 'maybe'"):
        load_dataset("digits#dedup=maybe")
    with pytest.raises(DataError, match="names nothing"):
        check("no-such-data")


def test_two_domains_are_checked_each_on_its_own(planted: TensorDataset) -> None:
    x = distinct_images(9, seed=8)
    pair = pair_datasets(planted, image_dataset(x[:5], x[5:7], x[7:9]))
    report = check(pair)
    assert report.duplicates.count == 5 and report.domain_b is not None and report.domain_b.duplicates.count == 0
    with pytest.raises(DataError, match="aligned"):
        load_dataset("pair:digits-thick#dedup")


def test_cli_check_prints_the_report(tmp_path: Path) -> None:
    path, _ = npz_with_duplicates(tmp_path)
    result = CliRunner().invoke(app, ["data", "check", f"npz:{path}", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["duplicates"]["exact"] == 12
    table = CliRunner().invoke(app, ["data", "check", f"npz:{path}", "--near", "1"])
    assert table.exit_code == 0 and "duplicates" in table.output and "near: similarity ≥ 1" in table.output
    bad = CliRunner().invoke(app, ["data", "check", f"npz:{path}", "--near", "2"])
    assert isinstance(bad.exception, DataError)


def test_report_is_json(planted: TensorDataset) -> None:
    report = check(planted)
    assert isinstance(report, DataReport)
    out = report.to_json()
    assert out["leaks"]["test/train"]["count"] == 2 and out["near"] == 0.95 and out["domain_b"] is None
