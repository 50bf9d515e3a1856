"""Where training numbers go: ``metrics.jsonl`` (always), experiment trackers and a rich progress bar.

A :class:`Tracker` receives a run's settings, its metrics, its files (sample previews) and, at the end, its final
weights. TensorBoard (when installed) is always one; ``tracker=NAME`` adds one from :data:`TRACKERS` (``mlflow``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from genzoo.errors import ConfigError
from genzoo.io import read_json, write_json


class Tracker:
    """An experiment tracker: what a run logs besides ``metrics.jsonl``. Every hook may be left as a no-op."""

    def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        """The run starts (or, ``resumed``, continues) with ``config`` (its ``config.json``)."""

    def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        """Numbers of ``split`` (train, val, ...) at ``step``."""

    def log_file(self, path: Path, folder: str) -> None:
        """A file the run wrote (a sample preview), filed under ``folder``."""

    def finish(self, run_dir: Path, failed: bool) -> None:
        """The run stops: its final checkpoint is in ``run_dir / "last"`` unless it ``failed``."""


class TensorBoardTracker(Tracker):
    """Scalars to ``RUN/tensorboard`` (``tensorboard --logdir RUN``)."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    @classmethod
    def create(cls, run_dir: Path) -> TensorBoardTracker | None:
        """The tracker, or None when tensorboard is not installed (it is optional)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return None
        return cls(SummaryWriter(str(run_dir / "tensorboard")))

    def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"{split}/{key}", value, step)

    def finish(self, run_dir: Path, failed: bool) -> None:
        self.writer.close()


class MLflowTracker(Tracker):
    """One MLflow run per genzoo run: parameters (model, data, hyperparameters, trainer settings), metric
    histories as ``split/name``, sample previews under ``samples/`` and the final weights under ``weights/``.

    The store is ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else MLflow's local default (``sqlite:///mlflow.db``
    in the working directory). The MLflow run id is kept in ``RUN/mlflow.json``, so ``--resume`` continues the same
    MLflow run.
    """

    RECORD = "mlflow.json"

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=tracking_uri)
        self.experiment = experiment
        self.run_id: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any], resumed: bool) -> None:
        record = run_dir / self.RECORD
        if resumed and record.exists():  # parameters are already there (MLflow keeps them immutable)
            self.run_id = read_json(record)["run_id"]
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = (found.experiment_id if found else
                         self.client.create_experiment(self.experiment, artifact_location=self._artifact_root()))
        run = self.client.create_run(experiment_id, run_name=run_dir.name,
                                     tags={"genzoo.run_dir": str(run_dir.resolve()),
                                           "genzoo.model": str(config.get("model"))})
        self.run_id = run.info.run_id
        write_json(record, {"run_id": self.run_id, "experiment": self.experiment,
                            "tracking_uri": self.client.tracking_uri})
        from mlflow.entities import Param

        params = flatten({k: config.get(k) for k in ("model", "family", "seed", "hparams", "train")})
        params["data"] = config.get("data", {}).get("spec_text") or config.get("data", {}).get("spec")
        items = [Param(k, str(v)[:500]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 parameters per call
            self.client.log_batch(self.run_id, params=items[start : start + 100])

    def _artifact_root(self) -> str | None:
        """Artifacts of a database store go beside the database file (MLflow's default is ``./mlruns`` in
        whatever folder the process happens to run in); other stores keep their own default."""
        uri = str(self.client.tracking_uri)
        if not uri.startswith("sqlite:///"):
            return None
        return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlartifacts").as_uri()

    def log_metrics(self, step: int, split: str, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(f"{split}/{k}", float(v), now, step)
                                                    for k, v in metrics.items()])

    def log_file(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), folder)

    def finish(self, run_dir: Path, failed: bool) -> None:
        last = run_dir / "last"
        if not failed and last.is_dir():
            for name in ("model.safetensors", "ema.safetensors"):
                if (last / name).exists():
                    self.client.log_artifact(self.run_id, str(last / name), "weights")
            self.client.log_artifact(self.run_id, str(run_dir / "config.json"), "weights")
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists and scalars are leaves)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


#: trackers ``tracker=NAME`` can add: name -> factory(tracking_uri, experiment)
TRACKERS: dict[str, Any] = {"mlflow": MLflowTracker}


def make_trackers(run_dir: Path, name: str, tracking_uri: str | None, experiment: str) -> list[Tracker]:
    """TensorBoard (when installed) and the named tracker (``none``: no other)."""
    trackers: list[Tracker] = [t for t in [TensorBoardTracker.create(run_dir)] if t is not None]
    if name != "none":
        if name not in TRACKERS:
            raise ConfigError(f"unknown tracker '{name}' (have none, {', '.join(sorted(TRACKERS))})")
        trackers.append(TRACKERS[name](tracking_uri, experiment))
    return trackers


class MetricsLogger:
    """Append one JSON object per line to ``metrics.jsonl`` ({"step", "split", "time", ...metrics}) and pass the
    numbers, files and the end of the run on to the trackers. ``enabled=False``: a process that writes nothing (a
    data-parallel process other than process 0)."""

    def __init__(self, run_dir: Path, trackers: list[Tracker] | None = None, enabled: bool = True) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / "metrics.jsonl"
        self.start = time.time()
        self.trackers = trackers or []
        self.enabled = enabled

    def begin(self, config: dict[str, Any], resumed: bool) -> None:
        for tracker in self._active():
            tracker.start(self.run_dir, config, resumed)

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, "time": round(time.time() - self.start, 3),
                  **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        for tracker in self.trackers:
            tracker.log_metrics(step, split, metrics)

    def log_file(self, path: Path, folder: str) -> None:
        for tracker in self._active():
            tracker.log_file(path, folder)

    def close(self, failed: bool = False) -> None:
        for tracker in self._active():
            tracker.finish(self.run_dir, failed)
        self.trackers = []  # closed once

    def _active(self) -> list[Tracker]:
        return self.trackers if self.enabled else []


class ProgressBar:
    """A progress bar over steps (``--steps``) or seconds (``--budget``) showing loss, steps/s and ETA."""

    def __init__(self, enabled: bool, steps: int | None, budget: float | None, name: str, start_step: int) -> None:
        self.enabled = enabled
        self.by_time = steps is None
        self.start_step = start_step
        total = budget if self.by_time else steps
        self.progress = Progress(TextColumn(f"[bold]{name}[/]"), BarColumn(), TaskProgressColumn(),
                                 TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TextColumn("eta"),
                                 TimeRemainingColumn(), disable=not enabled)
        self.task = self.progress.add_task("train", total=total, completed=0 if self.by_time else start_step,
                                           info="")

    def __enter__(self) -> ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.__exit__(kind, err, tb)

    def update(self, step: int, elapsed: float, losses: dict[str, float], val: dict[str, float]) -> None:
        if not self.enabled:
            return
        shown = [k for k in losses if k != "lr_factor"][:2]
        info = " ".join(f"{k}={losses[k]:.4g}" for k in shown)
        info += f" | step {step} | {(step - self.start_step) / max(elapsed, 1e-9):.1f} it/s"
        self.progress.update(self.task, completed=elapsed if self.by_time else step, info=info)
