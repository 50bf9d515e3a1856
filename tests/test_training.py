"""Trainer, run directory and persistence: determinism, crash safety, NaN handling, hostile files."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import DataKind
from genzoo.errors import ConfigError, NonFiniteError, RunDirError
from genzoo.io import load_tensors
from genzoo.models.vae.vae import VAE
from genzoo.runs import checkpoint as checkpoint_module
from genzoo.training import parse_budget

SMALL_VAE = {"latent_dim": 4, "width": 8}


def _vae_run(out: Path, steps: int, resume: bool = False, seed: int = 0, **settings: object) -> Path:
    return genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=steps, out=out, seed=seed, overrides=SMALL_VAE,
                        resume=resume, **{**FAST, **settings})


def _weights(run: Path, which: str = "last") -> dict[str, torch.Tensor]:
    return load_tensors(run / which / "model.safetensors")


def test_same_seed_same_weights_and_other_seed_differs(tmp_path: Path) -> None:
    a, b = _vae_run(tmp_path / "a", 5), _vae_run(tmp_path / "b", 5)
    c = _vae_run(tmp_path / "c", 5, seed=1)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert any(not torch.equal(wa[k], wc[k]) for k in wa)


def test_run_directory_layout_and_config(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 4, ema_decay=0.9)
    config = genzoo.read_config(run)
    assert config["model"] == "vae" and config["hparams"]["latent_dim"] == 4 and config["seed"] == 0
    assert config["data"]["info"]["levels"] == 17 and config["train"]["ema_decay"] == 0.9
    for path in ("last/model.safetensors", "last/ema.safetensors", "last/optimizers.safetensors",
                 "last/trainer.json", "best/model.safetensors", "metrics.jsonl", "samples/latest.png"):
        assert (run / path).is_file(), path
    # atomic writes go through private temp files, but the results are as readable as any new file
    umask = os.umask(0)
    os.umask(umask)
    assert (run / "config.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert (run / "last" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~umask
    # EMA weights are what load() gives by default, and they differ from the raw weights
    ema, raw = genzoo.load(run, "last"), genzoo.load(run, "last", ema=False)
    assert ema.provenance["weights"] == "ema" and raw.provenance["weights"] == "raw"
    assert not torch.equal(ema.sample(4, seed=0), raw.sample(4, seed=0))


def test_existing_run_is_not_overwritten_without_resume(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 2)
    before = _weights(run)
    with pytest.raises(RunDirError, match="--resume"):
        _vae_run(run, 4)
    assert all(torch.equal(before[k], v) for k, v in _weights(run).items())


def test_resume_refuses_other_hyperparameters(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 2)
    with pytest.raises(RunDirError, match="hparams"):
        genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=4, out=run, overrides={"latent_dim": 5},
                     resume=True, **FAST)


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    run = _vae_run(tmp_path / "run", 2)
    saved = _weights(run)
    real_save = checkpoint_module.save_tensors
    calls = {"n": 0}

    def crash_on_second_file(path: Path, tensors: dict) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (simulated)")
        real_save(path, tensors)

    monkeypatch.setattr(checkpoint_module, "save_tensors", crash_on_second_file)
    with pytest.raises(OSError, match="simulated"):
        _vae_run(run, 4, resume=True)
    model = genzoo.load(run, "last")
    assert model.provenance["step"] == 2
    assert all(torch.equal(saved[k], v) for k, v in _weights(run).items())


def test_interrupted_directory_swap_falls_back_to_the_old_copy(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 2)
    os.replace(run / "last", run / ".last.old")  # the state between the two renames of a swap
    assert genzoo.load(run, "last").provenance["step"] == 2


def test_nan_loss_stops_with_a_clear_message_and_keeps_last_good(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real = VAE.elbo_terms

    def poisoned(self: VAE, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rec, kl = real(self, x, eps)
        return rec * float("nan") if self.training and poisoned.calls >= 3 else rec, kl

    poisoned.calls = 0  # type: ignore[attr-defined]
    original_step = VAE.training_step

    def counting_step(self: VAE, *args: object) -> dict:
        out = original_step(self, *args)
        poisoned.calls += 1  # type: ignore[attr-defined]
        return out

    monkeypatch.setattr(VAE, "elbo_terms", poisoned)
    monkeypatch.setattr(VAE, "training_step", counting_step)
    with pytest.raises(NonFiniteError, match=r"step 3: loss .* is nan.*last good checkpoint \(step 2\)"):
        _vae_run(tmp_path / "run", 10, checkpoint_every=2)
    model = genzoo.load(tmp_path / "run", "last")
    assert model.provenance["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Exploit:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def test_planted_pickle_never_executes(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 2)
    marker = tmp_path / "pwned"
    exploit = _Exploit()
    exploit.marker = marker  # type: ignore[attr-defined]
    payload = pickle.dumps(exploit)
    (run / "last" / "model.pt").write_bytes(payload)  # a decoy other tools might load
    (run / "best" / "model.safetensors").write_bytes(payload)  # and a pickle posing as safetensors
    (run / "last" / "optimizers.safetensors").write_bytes(payload)
    with pytest.raises(RunDirError, match="not a valid safetensors file"):
        genzoo.load(run)
    genzoo.load(run, "last")  # the untouched weights still load; the decoy is ignored
    with pytest.raises(RunDirError, match=r"optimizers\.safetensors"):
        _vae_run(run, 4, resume=True)
    assert not marker.exists()


def test_corrupt_config_is_a_clear_error(tmp_path: Path) -> None:
    run = _vae_run(tmp_path / "run", 2)
    (run / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match=r"config\.json"):
        genzoo.load(run)
    with pytest.raises(RunDirError, match="no such run"):
        genzoo.load(tmp_path / "missing")


def test_budget_parsing_and_budget_stops_training(tmp_path: Path) -> None:
    assert parse_budget("90s") == 90 and parse_budget("10m") == 600 and parse_budget("1.5h") == 5400
    assert parse_budget("45") == 45
    with pytest.raises(ConfigError):
        parse_budget("ten minutes")
    run = genzoo.train("vae", tiny_dataset(DataKind.IMAGE), budget="1s", out=tmp_path / "run",
                       overrides=SMALL_VAE, **FAST)
    step = genzoo.load(run, "last").provenance["step"]
    assert 0 < step < 100_000


def test_unknown_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="neither a hyperparameter"):
        genzoo.train("vae", "digits", steps=1, overrides={"nope": 1})
    with pytest.raises(ConfigError, match="unknown model"):
        genzoo.train("no-such-model", "digits", steps=1)
    with pytest.raises(ConfigError, match="latent_dim"):
        genzoo.train("vae", "digits", steps=1, overrides={"latent_dim": "many"})


def test_cli_bad_data_exits_nonzero_with_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "genzoo", "train", "vae", "--data", str(tmp_path / "nothing"),
                           "--steps", "1", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "names nothing" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_train_sample_info_roundtrip(tmp_path: Path) -> None:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "genzoo"]
    subprocess.run([*cmd, "train", "vae", "--data", "digits", "--steps", "3", "--out", str(out), "--quiet",
                    "--set", "latent_dim=3", "--set", "batch_size=8"], check=True, env=env, timeout=120)
    assert genzoo.read_config(out)["hparams"]["latent_dim"] == 3
    assert genzoo.read_config(out)["train"]["batch_size"] == 8
    subprocess.run([*cmd, "sample", str(out), "-n", "5", "--out", str(tmp_path / "s.npy")], check=True, env=env,
                   timeout=120)
    import numpy as np

    arr = np.load(tmp_path / "s.npy", allow_pickle=False)
    assert arr.shape == (5, 1, 8, 8) and arr.min() >= 0 and arr.max() <= 1
    # equal up to float rounding: the subprocess runs with another thread count
    assert np.allclose(arr, genzoo.load(out).sample(5, seed=0).numpy(), atol=1e-6)
    info = subprocess.run([*cmd, "info", str(out), "--json"], capture_output=True, text=True, env=env, timeout=120)
    assert info.returncode == 0 and '"model": "vae"' in info.stdout


def test_logged_losses_average_over_the_steps_that_reported_them(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """WGAN-GP reports g_loss only every n_critic steps: its logged mean must not be diluted by the other steps."""
    from genzoo.runs import RunDir
    from genzoo.training.trainer import Trainer

    reported: list[dict[str, float]] = []
    original = Trainer._train_step

    def recording(self: Trainer) -> dict[str, float]:
        reported.append(original(self))
        return reported[-1]

    monkeypatch.setattr(Trainer, "_train_step", recording)
    run = genzoo.train("wgan-gp", tiny_dataset(DataKind.VECTOR), steps=10, out=tmp_path / "w",
                       overrides={"n_critic": 5}, **{**FAST, "log_every": 10})
    logged = [m for m in RunDir(run).metrics() if m["split"] == "train"][-1]
    g_values = [r["g_loss"] for r in reported if "g_loss" in r]
    assert len(g_values) == 2
    assert logged["g_loss"] == pytest.approx(sum(g_values) / 2, rel=1e-6)
    assert logged["d_loss"] == pytest.approx(sum(r["d_loss"] for r in reported) / 10, rel=1e-6)


def test_threads_option_sets_the_torch_thread_count() -> None:
    from typer.testing import CliRunner

    from genzoo.cli import app

    before = torch.get_num_threads()
    try:
        result = CliRunner().invoke(app, ["--threads", "3", "list"])
        assert result.exit_code == 0 and "vae" in result.output
        assert torch.get_num_threads() == 3
        assert CliRunner().invoke(app, ["--threads", "0", "list"]).exit_code != 0
    finally:
        torch.set_num_threads(before)
