"""Experiment tracking: ``tracker="mlflow"`` logs a run's parameters, metric history, previews and final weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import DataKind
from genzoo.errors import ConfigError
from genzoo.training import TRACKERS, Tracker
from genzoo.training.logging import MetricsLogger, flatten

pytest.importorskip("mlflow")

SMOKE = {"latent_dim": 4, "width": 8}


def _client(uri: str) -> Any:
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(scope="module")
def uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module (creating its tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def test_mlflow_gets_params_metric_history_samples_and_weights(tmp_path: Path, uri: str) -> None:
    settings = {**FAST, "sample_every": 2, "tracker": "mlflow", "tracking_uri": uri, "experiment": "digits-vae"}
    run = genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=3, out=tmp_path / "run", overrides=SMOKE,
                       **settings)
    client = _client(uri)
    run_id = json.loads((run / "mlflow.json").read_text())["run_id"]
    record = client.get_run(run_id)
    assert record.info.status == "FINISHED"
    assert record.info.run_name == "run"
    assert client.get_experiment(record.info.experiment_id).name == "digits-vae"
    params = record.data.params
    assert params["model"] == "vae" and params["hparams.latent_dim"] == "4" and params["train.batch_size"] == "16"
    losses = [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")]
    logged = [(r["step"], r["loss"]) for r in genzoo.RunDir(run).metrics() if r["split"] == "train"]
    assert [s for s, _ in sorted(losses)] == [s for s, _ in logged] == [1, 2, 3]  # every step's loss
    assert [v for _, v in sorted(losses)] == pytest.approx([v for _, v in logged], rel=1e-6)
    artifacts = {a.path for folder in ("samples", "weights") for a in client.list_artifacts(run_id, folder)}
    assert {"samples/step-0000002.png", "weights/model.safetensors", "weights/config.json"} <= artifacts
    store = Path(uri.removeprefix("sqlite:///")).parent  # artifacts beside the database, not in the working dir
    assert record.info.artifact_uri.startswith((store / "mlartifacts").as_uri())


def test_a_resumed_run_continues_its_mlflow_run(tmp_path: Path, uri: str) -> None:
    data = tiny_dataset(DataKind.VECTOR)
    run = genzoo.train("vae", data, steps=2, out=tmp_path / "run", overrides=SMOKE,
                       **{**FAST, "tracker": "mlflow", "tracking_uri": uri, "experiment": "resumed"})
    genzoo.train(None, data, steps=4, out=run, resume=True)
    client = _client(uri)
    runs = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(runs[0].info.run_id, "train/loss")] == [1, 2, 3, 4]


def test_trackers_are_pluggable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str, Any]] = []

    class Recorder(Tracker):
        def __init__(self, tracking_uri: str | None, experiment: str) -> None:
            seen.append(("init", experiment))

        def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
            seen.append(("start", config["model"]))

        def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
            seen.append((split, step))

        def finish(self, run_dir: Path, failed: bool) -> None:
            seen.append(("finish", failed))

    monkeypatch.setitem(TRACKERS, "recorder", Recorder)
    genzoo.train("vae", tiny_dataset(DataKind.VECTOR), steps=2, out=tmp_path / "run", overrides=SMOKE,
                 **{**FAST, "tracker": "recorder", "experiment": "x"})
    assert seen == [("init", "x"), ("start", "vae"), ("train", 1), ("train", 2), ("val", 2), ("finish", False)]
    with pytest.raises(ConfigError, match="unknown tracker 'nope'"):
        genzoo.train("vae", "digits", steps=1, out=tmp_path / "bad", tracker="nope")
    assert not (tmp_path / "bad").exists()


def test_a_process_that_does_not_write_logs_nothing(tmp_path: Path) -> None:
    calls: list[str] = []

    class Recorder(Tracker):
        def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
            calls.append(split)

    logger = MetricsLogger(tmp_path, [Recorder()], enabled=False)
    logger.begin({}, resumed=False)
    logger.log(1, "train", {"loss": 1.0})
    logger.close()
    assert calls == [] and not (tmp_path / "metrics.jsonl").exists()


def test_params_are_flattened_with_dots() -> None:
    assert flatten({"a": {"b": 1, "c": {"d": [2]}}, "e": None}) == {"a.b": 1, "a.c.d": [2], "e": None}
