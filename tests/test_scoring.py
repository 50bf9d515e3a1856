"""`genzoo score`: per-example anomaly scores, bits/dim in the likelihood convention, AUROC, CSV, and clear errors."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli import app
from genzoo.contract import DataKind
from genzoo.errors import DataError, GenzooError
from genzoo.eval import auroc, score
from genzoo.registry import build_model


def test_auroc_is_the_probability_an_outlier_scores_higher() -> None:
    gen = torch.Generator().manual_seed(0)
    inl, out = torch.randn(40, generator=gen).round(), (torch.randn(30, generator=gen) + 1).round()  # ties
    pairs = (out[None, :] > inl[:, None]).double() + 0.5 * (out[None, :] == inl[:, None]).double()
    assert auroc(inl, out) == pytest.approx(float(pairs.mean()), abs=1e-12)
    assert auroc(torch.zeros(3), torch.ones(3)) == 1.0


@pytest.fixture(scope="module")
def image_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("score") / "gmm"
    return genzoo.train("gmm", tiny_dataset(DataKind.IMAGE), out=out, overrides={"components": [1, 2]}, **FAST)


def test_scores_are_the_nll_and_bits_per_dim_follow_the_convention(image_run: Path, tmp_path: Path) -> None:
    model = genzoo.load(image_run)
    x = tiny_dataset(DataKind.IMAGE).test.x
    result = score(model, x, ood="noise", out=tmp_path / "s.csv")
    assert torch.allclose(result.scores, -model.log_likelihood(x).values)
    # a density on 17 levels: bits/dim = (NLL of the density + D log 16) / (D ln 2)
    dims = model.data.dims
    expected = (result.scores + dims * math.log(16)) / (dims * math.log(2))
    assert torch.allclose(result.bits_per_dim, expected, atol=1e-5)
    assert result.auroc == pytest.approx(auroc(result.scores, result.ood_scores)) and result.auroc > 0.99
    rows = list(csv.DictReader((tmp_path / "s.csv").open()))
    assert len(rows) == 2 * len(x) and {r["set"] for r in rows} == {"in", "ood"}
    assert float(rows[0]["nll_nats"]) == pytest.approx(float(result.scores[0]), rel=1e-5)


def test_other_data_is_resized_and_snapped_to_the_models_levels(image_run: Path, tmp_path: Path) -> None:
    folder = tmp_path / "pngs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(folder / f"{i}.png")
    result = score(image_run, split="test", ood=str(folder), out=None)
    assert result.ood_scores is not None and len(result.ood_scores) >= 1
    assert any("snapped to the model's 17 levels" in note for note in result.notes)


def test_scoring_errors_name_the_problem(image_run: Path) -> None:
    with pytest.raises(DataError, match=r"shape \(2,\).*\(1, 8, 8\)"):
        score(image_run, "toy:moons")
    bad = tiny_dataset(DataKind.IMAGE).test.x[:4].clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(DataError, match="NaN"):
        score(image_run, bad)
    gan = build_model("dcgan", tiny_dataset(DataKind.IMAGE).info, {})
    with pytest.raises(GenzooError, match="cannot anomaly score"):
        score(gan, "digits")


def test_the_command_writes_a_csv_and_reports_the_auroc(image_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "scores.csv"
    result = CliRunner().invoke(app, ["score", str(image_run), "--split", "test", "--ood", "noise", "--out", str(out)],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "AUROC" in result.output and out.exists()
    assert out.read_text().splitlines()[0] == "set,index,nll_nats,bits_per_dim"
