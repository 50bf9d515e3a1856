"""Bad input, one class at a time: each gets one clear error that names the problem, before anything is written,
and nothing already saved is lost. Resumes keep the run they continue."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli.app import app
from genzoo.contract import DataKind
from genzoo.data import load_dataset
from genzoo.errors import ConfigError, DataError, GenzooError, NonFiniteError, RunDirError
from genzoo.io import load_tensors
from genzoo.runs import RunDir
from genzoo.training import trainer as trainer_module

SMALL_VAE = {"latent_dim": 4, "width": 8}


def _vae(out: Path, steps: int, resume: bool = False, **settings: object) -> Path:
    options = {**FAST, **settings}
    return genzoo.train("vae", tiny_dataset(DataKind.IMAGE), steps=steps, out=out, overrides=SMALL_VAE,
                        resume=resume, **options)


def _same_weights(a: Path, b: Path, file: str = "model.safetensors") -> bool:
    wa, wb = load_tensors(a / "last" / file), load_tensors(b / "last" / file)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("batch_size", 0, "batch_size"), ("checkpoint_every", 0, "checkpoint_every"), ("eval_every", 0, "eval_every"),
    ("warmup_steps", -1, "warmup_steps"), ("ema_decay", 1.0, "ema_decay"), ("ema_decay", -0.1, "ema_decay"),
    ("budget", "0s", "budget"), ("budget", -5, "budget"), ("log_every", 0, "log_every"), ("precision", "fp8",
                                                                                         "precision"),
])
def test_bad_trainer_settings_are_refused_before_the_run_directory_exists(setting: str, value: object, named: str,
                                                                          tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=named):
        genzoo.train("vae", "digits", steps=2, out=out, overrides=SMALL_VAE, **{**FAST, setting: value})
    assert not out.exists()


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"image_size": 0}, {"steps": 2, "device": "tpu"},
                                    {"steps": 2, "device": "nonsense:9"}])
def test_bad_steps_image_size_and_device_are_refused_before_any_work(kwargs: dict, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        genzoo.train("vae", "digits", out=out, overrides=SMALL_VAE, **{**FAST, **kwargs})
    assert not out.exists()


def test_sampling_options_and_counts_are_checked(tmp_path: Path) -> None:
    model = genzoo.create("vae", "digits", **SMALL_VAE)
    with pytest.raises(GenzooError, match="at least 1"):
        model.sample(0)
    with pytest.raises(ConfigError, match="mode"):
        model.sample(2, mode="bogus")
    with pytest.raises(ConfigError, match="accepts: mode"):
        model.sample(2, steps=3)
    run = _vae(tmp_path / "run", 2)
    with pytest.raises(ConfigError, match="best, last"):
        genzoo.load(run, checkpoint="nope")


def test_resume_without_repeating_settings_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    settings = {"batch_size": 32, "ema_decay": 0.9, "warmup_steps": 3, "grad_clip": 0.5}
    whole = _vae(tmp_path / "whole", 6, **settings)
    _vae(tmp_path / "split", 3, **settings)
    # no setting repeated (the data is an in-memory Dataset, which a run cannot reload by its spec)
    split = genzoo.train(None, tiny_dataset(DataKind.IMAGE), steps=6, out=tmp_path / "split", resume=True)
    assert _same_weights(whole, split) and _same_weights(whole, split, "ema.safetensors")
    assert RunDir(split).config["train"]["batch_size"] == 32


def test_resume_refuses_a_setting_that_changes_the_run_and_records_one_that_does_not(tmp_path: Path) -> None:
    run = _vae(tmp_path / "run", 3, seed=3)
    before = load_tensors(run / "last" / "model.safetensors")
    with pytest.raises(RunDirError, match=r"batch_size=32.*batch_size=16"):
        _vae(run, 5, resume=True, batch_size=32)
    with pytest.raises(RunDirError, match="seed=0"):  # an explicit --seed 0 is not mistaken for "no seed given"
        _vae(run, 5, resume=True, seed=0)
    assert all(torch.equal(before[k], v) for k, v in load_tensors(run / "last" / "model.safetensors").items())
    _vae(run, 5, resume=True, eval_every=2)
    resumes = RunDir(run).config["resumes"]
    assert resumes[-1]["step"] == 3 and resumes[-1]["changed"]["eval_every"] == [10_000, 2]


def test_a_run_being_written_is_locked(tmp_path: Path) -> None:
    run = _vae(tmp_path / "run", 2)
    with RunDir(run).lock(), pytest.raises(RunDirError, match="another genzoo process"):
        _vae(run, 4, resume=True)
    assert genzoo.load(run, "last").provenance["step"] == 2


def test_data_specs_are_stored_absolute_so_runs_work_from_any_directory(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    gen = np.random.default_rng(0)
    np.savez(work / "blobs.npz", x=gen.normal(size=(200, 2)).astype(np.float32))
    monkeypatch.chdir(work)
    run = genzoo.train("vae", "npz:blobs.npz", steps=2, out=tmp_path / "run", overrides=SMALL_VAE, **FAST)
    data = RunDir(run).config["data"]
    assert data["spec"] == f"npz:{work / 'blobs.npz'}" and data["spec_text"] == "npz:blobs.npz"
    monkeypatch.chdir(tmp_path)
    genzoo.train(None, None, steps=3, out=run, resume=True)
    assert genzoo.load(run, "last").provenance["step"] == 3


def test_metrics_have_no_duplicate_rows_after_a_crash_and_resume(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = trainer_module.Trainer._save

    def crash_at_step_4(self: trainer_module.Trainer, name: str) -> None:
        if self.step == 4:
            raise OSError("disk full (simulated)")
        real_save(self, name)

    monkeypatch.setattr(trainer_module.Trainer, "_save", crash_at_step_4)
    with pytest.raises(OSError):
        _vae(tmp_path / "run", 4, checkpoint_every=2, eval_every=1)
    monkeypatch.setattr(trainer_module.Trainer, "_save", real_save)
    run = _vae(tmp_path / "run", 4, resume=True, checkpoint_every=2, eval_every=1)
    rows = [(r["step"], r["split"]) for r in RunDir(run).metrics()]
    assert len(rows) == len(set(rows)) and (4, "val") in rows and (3, "train") in rows


def test_the_last_step_on_a_checkpoint_still_validates_and_previews(tmp_path: Path) -> None:
    run = _vae(tmp_path / "run", 4, checkpoint_every=2, eval_every=10_000, sample_every=10_000)
    assert (run / "samples" / "latest.png").is_file() and (run / "samples" / "step-0000004.png").is_file()
    assert any(r["split"] == "val" and r["step"] == 4 for r in RunDir(run).metrics())


def test_exploding_weights_stop_training_even_when_losses_stay_finite(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteError, match=r"at step 5: the weights diverged"):
        genzoo.train("dcgan", tiny_dataset(DataKind.IMAGE), steps=30, out=tmp_path / "run",
                     overrides={"lr": 1e6, "latent_dim": 8, "width": 8}, divergence_every=5, **FAST)


@pytest.mark.parametrize(("labels", "message"), [([0, 1, 1_000_000_000] * 10, "at most 1000 classes"),
                                                  ([0, 2, 3] * 10, "skip class id"),
                                                  ([0.5, 1, 2] * 10, "integer class ids")])
def test_label_arrays_are_checked(labels: list, message: str, tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    np.savez(path, x=np.zeros((len(labels), 2), dtype=np.float32), y=np.array(labels))
    with pytest.raises(DataError, match=message):
        load_dataset(f"npz:{path}")


def _cli(args: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from genzoo.cli import main

    monkeypatch.setattr("sys.argv", ["genzoo", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_os_errors_and_hand_edited_files_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, err = _cli(["train", "vae", "--data", "digits", "--steps", "1", "--out", str(blocker / "run"), "-q"],
                     monkeypatch, capsys)
    assert code == 2 and "error:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    code, err = _cli(["train", "vae", "--data", "digits", "--steps", "1", "--out", str(blocker), "-q"],
                     monkeypatch, capsys)
    assert code == 2 and "is a file" in err
    run = _vae(tmp_path / "run", 2)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "hparams": "latent_dim=4"}))
    code, err = _cli(["info", str(run)], monkeypatch, capsys)
    assert code == 2 and "config.json" in err and "hparams" in err and "Traceback" not in err
    (run / "config.json").write_text(json.dumps(config))
    state = json.loads((run / "last" / "trainer.json").read_text())
    (run / "last" / "trainer.json").write_text(json.dumps({**state, "step": "two"}))
    code, err = _cli(["info", str(run)], monkeypatch, capsys)
    assert code == 2 and "trainer.json" in err and "step" in err


def test_resume_via_the_cli_needs_no_repeated_flags(tmp_path: Path) -> None:
    run = tmp_path / "run"
    runner = CliRunner()
    first = runner.invoke(app, ["train", "vae", "--data", "digits", "--steps", "2", "--out", str(run), "-q",
                                "--set", "latent_dim=4", "--set", "width=8", "--set", "batch_size=16",
                                "--seed", "5"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["train", "--out", str(run), "--resume", "--steps", "4", "-q"])
    assert second.exit_code == 0, second.output
    config = RunDir(run).config
    assert config["seed"] == 5 and config["train"]["batch_size"] == 16 and config["train"]["steps"] == 4
    assert genzoo.load(run, "last").provenance["step"] == 4


def test_a_fine_tuned_run_is_named_after_its_new_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import TINY_CORPUS

    monkeypatch.chdir(tmp_path)
    for name in ("old.txt", "new.txt"):
        (tmp_path / name).write_text(TINY_CORPUS)
    base = genzoo.train("gpt", "text:old.txt#context=16", steps=2, out=tmp_path / "base",
                        overrides={"layers": 1, "heads": 2, "width": 16}, **FAST)
    tuned = genzoo.train("gpt", "text:new.txt", steps=2, init=str(base), **FAST)
    assert tuned.parent == Path("runs") and tuned.name.startswith("gpt-text-new-txt-"), tuned
    assert RunDir(tuned).config["data"]["spec_text"] == "text:new.txt"
