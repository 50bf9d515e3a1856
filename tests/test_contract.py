"""Contract tests: every registered model, on every data kind it accepts, honours the shared contract."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, TINY_BUILDERS, tiny_dataset
from genzoo.contract import Capability, DataKind, Optimizers
from genzoo.io import load_tensors
from genzoo.registry import build_model, model_class, model_names

CASES = [(name, kind) for name in model_names() for kind in sorted(model_class(name).data_kinds)
         if kind in TINY_BUILDERS]


def _smoke(name: str) -> dict:
    return dict(model_class(name).smoke_config)


def _train(name: str, kind: DataKind, out: Path, steps: int, resume: bool = False) -> Path:
    return genzoo.train(name, tiny_dataset(kind), steps=steps, out=out, seed=3, overrides=_smoke(name),
                        resume=resume, **FAST)


def test_every_model_is_covered() -> None:
    covered = {name for name, _ in CASES}
    assert covered == set(model_names()), f"models without a tiny dataset for any of their kinds: " \
                                          f"{set(model_names()) - covered}"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_few_steps_give_finite_losses(name: str, kind: DataKind, tmp_path: Path) -> None:
    run = _train(name, kind, tmp_path / "run", steps=4)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_values = [v for r in records if r["split"] == "train" for k, v in r.items() if k not in ("step", "split")]
    assert train_values and all(torch.isfinite(torch.tensor(train_values)))
    val = [r for r in records if r["split"] == "val"]
    assert val and model_class(name).validation_metric in val[-1]


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_overfitting_a_fixed_batch_lowers_the_validation_metric(name: str, kind: DataKind) -> None:
    data = tiny_dataset(kind)
    torch.manual_seed(0)
    model = build_model(name, data.info, _smoke(name))
    batch = data.batch_at(0, 32, seed=0)
    metric = model.validation_metric

    def measure() -> float:
        model.eval()
        with torch.no_grad():
            value = model.validation_step(batch, torch.Generator().manual_seed(0))[metric]
        model.train()
        return value

    before = measure()
    optim = Optimizers(model.configure_optimizers(), grad_clip=None)
    for step in range(model_class(name).smoke_overfit_steps):
        model.training_step(batch, step, optim)
    after = measure()
    assert after < before, f"{name}: {metric} {before:.4g} -> {after:.4g} after overfitting one batch"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_samples_have_the_declared_shape_type_and_range(name: str, kind: DataKind) -> None:
    data = tiny_dataset(kind)
    model = build_model(name, data.info, _smoke(name))
    assert Capability.SAMPLE in model.capabilities
    samples = model.sample(5, seed=1)
    assert tuple(samples.shape) == (5, *data.info.shape)
    if kind is DataKind.TOKENS:
        assert samples.dtype == torch.long and samples.min() >= 0 and samples.max() < data.info.levels
    else:
        assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    if kind is DataKind.IMAGE:
        assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert torch.equal(samples, model.sample(5, seed=1)), "same seed must give the same samples"
    assert not torch.equal(samples, model.sample(5, seed=2)), "different seeds must give different samples"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_save_then_load_gives_identical_samples(name: str, kind: DataKind, tmp_path: Path) -> None:
    run = _train(name, kind, tmp_path / "run", steps=3)
    first = genzoo.load(run, checkpoint="last", ema=False)
    second = genzoo.load(run, checkpoint="last", ema=False)
    assert first.provenance["step"] == 3
    assert torch.equal(first.sample(6, seed=4), second.sample(6, seed=4))
    for key, value in load_tensors(run / "last" / "model.safetensors").items():
        assert torch.equal(value, first.state_dict()[key]), key


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_resume_equals_uninterrupted_training(name: str, kind: DataKind, tmp_path: Path) -> None:
    whole = _train(name, kind, tmp_path / "whole", steps=6)
    _train(name, kind, tmp_path / "split", steps=3)
    split = _train(name, kind, tmp_path / "split", steps=6, resume=True)
    for file in ("model.safetensors", "ema.safetensors"):
        if not (whole / "last" / file).exists():
            continue
        a, b = load_tensors(whole / "last" / file), load_tensors(split / "last" / file)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{file}:{key} differs after resume"
