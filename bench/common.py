"""Shared by the bench scripts: machine description, training speed measured in turns, and writing results to
bench/results/<name>.json."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on (they are only comparable on the same machine)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            # bf16 autocast (precision auto) pays off only where the CPU computes bf16 natively
            "native_bf16": bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            # other jobs on the machine slow every number down: record how busy it was when the result was written
            "load_average_1m_5m": list(os.getloadavg()[:2]) if hasattr(os, "getloadavg") else None}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"machine": machine_info(), **payload}, indent=2) + "\n")
    tmp.replace(path)
    return path


def steps_per_s_in_turns(steps_of: dict[str, Callable[[int], None]], steps: int, rounds: int) -> dict[str, float]:
    """Training steps/s of each ``step(i)`` callable, measured in alternating turns of ``steps`` steps (after one
    warm-up step each), so a changing load on the machine slows every contestant alike."""
    for step in steps_of.values():
        step(0)
    seconds = dict.fromkeys(steps_of, 0.0)
    for r in range(rounds):
        for name, step in steps_of.items():
            start = time.perf_counter()
            for i in range(steps):
                step(1 + r * steps + i)
            seconds[name] += time.perf_counter() - start
    return {name: steps * rounds / s for name, s in seconds.items()}
