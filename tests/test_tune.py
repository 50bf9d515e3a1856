"""genzoo tune: search spaces declared next to each Config, studies on Optuna (best run, resume, two workers on one
SQLite storage, pruning), the validation-split metrics, and one clear error per bad argument."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import optuna
import pytest
import torch
from pydantic import Field
from typer.testing import CliRunner

from conftest import three_clusters
from genzoo.cli.app import app
from genzoo.contract import DataKind, GenerativeModel, ModelConfig
from genzoo.data.specs import load_dataset
from genzoo.errors import ConfigError
from genzoo.eval.runner import model_likelihood
from genzoo.metrics import frechet_distance
from genzoo.registry import model_class, model_names
from genzoo.runs import RunDir, load
from genzoo.searchspace import Choice, IntRange, LogUniform, Uniform, check_space, default_space
from genzoo.tuning import PruningReporter, split_metric, tune

#: a VAE small enough that a 20-step trial takes about a second
TINY_VAE = {"width": 8, "batch_size": 32, "val_examples": 64}
DECLARED = ("dcgan", "wgan-gp", "vae", "ddpm", "realnvp", "gpt", "made", "pixelcnn")


# ----- search spaces -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", model_names())
def test_every_model_has_a_valid_search_space(name: str) -> None:
    cls = model_class(name)
    space = cls.tuning_space()
    check_space(space, cls.Config, name)  # names are fields, extremes are accepted values
    if name in DECLARED:
        assert len(cls.search_space) >= 4 and "lr" in cls.search_space
    elif not cls.search_space and "lr" in cls.Config.model_fields:
        assert space == default_space(cls.Config) and list(space) == ["lr"]


class _Cfg(ModelConfig):
    lr: float = Field(2e-3, gt=0)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    depth: int = Field(2, ge=1)


def test_check_space_names_the_bad_entry() -> None:
    check_space({"lr": LogUniform(1e-4, 1e-1), "dropout": Uniform(0.0, 0.5), "depth": IntRange(1, 4)}, _Cfg, "m")
    with pytest.raises(ConfigError, match="'widht' is not a hyperparameter"):
        check_space({"widht": Choice(8, 16)}, _Cfg, "m")
    with pytest.raises(ConfigError, match=r"dropout=1\.0 is not a valid value"):
        check_space({"dropout": Uniform(0.0, 1.0)}, _Cfg, "m")  # lt=1: the upper end is refused
    with pytest.raises(ConfigError, match="depth=0"):
        check_space({"depth": IntRange(0, 3)}, _Cfg, "m")
    with pytest.raises(ConfigError, match="must be LogUniform"):
        check_space({"lr": (1e-4, 1e-2)}, _Cfg, "m")  # type: ignore[dict-item]


def test_a_model_declaring_a_bad_space_fails_when_defined() -> None:
    with pytest.raises(ConfigError, match="search space of 'test-bad-space': 'width' is not a hyperparameter"):
        class BadSpace(GenerativeModel):
            name = "test-bad-space"
            Config = _Cfg
            data_kinds = frozenset({DataKind.VECTOR})
            search_space: ClassVar[dict[str, Any]] = {"width": Choice(8, 16)}


def test_default_space_is_a_decade_around_the_default_lr() -> None:
    assert default_space(_Cfg) == {"lr": LogUniform(2e-4, 2e-2)}

    class NoDefault(ModelConfig):
        lr: float | None = None

    class NoLr(ModelConfig):
        width: int = 8

    assert default_space(NoDefault) == {"lr": LogUniform(1e-5, 1e-2)}
    assert default_space(NoLr) == {}


class _FakeTrial:
    """Records how a distribution asks Optuna for a value."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def suggest_float(self, name: str, low: float, high: float, log: bool = False) -> float:
        self.calls.append(("float", name, low, high, log))
        return low

    def suggest_int(self, name: str, low: int, high: int, log: bool = False) -> int:
        self.calls.append(("int", name, low, high, log))
        return low

    def suggest_categorical(self, name: str, choices: tuple[Any, ...]) -> Any:
        self.calls.append(("categorical", name, tuple(choices)))
        return choices[0]


def test_distributions_ask_optuna_for_the_declared_range() -> None:
    trial = _FakeTrial()
    LogUniform(1e-4, 1e-2).suggest(trial, "lr")
    Uniform(0.0, 0.3).suggest(trial, "dropout")
    IntRange(1, 5).suggest(trial, "depth")
    IntRange(2, 64, log=True).suggest(trial, "width")
    Choice("a", "b").suggest(trial, "kind")
    assert trial.calls == [("float", "lr", 1e-4, 1e-2, True), ("float", "dropout", 0.0, 0.3, False),
                           ("int", "depth", 1, 5, False), ("int", "width", 2, 64, True),
                           ("categorical", "kind", ("a", "b"))]
    assert IntRange(1, 5).contains(5) and IntRange(1, 5).contains(1) and not IntRange(1, 5).contains(6)
    assert LogUniform(1e-4, 1e-2).contains(1e-2) and not LogUniform(1e-4, 1e-2).contains(2e-2)


@pytest.mark.parametrize("make", [lambda: LogUniform(0.0, 1.0), lambda: LogUniform(1e-2, 1e-3),
                                  lambda: Uniform(1.0, 1.0), lambda: IntRange(0, 4, log=True), lambda: Choice(1),
                                  lambda: Choice((1, 2), 3)])
def test_malformed_distributions_are_refused(make: Any) -> None:
    with pytest.raises(ConfigError):
        make()


# ----- metrics on the validation split ---------------------------------------------------------------------------
class _Replay(GenerativeModel):
    """'Samples' that are the first examples of a fixed set: FD against that set is 0."""

    name = "test-replay"
    family = "test"
    Config = _Cfg
    data_kinds = frozenset({DataKind.VECTOR})

    def __init__(self, examples: torch.Tensor, info: Any) -> None:
        super().__init__(_Cfg(), info)
        self.register_buffer("examples", examples)

    def _sample(self, n: int, generator: torch.Generator, labels: Any, options: Any) -> torch.Tensor:
        return self.examples[:n]


def test_fd_metric_compares_samples_with_the_validation_split() -> None:
    dataset = three_clusters()
    val, test = dataset.examples("val").x, dataset.examples("test").x
    assert split_metric(_Replay(val, dataset.info), dataset, "fd", "val") == pytest.approx(0.0, abs=1e-6)
    on_test = split_metric(_Replay(val, dataset.info), dataset, "fd", "test")
    assert on_test == pytest.approx(frechet_distance(test.double(), val[: len(test)].double()), rel=1e-9)
    assert on_test > 1e-3


# ----- studies ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("tune") / "study"
    result = tune("vae", "digits", trials=3, steps_per_trial=20, metric="bits_per_dim", out=out,
                  overrides=TINY_VAE, seed=0)
    return out, result


def test_study_keeps_the_best_run_as_a_normal_run_directory(study: tuple[Path, Any]) -> None:
    out, result = study
    assert [t["number"] for t in result.trials] == [0, 1, 2]
    complete = {t["number"]: t["value"] for t in result.trials if t["state"] == "complete"}
    assert result.best_value == min(complete.values()) and complete[result.best_trial] == result.best_value
    best = out / "best"
    assert best.resolve() == (out / f"trial-{result.best_trial:04d}").resolve()
    model = load(best)  # what genzoo sample / eval read
    assert model.name == "vae" and model.config.width == 8
    assert {k: model.config.model_dump()[k] for k in result.best_params} == result.best_params
    val = load_dataset("digits").examples("val")  # the study scored the validation split, as genzoo eval scores
    assert model_likelihood(model, val, 0)["bits_per_dim"] == pytest.approx(result.best_value, rel=1e-9)
    record = json.loads((out / "tune.json").read_text())
    assert record["best"]["trial"] == result.best_trial and record["split"] == "val"
    page = (out / "study.html").read_text()
    assert "history.png" in page and (out / "history.png").stat().st_size > 0


def test_resuming_adds_trials_to_the_same_study(study: tuple[Path, Any]) -> None:
    out, first = study
    again = tune("vae", "digits", trials=5, steps_per_trial=20, metric="bits_per_dim", out=out,
                 overrides=TINY_VAE, seed=0, report=False)
    assert [t["number"] for t in again.trials] == [0, 1, 2, 3, 4]
    assert [t["params"] for t in again.trials[:3]] == [t["params"] for t in first.trials]
    assert [t["value"] for t in again.trials[:3]] == [t["value"] for t in first.trials]
    new = [t["params"] for t in again.trials[3:]]
    assert all(p not in [t["params"] for t in first.trials] for p in new)  # the sampler does not replay its draws
    assert sorted(p.name for p in out.glob("trial-*")) == [f"trial-{i:04d}" for i in range(5)]
    with pytest.raises(ConfigError, match="was started with metric='bits_per_dim'"):
        tune("vae", "digits", trials=6, steps_per_trial=20, metric="val_loss", out=out, overrides=TINY_VAE,
             storage=f"sqlite:///{out / 'study.db'}", study_name=first.study_name)


def test_two_workers_share_one_sqlite_storage(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    result = tune("vae", "digits", trials=4, steps_per_trial=10, metric="val_loss", out=tmp_path / "out",
                  storage=storage, workers=2, overrides=TINY_VAE, pruner="none", report=False)
    assert sorted(t["number"] for t in result.trials) == [0, 1, 2, 3]
    assert all(t["state"] == "complete" for t in result.trials)
    loaded = optuna.load_study(study_name=result.study_name, storage=storage)
    assert len({t.user_attrs["process"] for t in loaded.trials}) == 2  # both processes ran trials
    assert len({t.user_attrs["run"] for t in loaded.trials}) == 4
    for t in result.trials:  # val_loss: the best validation value of the run (what picked best/)
        run = RunDir(tmp_path / "out" / t["run"])
        assert run.trainer_state("last")["step"] == 10
        assert t["value"] == min(m["val_nelbo"] for m in run.metrics() if m["split"] == "val")


def test_pruning_stops_a_bad_trial_before_its_budget(tmp_path: Path) -> None:
    good = {"lr": 3e-3}
    result = tune("vae", "digits", trials=3, steps_per_trial=20, metric="val_loss", out=tmp_path,
                  space={"lr": LogUniform(1e-7, 1e-2)}, enqueue=[good, good, {"lr": 1e-7}], overrides=TINY_VAE,
                  report=False)
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "complete", "pruned"]
    pruned = result.trials[2]
    assert pruned["steps"] == 8  # stopped at the second validation, the first that may prune (20 steps / 5)
    assert RunDir(tmp_path / pruned["run"]).trainer_state("last")["step"] == 8  # a clean stop: last/ is written
    assert pruned["reported"] > max(t["reported"] for t in result.trials[:2])


def test_pruning_reporter_reports_and_stops() -> None:
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    reporter = PruningReporter(trial, "val_loss")
    assert reporter(1, {"val_loss": 5.0}) is False  # above the threshold, but the first report never prunes
    assert reporter(5, {"val_loss": 0.5}) is False
    assert reporter(10, {"other": 9.0}) is False  # the key is absent: nothing to report
    assert reporter(15, {"val_loss": math.nan}) is False
    assert reporter(20, {"val_loss": 2.0}) is True and reporter.pruned
    assert trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 5.0, 5: 0.5, 20: 2.0}


# ----- errors ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"metric": "fid"}, "unknown tuning metric 'fid'"),
    ({"model": "nope"}, "unknown model 'nope'"),
    ({"storage": "tune.db"}, "is not a database URL"),
    ({"storage": "nosuchdb://host/x"}, "cannot open storage"),
    ({"metric": "bits_per_dim", "model": "dcgan"}, "needs a likelihood"),
    ({"overrides": {"widht": 8}}, "'widht' is neither a hyperparameter"),
    ({"steps_per_trial": None}, "give each trial a budget"),
    ({"trials": 0}, "at least 1"),
    ({"pruner": "hyperband"}, "unknown pruner"),
])
def test_bad_arguments_are_one_clear_error(tmp_path: Path, kwargs: dict[str, Any], message: str) -> None:
    args = {"model": "vae", "data": "digits", "trials": 1, "steps_per_trial": 5, "out": tmp_path / "o", **kwargs}
    with pytest.raises(ConfigError, match=message):
        tune(**args)
    assert not any((tmp_path / "o").glob("trial-*"))


def test_cli_runs_a_study_and_prints_the_best(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["tune", "vae", "--data", "digits", "--trials", "1", "--steps-per-trial",
                                      "5", "--out", str(tmp_path), "--set", "width=8", "--set", "batch_size=16"])
    assert result.exit_code == 0, result.output
    assert "best: trial 0" in result.output and (tmp_path / "best" / "config.json").exists()
    bad = CliRunner().invoke(app, ["tune", "vae", "--data", "digits", "--metric", "fid", "--steps-per-trial", "5"])
    assert bad.exit_code != 0
