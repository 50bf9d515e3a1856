"""Where training numbers go: ``metrics.jsonl`` (always), TensorBoard (when installed) and a rich progress bar."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class MetricsLogger:
    """Append one JSON object per line to ``metrics.jsonl``: {"step", "split", "time", ...metrics}."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.start = time.time()
        self.tensorboard = _tensorboard_writer(Path(run_dir) / "tensorboard")

    def log(self, step: int, split: str, metrics: dict[str, float]) -> None:
        record = {"step": step, "split": split, "time": round(time.time() - self.start, 3),
                  **{k: float(v) for k, v in metrics.items()}}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in metrics.items():
                self.tensorboard.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def _tensorboard_writer(directory: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(directory))


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
