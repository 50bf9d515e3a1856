"""The arena report in a real browser: headless Chromium renders report.html to a screenshot that is not blank.
Skipped when no Chromium is installed (CI installs Debian's: apt-get install -y chromium)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import tiny_dataset
from genzoo.contract import DataKind
from genzoo.selection.arena import arena

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(BROWSER is None, reason="no chromium installed (apt-get install -y chromium)")
def test_the_report_renders_in_headless_chromium(tmp_path: Path) -> None:
    out = tmp_path / "arena"
    arena(tiny_dataset(DataKind.VECTOR), budget="1s", models=["gmm"], out=out)  # the baselines: fitted in a second
    shot = tmp_path / "report.png"
    command = [BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'p'}",
               "--window-size=1200,2400", f"--screenshot={shot}", (out / "report.html").resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2400, 1200)
    ink = (pixels < 200).any(axis=2)  # anything darker than a light grey: text, plots, pictures
    assert ink.mean() > 0.01, "the screenshot is (nearly) blank"
    assert ink[: 2400 // 4].any(axis=1).sum() > 50  # the top quarter has many lines of content (title, advice)
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert colours > 100  # rendered images and plots, not just black text on white
