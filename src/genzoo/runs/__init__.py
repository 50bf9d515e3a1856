"""Run directories: :class:`RunDir` owns every file of a run; :func:`load` rebuilds a model from one (or from a
pretrained source such as ``hf:gpt2``) from safetensors, never from a pickle."""

from genzoo.runs.rundir import CHECKPOINTS, RunDir, check_which, load, pretrained_class, resolve_class


def read_config(run_dir: str) -> dict:
    """The parsed ``config.json`` of a run directory (a clear error if it is missing or malformed)."""
    return RunDir(run_dir).config


__all__ = ["CHECKPOINTS", "RunDir", "check_which", "load", "pretrained_class", "read_config", "resolve_class"]
