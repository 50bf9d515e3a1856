"""The evaluation protocol end to end: feature spaces, the reference row, memorization, bad samples, CLI."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import Field
from rich.console import Console
from rich.table import Table
from torch import Tensor, nn
from typer.testing import CliRunner

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli import main
from genzoo.cli.app import app
from genzoo.contract import Batch, Capability, Cost, DataInfo, DataKind, GenerativeModel, ModelConfig, SampleOptions
from genzoo.data import Dataset, load_dataset, read_examples
from genzoo.errors import GenzooError
from genzoo.eval import Protocol, check_comparable, compare_sets, evaluate, feature_space, table
from genzoo.eval import features as features_module
from genzoo.eval import protocol as protocol_module
from genzoo.eval.features import set_space
from genzoo.eval.protocol import split_real_set
from genzoo.eval.report import columns_table
from genzoo.io import write_json
from genzoo.metrics import frechet_distance

QUICK = Protocol(kid_subsets=10, c2st_folds=3)


def cli_error(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> str:
    """Run the console script in-process on ``args``: it must exit 2 with one line on stderr, returned."""
    monkeypatch.setattr(sys, "argv", ["genzoo", *args])
    with pytest.raises(SystemExit) as stop:
        main()
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and err.startswith("error:") and "\n" not in err, err
    return err


def _row_of(rich_table: Table, label: str) -> list[str]:
    """The cells of one metric's row of a rich table."""
    index = list(rich_table.columns[0].cells).index(label)
    return [list(column.cells)[index] for column in rich_table.columns[1:]]


def eight_blobs(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """``n`` points of eight well-separated 2-D Gaussians, and which Gaussian each came from."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[4.0 * (i % 4), 4.0 * (i // 4)] for i in range(8)])
    y = torch.randint(8, (n,), generator=gen)
    return centres[y] + 0.5 * torch.randn(n, 2, generator=gen), y


class Replay(GenerativeModel):
    """A 'model' that returns examples of a fixed pool (optionally corrupted): a perfect copier."""

    name = "replay"
    family = "test"
    Config = ModelConfig
    data_kinds = frozenset({DataKind.IMAGE, DataKind.VECTOR})

    def __init__(self, data: DataInfo, pool: Tensor) -> None:
        super().__init__(ModelConfig(), data)
        self.pool = pool
        self.net = nn.Identity()
        self.anchor = nn.Parameter(torch.zeros(3))

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: SampleOptions) -> Tensor:
        return self.net(self.pool[torch.randint(len(self.pool), (n,), generator=generator)])


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_feature_network_is_accurate_and_cached(digits: Dataset, monkeypatch: pytest.MonkeyPatch) -> None:
    space = feature_space(digits)
    assert space.has_classes and space.meta["test_accuracy"] > 0.9
    files = sorted(p.name for p in (genzoo.eval.cache_dir() / "features").iterdir())
    assert f"{space.hash}.safetensors" in files and f"{space.hash}.json" in files
    # a second call reads the cache (fitting again would fail here)
    monkeypatch.setattr(features_module, "_fit", lambda *a: pytest.fail("refitted a cached network"))
    assert torch.equal(feature_space(digits).features(digits.test.x), space.features(digits.test.x))


def test_feature_network_training_is_deterministic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "MIN_STEPS", 10)
    data = tiny_dataset(DataKind.IMAGE)
    spaces = []
    for folder in ("a", "b"):  # two empty caches: fitted from scratch twice
        monkeypatch.setenv("GENZOO_CACHE", str(tmp_path / folder))
        spaces.append(feature_space(data))
    assert spaces[0].hash == spaces[1].hash and (tmp_path / "b" / "features" / f"{spaces[1].hash}.json").exists()
    assert all(torch.equal(a, b) for a, b in zip(spaces[0].network.state_dict().values(),
                                                  spaces[1].network.state_dict().values(), strict=True))
    assert spaces[0].network.scale != 1.0  # the feature scale was fitted too


def test_noise_raises_fd_monotonically_in_feature_space(digits: Dataset) -> None:
    space = feature_space(digits)
    real, held = space.features(digits.train.x), digits.val.x
    noise = torch.randn(held.shape, generator=torch.Generator().manual_seed(0))
    fds = [frechet_distance(real, space.features((held + s * noise).clamp(0, 1))) for s in (0.0, 0.1, 0.2, 0.4)]
    assert all(lo < hi for lo, hi in itertools.pairwise(fds)), fds


def test_half_the_classes_lowers_recall_coverage_and_class_coverage(digits: Dataset) -> None:
    held = torch.cat([digits.val.x, digits.test.x])
    labels = torch.cat([digits.val.y, digits.test.y])
    full = compare_sets(digits.train.x, held, features=digits, protocol=QUICK)
    half = compare_sets(digits.train.x, held[labels < 5], features=digits, protocol=QUICK)
    assert full["precision"] > 0.85 and full["recall"] > 0.85 and full["coverage"] > 0.85
    assert abs(full["c2st_accuracy"] - 0.5) < 0.1
    assert half["precision"] > 0.85
    assert half["recall"] < full["recall"] - 0.2 and half["coverage"] < full["coverage"] - 0.3
    assert full["classes"]["classes_hit"] == 10 and half["classes"]["classes_hit"] == 5
    assert half["classes"]["kl_to_real"] > full["classes"]["kl_to_real"] + 0.5


def test_copied_training_images_are_flagged_and_reference_row_is_clean(digits: Dataset, tmp_path: Path) -> None:
    result = evaluate(Replay(digits.info, digits.train.x[:300]), data=digits, n=200, protocol=QUICK, out=tmp_path)
    model, reference = result["rows"]["model"], result["rows"]["reference"]
    assert model["memorization"]["memorized"] and model["memorization"]["exact_copies"] == 1.0
    assert not reference["memorization"]["memorized"] and reference["memorization"]["exact_copies"] == 0.0
    # held-out data sits at the finite-sample floor (0.45 here); replaying a fifth of the training set is clearly
    # farther (1.04), and the reference reads like identical distributions
    assert reference["fd"] < 0.6 < model["fd"] and reference["n_fake"] == model["n_fake"] == 200
    assert min(reference["precision"], reference["recall"], reference["coverage"]) > 0.85 and not result["warnings"]
    assert model["likelihood"] is None and model["cost"]["nfe_per_sample"] == 1
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["rows"]["model"]["fd"] == pytest.approx(model["fd"])
    assert saved["protocol"]["feature_space"]["hash"] == model["feature_space"]["hash"]
    written = {p.name for p in (tmp_path / "eval").iterdir()}
    assert {"index.html", "samples.png", "classes.png", "neighbours.png"} <= written


def test_nan_samples_are_reported_not_fatal(digits: Dataset) -> None:
    pool = digits.train.x[:200].clone()
    pool[::4] = float("nan")
    result = evaluate(Replay(digits.info, pool), data=digits, n=120, protocol=QUICK, report=False)
    model = result["rows"]["model"]
    assert model["nonfinite_samples"] > 10 and model["n_fake"] == 120 - model["nonfinite_samples"]
    with_nans = digits.val.x.clone()
    with_nans[:3, 0, 0, 0] = float("nan")
    row = compare_sets(digits.train.x, with_nans, features=digits, protocol=QUICK)
    assert row["nonfinite_samples"] == 3 and row["n_fake"] == len(with_nans) - 3
    assert _row_of(columns_table([("fake", row)], ""), "non-finite samples") == ["3"]


def test_toy_data_has_true_likelihood_reference_and_modes() -> None:
    data = load_dataset("toy:8gaussians")
    pool = data.reference.sample(3000, torch.Generator().manual_seed(1))
    result = evaluate(Replay(data.info, pool), data=data, n=400, protocol=QUICK, report=False)
    ref, model = result["rows"]["reference"], result["rows"]["model"]
    assert ref["likelihood"]["kind"] == "exact" and ref["likelihood"]["method"] == "true density"
    # 8 Gaussians with std 0.2: NLL is close to the entropy log 8 + log(2 pi e 0.04) when the modes barely overlap
    assert ref["likelihood"]["nll_nats"] == pytest.approx(np.log(8) + np.log(2 * np.pi * np.e * 0.04), abs=0.1)
    assert model["modes"]["modes_hit"] == 8 and model["feature_space"]["name"] == "raw"
    assert abs(model["c2st_accuracy"] - 0.5) < 0.1 and not model["memorization"]["memorized"]


def test_bad_inputs_are_clear_errors(digits: Dataset) -> None:
    with pytest.raises(GenzooError, match="same shape"):
        compare_sets(digits.train.x[:50], digits.val.x[:50, :, :4], features=digits)
    with pytest.raises(GenzooError, match="at least 10 examples in each set, got real=50, fake=4"):
        compare_sets(digits.train.x[:50], digits.val.x[:4], features=digits)
    a = {"run": "a", "model": "m", "data": {"spec": "digits"}, "protocol": {"feature_space": {"hash": "1"}}}
    with pytest.raises(GenzooError, match="different feature spaces"):
        check_comparable([a, {**a, "protocol": {"feature_space": {"hash": "2"}}}])


def test_cli_eval_of_a_tiny_vae_run_and_of_two_sets(tmp_path: Path) -> None:
    run = genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=5, out=tmp_path / "run",
                       overrides={"latent_dim": 4, "width": 8}, **FAST)
    runner = CliRunner()
    out = runner.invoke(app, ["eval", str(run), "--n", "64", "--json"])
    assert out.exit_code == 0, out.output
    saved = json.loads((run / "eval.json").read_text())
    like = saved["rows"]["model"]["likelihood"]
    assert like["kind"] == "lower_bound" and like["discrete"]
    assert like["bits_per_dim"] == pytest.approx(like["nll_nats"] / (64 * np.log(2)))
    assert saved["rows"]["model"]["cost"]["train_steps_per_s"] > 0
    assert (run / "eval" / "index.html").exists()
    console = Console(width=150, record=True)
    console.print(table([saved]))
    text = console.export_text()
    assert "real held-out (reference)" in text and "bits/dim" in text and "≤ " in text
    gen = torch.Generator().manual_seed(0)
    np.save(tmp_path / "a.npy", torch.randn(300, 3, generator=gen).numpy())
    np.save(tmp_path / "b.npy", (torch.randn(300, 3, generator=gen) + 1).numpy())
    out = runner.invoke(app, ["eval", "--real", str(tmp_path / "a.npy"), "--fake", str(tmp_path / "b.npy"), "--json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["c2st_auroc"] > 0.8


def test_evaluation_reports_each_of_its_stages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from genzoo.eval import runner

    run = genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=2, out=tmp_path / "run",
                       overrides={"latent_dim": 4, "width": 8}, **FAST)
    seen: list[str] = []
    real_call = runner.Stages.__call__
    monkeypatch.setattr(runner.Stages, "__call__", lambda self, text: (seen.append(text), real_call(self, text)))
    result = evaluate(run, n=32, progress=True, protocol=QUICK)
    assert [s.split()[0] for s in seen] == ["loading", "drawing", "scoring", "likelihood", "writing"]
    assert len(seen) == runner.Stages.TOTAL and "32 samples" in seen[1]
    assert result["rows"]["model"]["n_fake"] == 32


def test_cli_bad_input_exits_2_with_one_line_naming_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "a.npy", np.zeros((300, 3), dtype=np.float32))
    assert "--real and --fake go together" in cli_error(["eval", "--real", str(tmp_path / "a.npy")], monkeypatch,
                                                        capsys)
    # checked before the run is even read
    for n in ("0", "-3"):
        assert f"must be at least 1, got {n}" in cli_error(["eval", str(tmp_path / "no-run"), "--n", n],
                                                           monkeypatch, capsys)


class SteppedOptions(SampleOptions):
    steps: int = Field(3, ge=1)


def test_network_evaluations_per_sample(digits: Dataset) -> None:
    class Stepped(Replay):
        SampleOptions = SteppedOptions

        def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: SteppedOptions
                    ) -> Tensor:
            x = self.pool[:n]
            for _ in range(options.steps):
                x = self.net(x)
            return x

    model = Stepped(digits.info, digits.train.x[:4])
    # counted with forward hooks, given the sampling options
    assert model.cost().nfe_per_sample == 3 and model.cost(steps=7).nfe_per_sample == 7
    with pytest.raises(GenzooError, match="steps"):
        model.cost(steps=0)

    class Declared(Stepped):
        def cost(self, **options: object) -> Cost:
            return Cost(nfe_per_sample=2 * self.sample_options(**options).steps)

    result = evaluate(Declared(digits.info, digits.train.x[:400]), data=digits, n=50, protocol=QUICK, report=False,
                      sample_options={"steps": 5})
    assert result["rows"]["model"]["cost"]["nfe_per_sample"] == 10


def test_compare_sets_does_not_depend_on_the_order_of_the_real_set() -> None:
    real, y = eight_blobs(2000, 0)
    fake, _ = eight_blobs(400, 1)
    row = compare_sets(real[y.argsort()], fake, protocol=QUICK)  # real sorted by blob, fake shuffled
    # the first 400 sorted real points hold two of the eight blobs: precision 0.30, MMD² 0.36 before subsets were
    # drawn at random
    assert row["precision"] > 0.95 and row["recall"] > 0.95 and row["coverage"] > 0.9
    assert abs(row["mmd2"]) < 0.01 and abs(row["density"] - 1) < 0.1


def test_nan_fake_examples_from_the_cli_are_dropped_and_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    real, _ = eight_blobs(300, 0)
    fake, _ = eight_blobs(200, 1)
    fake[::29] = float("nan")  # 7 examples
    np.save(tmp_path / "real.npy", real.numpy())
    np.save(tmp_path / "fake.npy", fake.numpy())
    runner = CliRunner()
    args = ["eval", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy")]
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    row = json.loads(out.output)
    assert row["nonfinite_samples"] == 7 and row["n_fake"] == 193 and row["precision"] > 0.9
    out = runner.invoke(app, args)
    assert out.exit_code == 0 and "non-finite samples" in out.output, out.output
    # the real set stays checked, with the loader's message
    np.save(tmp_path / "real.npy", fake.numpy())
    assert "contains 14 NaN/Inf value(s)" in cli_error(args, monkeypatch, capsys)
    # images too: the rows with NaN come back as NaN, the rest in data units
    images = np.random.default_rng(0).random((12, 8, 8, 1), dtype=np.float32)
    images[3, 2, 1, 0] = np.inf
    np.save(tmp_path / "images.npy", images)
    read = read_examples(tmp_path / "images.npy", finite=False)
    assert read.shape == (12, 1, 8, 8) and read[3].isnan().all() and torch.equal(read[4, 0], torch.from_numpy(
        images[4, :, :, 0]))


def test_too_small_a_fake_set_names_the_metrics_minimum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "real.npy", eight_blobs(300, 0)[0].numpy())
    np.save(tmp_path / "fake.npy", eight_blobs(2, 1)[0].numpy())
    message = cli_error(["eval", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy")],
                        monkeypatch, capsys)
    assert "at least 10 examples in each set, got real=300, fake=2" in message


def test_unlabelled_images_are_scored_on_examples_the_feature_network_never_saw(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(features_module, "MIN_STEPS", 10)
    monkeypatch.setattr(features_module, "EPOCHS", 1)
    gen = torch.Generator().manual_seed(0)
    real, fake = torch.rand(200, 1, 8, 8, generator=gen), torch.rand(80, 1, 8, 8, generator=gen)
    fitted: list[Tensor] = []
    monkeypatch.setattr(protocol_module, "set_space", lambda x, info: fitted.append(x) or set_space(x, info))
    row = compare_sets(real, fake, protocol=QUICK)
    fit, scored, held = split_real_set(real, QUICK)
    assert len(fitted) == 1 and torch.equal(fitted[0], fit) and len(fit) == 100
    as_rows = lambda t: {tuple(v.flatten().tolist()) for v in t}  # noqa: E731
    assert as_rows(fit).isdisjoint(as_rows(scored) | as_rows(held)) and as_rows(scored).isdisjoint(as_rows(held))
    assert row["n_real"] == len(scored) == 50 and row["reference"]["n_fake"] == len(held) == 50
    assert row["warnings"] and "50 held-out examples, the model row 80" in row["warnings"][0]
    # two sets of the same noise: the fake column reads like the reference column
    for key in ("precision", "recall", "coverage"):
        assert abs(row[key] - row["reference"][key]) < 0.15, key
    np.save(tmp_path / "real.npy", real.numpy())
    np.save(tmp_path / "fake.npy", fake.numpy())
    out = CliRunner().invoke(app, ["eval", "--real", str(tmp_path / "real.npy"), "--fake", str(tmp_path / "fake.npy")])
    assert out.exit_code == 0 and "(reference)" in out.output and "warning:" in out.output, out.output
    assert len(fitted) == 2 and torch.equal(fitted[1], fit)  # the same half, so the cached network


def test_results_with_other_sample_counts_are_not_compared_and_a_short_reference_is_flagged() -> None:
    data = tiny_dataset(DataKind.VECTOR)  # 48 held-out examples
    model = Replay(data.info, data.train.x)
    small = evaluate(model, data=data, n=40, protocol=QUICK, report=False)
    large = evaluate(model, data=data, n=100, protocol=QUICK, report=False)
    assert not small["warnings"] and large["rows"]["reference"]["n_fake"] == 48
    assert "scores 48 held-out examples, the model row 100" in large["warnings"][0]
    console = Console(width=200, record=True)
    console.print(table([large]))
    assert "warning: the reference row scores 48" in console.export_text()
    with pytest.raises(GenzooError, match="different protocol settings \\(n = 40 vs 100\\)"):
        check_comparable([small, large])
    with pytest.raises(GenzooError, match="at least 1, got 0"):
        evaluate(model, data=data, n=0)


def test_infinite_nll_and_its_count_are_shown() -> None:
    likelihood = {"nll_nats": float("inf"), "bits_per_dim": float("inf"), "kind": "lower_bound", "nonfinite": 4,
                  "method": "elbo"}
    shown = columns_table([("model", {"likelihood": likelihood})], "")
    assert _row_of(shown, "NLL nats/example ↓") == ["≤ inf"]
    assert _row_of(shown, "test points with log p = -inf/NaN") == ["4"]
    finite = columns_table([("model", {"likelihood": {**likelihood, "nll_nats": 80.0, "nonfinite": 0}})], "")
    assert "test points with log p = -inf/NaN" not in list(finite.columns[0].cells)


def test_eval_json_is_standard_json_even_with_an_infinite_nll(tmp_path: Path) -> None:
    likelihood = {"nll_nats": float("inf"), "bits_per_dim": float("inf"), "kind": "lower_bound", "nonfinite": 4,
                  "method": "elbo"}
    write_json(tmp_path / "eval.json", {"rows": {"model": {"likelihood": likelihood, "kid": float("nan")}}})
    text = (tmp_path / "eval.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    saved = json.loads(text, parse_constant=lambda name: pytest.fail(f"non-standard JSON constant {name}"))
    assert saved["rows"]["model"]["likelihood"]["nll_nats"] is None and saved["rows"]["model"]["kid"] is None
    shown = columns_table([("model", saved["rows"]["model"])], "")
    assert _row_of(shown, "NLL nats/example ↓") == ["≤ inf"]


def test_task_metrics_are_recorded_apart_from_likelihoods_and_a_mapping_model_draws_no_samples(
        digits: Dataset) -> None:
    class Mapper(Replay):
        """Maps each image to its negative: no sampler, one task metric computed from the test split."""

        base_capabilities = frozenset({Capability.IMG2IMG})

        def img2img(self, x: Tensor, strength: float = 0.5, **options: object) -> Tensor:
            return 1 - x

        def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
            return {"negation_error": float((self.img2img(test.x) - (1 - test.x)).abs().mean()),
                    "examples": float(len(test))}

    result = evaluate(Mapper(digits.info, digits.train.x[:4]), data=digits, protocol=QUICK, report=False)
    model_row = result["rows"]["model"]
    assert model_row["task"] == {"negation_error": 0.0, "examples": float(len(digits.examples("test")))}
    assert model_row["likelihood"] is None and "fd" not in model_row
    assert model_row["cost"]["samples_per_s"] is None and model_row["cost"]["nfe_per_sample"] is None
    assert _row_of(table([result]), "task: negation_error") == ["–", "0"]
