"""The arena: a complete results.json and a self-contained report.html on tiny data, resume after a crash, text
data, and the within-noise logic (mean ± standard error, ties reported as ties, baselines that win) on synthetic
numbers."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import tiny_dataset
from genzoo.cli.app import app
from genzoo.contract import DataKind
from genzoo.errors import ConfigError
from genzoo.runs import RunDir
from genzoo.selection import arena as arena_module
from genzoo.selection.arena import (
    METRIC,
    Stat,
    arena,
    distinct,
    leaderboard,
    leaders,
    pareto,
    recommend,
    summarize,
    trained_seconds,
)


@pytest.fixture(scope="module")
def image_arena(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, Any]]]:
    """One arena over three families (vae, gan and the classical baselines) on the tiny digits, 1 s each."""
    out = tmp_path_factory.mktemp("arena")
    with pytest.MonkeyPatch.context() as patch:  # the feature network's cache, as conftest's autouse fixture does
        patch.setenv("GENZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        results = arena(tiny_dataset(DataKind.IMAGE), budget="1s", models=["vae", "dcgan"], out=out)
    yield out, results


def test_an_arena_writes_complete_results(image_arena: tuple[Path, dict[str, Any]]) -> None:
    out, _ = image_arena
    saved = json.loads((out / "results.json").read_text())
    assert saved["finished"] and list(saved["models"]) == ["vae", "dcgan", "gmm", "kde"]
    assert {m["family"] for m in saved["models"].values()} == {"vae", "gan", "classical"}
    assert [name for name, m in saved["models"].items() if m["baseline"]] == ["gmm", "kde"]
    protocol = saved["protocol"]
    assert protocol["budget_seconds"] == 1.0 and protocol["seeds"] == [0] and protocol["n"] == 64
    assert protocol["feature_space"]["hash"] and saved["machine"]["torch_threads"] >= 1
    for name, model in saved["models"].items():
        entry = model["entries"]["0"]
        assert entry["status"] == "done" and entry["steps"] >= 1 and (out / entry["samples_file"]).is_file()
        assert entry["eval"]["protocol"]["n"] == 64 and RunDir(out / entry["run"]).exists()
        assert entry["eval"]["protocol"]["feature_space"] == protocol["feature_space"], name
        stats = saved["summary"][name]
        assert stats["fd"]["spread"] == "single seed" and stats["kid"]["se"] is not None  # KID's own spread
    assert "bits_per_dim" not in saved["summary"]["dcgan"] and "bits_per_dim" in saved["summary"]["vae"]
    goals = [r["goal"] for r in saved["recommendations"]]
    assert goals[:4] == ["quality", "diversity", "likelihood", "speed"] and "trade-off" in goals
    assert saved["rankings"]["fd"]["best"] in saved["models"]


class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict[str, str]] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(found)
        for key in ("src", "href"):
            if key in found and not found[key].startswith("data:"):
                self.external.append(found[key])


def test_the_report_is_self_contained_with_an_image_per_model(image_arena: tuple[Path, dict[str, Any]]) -> None:
    out, results = image_arena
    parser = _Images()
    parser.feed((out / "report.html").read_text())
    assert not parser.external  # nothing outside the file
    assert all(img["src"].startswith("data:image/png;base64,") for img in parser.images)
    alts = [img["alt"] for img in parser.images]
    for name in [*results["models"], "real data", "bar charts per metric", "Pareto plot", "training curves"]:
        assert name in alts, name
    text = (out / "report.html").read_text()
    assert "Recommendation" in text and "single seed" in text


def test_the_leaderboard_has_the_reference_and_every_model(image_arena: tuple[Path, dict[str, Any]]) -> None:
    _, results = image_arena
    table = leaderboard(results)
    names = list(table.columns[0].cells)
    assert names[0] == "real data (reference)" and len(names) == 1 + len(results["models"])
    headers = [str(c.header) for c in table.columns]
    for label in ("FD ↓", "KID×10³ ↓", "precision ↑", "recall ↑", "coverage ↑", "C2ST (0.5 best)", "bits/dim ↓",
                  "copy z (<-3 copies)", "samples/s ↑", "parameters", "steps"):
        assert label in headers
    assert any(cell.startswith("≤") for cell in table.columns[headers.index("bits/dim ↓")].cells)  # an ELBO
    transposed = leaderboard(results, by_metric=True)
    assert [str(c.header) for c in transposed.columns] == ["metric", *names]
    assert list(transposed.columns[0].cells) == headers[1:]


def _statuses(out: Path) -> dict[str, str]:
    saved = json.loads((out / "results.json").read_text())
    return {name: m["entries"].get("0", {}).get("status", "pending") for name, m in saved["models"].items()}


def test_resume_after_a_crash_skips_finished_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = tiny_dataset(DataKind.VECTOR), tmp_path / "arena"
    calls: list[str | None] = []
    real_train, real_evaluate = arena_module.train, arena_module.Arena.evaluate

    def counting_train(model: str | None, *args: Any, **kwargs: Any) -> Path:
        calls.append(model)
        return real_train(model, *args, **kwargs)

    def crash_on_gmm(self: arena_module.Arena, name: str, seed: int, progress: bool) -> dict[str, Any]:
        if name == "gmm":
            raise RuntimeError("simulated crash")
        return real_evaluate(self, name, seed, progress)

    monkeypatch.setattr(arena_module, "train", counting_train)
    monkeypatch.setattr(arena_module.Arena, "evaluate", crash_on_gmm)
    with pytest.raises(RuntimeError, match="simulated"):
        arena(data, budget="1s", models=["vae"], out=out, report=False)
    assert _statuses(out) == {"vae": "done", "gmm": "trained", "kde": "pending"}
    vae_before = json.loads((out / "results.json").read_text())["models"]["vae"]
    with pytest.raises(ConfigError, match="--resume"):
        arena(data, budget="1s", models=["vae"], out=out)
    with pytest.raises(ConfigError, match="budget_seconds"):
        arena(data, budget="2s", models=["vae"], out=out, resume=True)
    monkeypatch.setattr(arena_module.Arena, "evaluate", real_evaluate)
    calls.clear()
    results = arena(data, budget="1s", models=["vae"], out=out, resume=True, report=False)
    assert calls == ["kde"]  # vae finished, gmm trained: neither is trained again
    assert _statuses(out) == {"vae": "done", "gmm": "done", "kde": "done"} and results["finished"]
    assert results["models"]["vae"] == vae_before


def test_an_interrupted_training_run_continues_with_the_budget_left(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    data, out = tiny_dataset(DataKind.VECTOR), tmp_path / "arena"
    real_train = arena_module.train
    given: list[dict[str, Any]] = []

    def dies_half_way(model: str | None, *args: Any, **kwargs: Any) -> Path:
        real_train(model, *args, **{**kwargs, "budget": 1.0})
        raise KeyboardInterrupt  # a Ctrl-C after the first second of a 3 s budget

    def recording_train(model: str | None, *args: Any, **kwargs: Any) -> Path:
        given.append({"model": model, **kwargs})
        return real_train(model, *args, **kwargs)

    monkeypatch.setattr(arena_module, "train", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        arena(data, budget="3s", models=["vae"], out=out, report=False)
    run = RunDir(out / "runs" / "vae-seed0")
    steps_before, spent = run.trainer_state("last")["step"], trained_seconds(run)
    # wall-clock bounds are loose: on a loaded machine one step and the run's closing validation take a while
    assert _statuses(out)["vae"] == "pending" and 1.0 <= spent < 2.5
    monkeypatch.setattr(arena_module, "train", recording_train)
    arena(data, budget="3s", models=["vae"], out=out, resume=True, report=False)
    first = given[0]
    assert first["model"] is None and first["resume"] and first["budget"] == pytest.approx(3.0 - spent, abs=1e-6)
    assert run.trainer_state("last")["step"] > steps_before and 2.5 <= trained_seconds(run) < 4.5


def test_a_text_arena_compares_language_models_by_bits_per_char(tmp_path: Path) -> None:
    results = arena(tiny_dataset(DataKind.TOKENS), budget="1s", models=["lstm"], out=tmp_path / "text")
    assert list(results["models"]) == ["lstm"]  # no baseline for text
    stats = results["summary"]["lstm"]
    assert stats["bits_per_char"]["mean"] > 0 and stats["tokens_per_s"]["mean"] > 0
    assert results["recommendations"][0]["metric"] == "bits_per_char"
    assert "<pre>" in (tmp_path / "text" / "report.html").read_text()


def test_bad_arena_requests_are_one_clear_error_before_any_work(tmp_path: Path) -> None:
    text, out = tiny_dataset(DataKind.TOKENS), tmp_path / "arena"
    with pytest.raises(ConfigError, match="'dcgan' cannot join an arena on tokens data"):
        arena(text, budget="1s", models=["dcgan"], out=out)
    with pytest.raises(ConfigError, match="seeds"):
        arena(text, budget="1s", seeds=0, out=out)
    with pytest.raises(ConfigError, match="budget"):
        arena(text, budget=None, out=out)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="at least 10"):
        arena(text, budget="1s", n=3, out=out)
    assert not out.exists()


def test_the_arena_command_prints_the_leaderboard_and_the_report(tmp_path: Path) -> None:
    out, data = tmp_path / "arena", tmp_path / "blobs.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32))
    result = CliRunner().invoke(app, ["arena", "--data", f"npz:{data}", "--budget", "1s", "--models", "gmm", "--out",
                                      str(out)])
    assert result.exit_code == 0, result.output
    assert "[2/2] kde (seed 0)" in result.output and "genzoo arena" in result.output
    assert "report.html" in result.output.replace("\n", "")  # the console wraps long paths (xdist's are longer)
    assert (out / "report.html").is_file()


# ----- the noise logic on synthetic numbers ------------------------------------------------------------------------
def test_summaries_are_mean_and_standard_error_over_seeds() -> None:
    stat = summarize([1.0, 2.0, 4.0], [None, None, None])
    assert stat.mean == pytest.approx(7 / 3) and stat.n == 3
    assert stat.se == pytest.approx(math.sqrt((16 / 9 + 1 / 9 + 25 / 9) / 2 / 3))
    assert summarize([0.5], [0.1]) == Stat(0.5, 0.1, 1, "the metric's own spread (single seed)")
    assert summarize([0.5], [None]) == Stat(0.5, None, 1, "single seed")


def test_two_models_are_distinct_only_beyond_two_standard_errors_of_the_difference() -> None:
    a = Stat(1.0, 0.1, 3, "")
    limit = 2 * math.sqrt(0.1**2 + 0.1**2)
    assert distinct(a, Stat(1.0 + limit * 0.99, 0.1, 3, "")) is False
    assert distinct(a, Stat(1.0 + limit * 1.01, 0.1, 3, "")) is True
    assert distinct(a, Stat(5.0, None, 1, "")) is None  # no spread: not judged
    assert distinct(Stat(100.0, None, 1, ""), Stat(120.0, None, 1, ""), timing=True) is False  # within 25%
    assert distinct(Stat(100.0, None, 1, ""), Stat(140.0, None, 1, ""), timing=True) is True


def test_leaders_follow_each_metrics_direction() -> None:
    stats = {"a": Stat(0.9, 0.01, 3, ""), "b": Stat(0.55, 0.01, 3, ""), "c": Stat(0.7, 0.01, 3, "")}
    assert leaders(stats, METRIC["c2st"])["best"] == "b"  # closest to 0.5
    assert leaders(stats, METRIC["recall"])["order"] == ["a", "c", "b"]
    assert leaders(stats, METRIC["fd"])["order"] == ["b", "c", "a"]
    assert leaders(stats, METRIC["parameters"]) is None


def _summary(**fd: tuple[float, float | None]) -> dict[str, dict[str, Stat]]:
    return {name: {"fd": Stat(m, se, 3 if se else 1, ""), "samples_per_s": Stat(1000.0 * (i + 1), None, 1, "")}
            for i, (name, (m, se)) in enumerate(fd.items())}


def test_ties_are_reported_as_ties_and_a_winning_baseline_is_said() -> None:
    recs, notes = recommend(_summary(ddpm=(1.0, 0.1), gmm=(1.1, 0.1), vae=(3.0, 0.1)), DataKind.IMAGE, {"gmm"})
    quality = next(r for r in recs if r["goal"] == "quality")
    assert quality["models"] == ["ddpm", "gmm"] and "within noise" in quality["recommend"]
    assert any("within noise of each other" in n and "ddpm, gmm" in n for n in notes)
    assert any("baseline gmm ties for best" in n for n in notes)
    recs, notes = recommend(_summary(ddpm=(1.0, 0.1), gmm=(0.2, 0.1), vae=(3.0, 0.1)), DataKind.IMAGE, {"gmm"})
    assert next(r for r in recs if r["goal"] == "quality")["models"] == ["gmm"]
    assert any("baseline gmm wins" in n for n in notes) and not any("within noise" in n for n in notes)


def test_with_one_seed_kids_own_spread_checks_the_quality_ranking_and_copying_is_flagged() -> None:
    summary = _summary(kde=(0.6, None), dcgan=(1.7, None), ddpm=(10.0, None))
    for name, (kid, spread, copy_z) in {"kde": (31.0, 18.0, -4.0), "dcgan": (32.0, 25.0, 20.0),
                                        "ddpm": (650.0, 50.0, 22.0)}.items():
        summary[name] |= {"kid": Stat(kid, spread, 1, ""), "copy_z": Stat(copy_z, None, 1, "")}
    recs, notes = recommend(summary, DataKind.IMAGE, {"kde"})
    quality = next(r for r in recs if r["goal"] == "quality")
    assert quality["models"] == ["kde"]
    assert "within noise of dcgan" in quality["reason"] and "copy training examples (copy z -4.0" in quality["reason"]
    assert "quality: kde, dcgan are within noise of each other on KID×10³ ↓ (its spread over subsets)" in notes
    summary["dcgan"]["kid"] = Stat(200.0, 25.0, 1, "")
    quality = next(r for r in recommend(summary, DataKind.IMAGE, set())[0] if r["goal"] == "quality")
    assert "ahead of every other model beyond noise" in quality["reason"]


def test_a_single_seed_without_spread_is_said_to_be_untested() -> None:
    recs, notes = recommend(_summary(ddpm=(1.0, None), vae=(3.0, None)), DataKind.IMAGE, set())
    quality = next(r for r in recs if r["goal"] == "quality")
    assert quality["models"] == ["ddpm"] and "not tested against noise" in quality["reason"] and not notes


def test_the_pareto_front_keeps_models_no_other_beats_on_both() -> None:
    summary = _summary(slow_good=(1.0, None), middle=(2.0, None), fast_bad=(3.0, None))
    summary["dominated"] = {"fd": Stat(2.5, None, 1, ""), "samples_per_s": Stat(1500.0, None, 1, "")}
    assert pareto(summary, "fd", "samples_per_s") == ["fast_bad", "middle", "slow_good"]
