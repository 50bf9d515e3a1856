"""Contract tests: every registered model, on every data kind it accepts, honours the shared contract."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, TINY_BUILDERS, tiny_dataset
from genzoo.contract import CAPABILITY_METHODS, Capability, DataKind, GenerativeModel, Optimizers
from genzoo.data import Dataset, load_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import load_tensors
from genzoo.registry import build_model, model_class, model_names
from genzoo.training.trainer import Trainer

#: every registered model but the partial fixtures other test modules register (family "test"), whatever the
#: order the test modules are collected in
MODELS = [name for name in model_names() if model_class(name).family != "test"]
#: (model, data kind): every kind a model accepts, or its own smoke data (``smoke_data``) once, under its first kind
CASES = [(name, kind) for name in MODELS for kind in sorted(model_class(name).data_kinds) if kind in TINY_BUILDERS
         and (model_class(name).smoke_data is None or kind == min(model_class(name).data_kinds))]


def _smoke(name: str) -> dict:
    return dict(model_class(name).smoke_config)


@cache
def _smoke_data(spec: str) -> Dataset:
    return load_dataset(spec)


def _data(name: str, kind: DataKind) -> Dataset:
    """The small dataset model ``name`` is tested on: its own ``smoke_data``, else the tiny dataset of ``kind``."""
    spec = model_class(name).smoke_data
    return tiny_dataset(kind) if spec is None else _smoke_data(spec)


def _train(name: str, kind: DataKind, out: Path, steps: int, resume: bool = False) -> Path:
    return genzoo.train(name, _data(name, kind), steps=steps, out=out, seed=3, overrides=_smoke(name),
                        resume=resume, **FAST)


def _build(name: str, kind: DataKind) -> tuple[GenerativeModel, Dataset]:
    data = _data(name, kind)
    return build_model(name, data.info, _smoke(name), tokenizer=data.tokenizer), data


def _outputs(model: GenerativeModel, data: Dataset, seed: int) -> object:
    """What the model makes, deterministically from ``seed``: samples (of class 0 for a model that only samples given
    a class), else the translation of held-out examples, else text from a prompt."""
    fast = model.smoke_sample_options
    if Capability.SAMPLE in model.capabilities:
        return model.sample(5, seed=seed, **fast)
    if Capability.CONDITIONAL_SAMPLE in model.capabilities:
        return model.sample(5, seed=seed, labels=torch.zeros(5, dtype=torch.long), **fast)
    if Capability.IMG2IMG in model.capabilities:
        return model.img2img(next(data.batches("val", 2)).x, **fast)
    if Capability.SUPER_RESOLVE in model.capabilities:
        return model.upscale(model.downsample(next(data.batches("val", 2)).x), seed=seed, **fast)
    if Capability.CAPTION in model.capabilities:
        return model.caption(next(data.batches("val", 2)).x)
    return model.generate("ab", max_new_tokens=4, seed=seed)


def test_every_model_is_covered() -> None:
    covered = {name for name, _ in CASES}
    assert covered == set(MODELS), f"models without a tiny dataset for any of their kinds: {set(MODELS) - covered}"


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
    torch.manual_seed(0)
    model, data = _build(name, kind)
    batch = data.batch_at(0, 32, seed=0)
    metric = model.validation_metric

    def measure() -> float:
        model.eval()
        with torch.set_grad_enabled(model.validation_needs_grad):  # as the trainer validates
            value = model.validation_step(batch, torch.Generator().manual_seed(0))[metric]
        model.train()
        return value

    before = measure()
    if model.fits_whole_data:
        with torch.no_grad():
            model.fit_whole_data(batch, batch, torch.Generator().manual_seed(0))
    else:
        optim = Optimizers(model.configure_optimizers(), grad_clip=None)
        for step in range(model_class(name).smoke_overfit_steps):
            model.training_step(batch, step, optim)
    after = measure()
    assert after < before, f"{name}: {metric} {before:.4g} -> {after:.4g} after overfitting one batch"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_samples_have_the_declared_shape_type_and_range(name: str, kind: DataKind) -> None:
    model, data = _build(name, kind)
    if not {Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE} & model.capabilities:
        pytest.skip(f"{name} maps inputs to outputs; it draws no samples")
    samples = _outputs(model, data, seed=1)
    assert tuple(samples.shape) == (5, *data.info.shape)
    if kind is DataKind.TOKENS:
        assert samples.dtype == torch.long and samples.min() >= 0 and samples.max() < data.info.levels
    else:
        assert samples.dtype == torch.float32 and torch.isfinite(samples).all()
    if kind is DataKind.IMAGE:
        assert samples.min() >= 0.0 and samples.max() <= 1.0
    assert torch.equal(samples, _outputs(model, data, seed=1)), "same seed must give the same samples"
    assert not torch.equal(samples, _outputs(model, data, seed=2)), "different seeds must give different samples"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_save_then_load_gives_identical_samples(name: str, kind: DataKind, tmp_path: Path) -> None:
    run = _train(name, kind, tmp_path / "run", steps=3)
    first = genzoo.load(run, checkpoint="last", ema=False)
    second = genzoo.load(run, checkpoint="last", ema=False)
    assert first.provenance["step"] == (1 if first.fits_whole_data else 3)  # a one-call fit is one step
    data = _data(name, kind)
    a, b = _outputs(first, data, seed=4), _outputs(second, data, seed=4)
    assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b
    for key, value in load_tensors(run / "last" / "model.safetensors").items():
        assert torch.equal(value, first.state_dict()[key]), key


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_resume_equals_uninterrupted_training(name: str, kind: DataKind, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A 6-step run killed after its checkpoint at step 3 and resumed equals the uninterrupted run (a finished
    3-step run extended to 6 would not, for a model with stages: they are shares of the run's target steps)."""
    whole = _train(name, kind, tmp_path / "whole", steps=6)
    real_step = Trainer._train_step

    def killed_at_3(self: Trainer) -> dict[str, float]:
        if self.step == 3:
            raise KeyboardInterrupt
        return real_step(self)

    if model_class(name).fits_whole_data:  # one call, no steps to interrupt: resuming the finished fit
        _train(name, kind, tmp_path / "split", steps=6)
    else:
        monkeypatch.setattr(Trainer, "_train_step", killed_at_3)
        with pytest.raises(KeyboardInterrupt):
            genzoo.train(name, _data(name, kind), steps=6, out=tmp_path / "split", seed=3, overrides=_smoke(name),
                         **{**FAST, "checkpoint_every": 3})
        monkeypatch.setattr(Trainer, "_train_step", real_step)
    split = _train(name, kind, tmp_path / "split", steps=6, resume=True)
    for file in ("model.safetensors", "ema.safetensors"):
        if not (whole / "last" / file).exists():
            continue
        a, b = load_tensors(whole / "last" / file), load_tensors(split / "last" / file)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{file}:{key} differs after resume"


def _overrides(cls: type, method: str) -> bool:
    return getattr(cls, method) is not getattr(GenerativeModel, method)


@pytest.mark.parametrize("name", MODELS)
def test_declared_capabilities_and_their_methods_agree(name: str) -> None:
    """A capability flag and the method behind it cannot disagree: declared -> overridden, overridden -> declared."""
    cls = model_class(name)
    for cap in cls.base_capabilities:
        assert _overrides(cls, CAPABILITY_METHODS[cap]), f"{name} declares {cap} but does not implement " \
                                                         f"{CAPABILITY_METHODS[cap]}"
    declared_methods = {CAPABILITY_METHODS[cap] for cap in cls.base_capabilities}
    optional = {CAPABILITY_METHODS[c] for c in (Capability.CHAT,)}  # declared per instance (a chat template)
    for method in set(CAPABILITY_METHODS.values()):
        if _overrides(cls, method) and method not in optional | {"score"}:
            assert method in declared_methods, f"{name} implements {method} but declares no capability for it"


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_every_capability_of_an_instance_works(name: str, kind: DataKind) -> None:
    """Each capability a built model reports is callable and gives what its signature promises."""
    model, data = _build(name, kind)
    caps = model.capabilities
    x = next(data.batches("val", 3)).x
    for cap in caps:
        assert _overrides(type(model), CAPABILITY_METHODS[cap]) or cap is Capability.ANOMALY_SCORE, cap
    if Capability.ANOMALY_SCORE in caps:
        scores = model.score(x)
        assert scores.shape == (3,) and torch.isfinite(scores).all()
        if not _overrides(type(model), "score"):  # the default score is the negative log-likelihood
            assert torch.allclose(scores, -model.log_likelihood(x).values)
        else:
            assert model.score_name != GenerativeModel.score_name, f"{name} overrides score: say what it is"
    if Capability.ENCODE in caps:
        z = model.encode(x)
        assert isinstance(z, torch.Tensor) and len(z) == 3
        if Capability.DECODE in caps:
            assert model.decode(z).shape == x.shape
    if Capability.RECONSTRUCT in caps:
        assert model.reconstruct(x).shape == x.shape
    if Capability.INTERPOLATE in caps:
        assert model.interpolate(x[0], x[1], n=4).shape == (4, *x.shape[1:])
    if Capability.GENERATE_TEXT in caps:
        assert isinstance(model.generate("the", max_new_tokens=3), str)
    if Capability.INPAINT in caps:
        mask = torch.zeros(x.shape[-2:])
        mask[:, :2] = 1
        out = model.inpaint(x[:1], mask, seed=0, **model.smoke_sample_options)
        assert out.shape == x[:1].shape and torch.equal(out[..., 2:], x[:1, ..., 2:])
    if Capability.IMG2IMG in caps:
        assert model.img2img(x[:1], **model.smoke_sample_options).shape == x[:1].shape
    missing = set(Capability) - caps
    for cap in missing - {Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE, Capability.CHAT}:
        if cap in (Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND) and caps & {
                Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND}:
            continue
        with pytest.raises(GenzooError):
            _call(model, cap, x)


def _call(model: GenerativeModel, cap: Capability, x: torch.Tensor) -> object:
    calls = {Capability.EXACT_LIKELIHOOD: lambda: model.log_likelihood(x),
             Capability.LIKELIHOOD_BOUND: lambda: model.log_likelihood(x),
             Capability.ANOMALY_SCORE: lambda: model.score(x), Capability.ENCODE: lambda: model.encode(x),
             Capability.DECODE: lambda: model.decode(x), Capability.RECONSTRUCT: lambda: model.reconstruct(x),
             Capability.INTERPOLATE: lambda: model.interpolate(x[0], x[1]),
             Capability.INPAINT: lambda: model.inpaint(x, x), Capability.IMG2IMG: lambda: model.img2img(x),
             Capability.GENERATE_TEXT: lambda: model.generate("a"),
             Capability.TEXT_TO_IMAGE: lambda: model.sample(1, prompt="a small red circle"),
             Capability.CAPTION: lambda: model.caption(x), Capability.SUPER_RESOLVE: lambda: model.upscale(x)}
    return calls[cap]()


@pytest.mark.parametrize("name", MODELS)
def test_sampling_options_are_typed_documented_and_exported(name: str) -> None:
    cls = model_class(name)
    schema = cls.sample_options_schema()
    assert set(schema.get("properties", {})) == set(cls.SampleOptions.model_fields)
    for field_name, field in cls.SampleOptions.model_fields.items():
        assert field.description, f"{name}: sampling option {field_name} has no description (it is --help text)"
    with pytest.raises(ConfigError, match="no_such_option"):
        cls.sample_options(no_such_option=1)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_cost_counts_network_evaluations(name: str, kind: DataKind) -> None:
    model, _ = _build(name, kind)
    cost = model.cost(**model.smoke_sample_options)
    assert cost.nfe_per_sample is not None and cost.nfe_per_sample >= 1
