"""The trainer's hooks: setup(first_batch), EMA targets, per-optimizer schedules, stages, gradient accumulation,
mixed precision, and gradients while sampling -- each through a small model defined here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from pydantic import Field
from torch import Tensor, nn

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.contract import Batch, DataKind, GenerativeModel, ModelConfig, Optimizers, SampleOptions, Stage
from genzoo.errors import ConfigError, GenzooError
from genzoo.io import load_tensors
from genzoo.registry import register
from genzoo.runs import RunDir
from genzoo.training.trainer import TrainConfig, Trainer, autocast_dtype, native_bf16


class TwoPartConfig(ModelConfig):
    lr: float = Field(0.05, ge=0)


@register
class TwoPart(GenerativeModel):
    """Two linear maps trained by two optimizers in two stages; a data-dependent offset set by ``setup``."""

    name = "test-two-part"
    family = "test"
    Config = TwoPartConfig
    data_kinds = frozenset({DataKind.VECTOR})
    stages = (Stage("first", optimizers=("a",)), Stage("second", optimizers=("b",), share=1.0))
    setup_calls: ClassVar[int] = 0
    seen: ClassVar[list[tuple[int, str]]] = []

    def __init__(self, config: TwoPartConfig, data: Any) -> None:
        super().__init__(config, data)
        self.a = nn.Linear(data.dims, data.dims)
        self.b = nn.Linear(data.dims, data.dims)
        self.offset = nn.Parameter(torch.zeros(data.dims))

    def setup(self, first_batch: Batch) -> None:
        type(self).setup_calls += 1
        self.offset.copy_(self.preprocess(first_batch.x).mean(0))

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"a": torch.optim.SGD([*self.a.parameters(), self.offset], lr=self.config.lr),
                "b": torch.optim.SGD(self.b.parameters(), lr=self.config.lr)}

    def lr_schedules(self) -> dict[str, dict[str, Any]]:
        return {"b": {"warmup_steps": 0}}

    def _loss(self, x: Tensor, part: nn.Module) -> Tensor:
        z = self.preprocess(x)
        return (part(z) - z + self.offset).square().mean()

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        stage = optim.stage.name if optim.stage is not None else "none"
        type(self).seen.append((step, stage))
        loss = self._loss(batch.x, self.a if stage == "first" else self.b)
        optim.step("a" if stage == "first" else "b", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_loss": self._loss(batch.x, self.a).item()}

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: SampleOptions) -> Tensor:
        return self.postprocess(self.b(self.randn(n, self.data.dims, generator=generator)))


def _train(out: Path, steps: int, resume: bool = False, **settings: Any) -> Path:
    return genzoo.train("test-two-part", tiny_dataset(DataKind.VECTOR), steps=steps, out=out, resume=resume,
                        **{**FAST, **settings})


def test_setup_sees_the_first_batch_before_the_ema_copy_and_runs_once(tmp_path: Path) -> None:
    TwoPart.setup_calls = 0
    data = tiny_dataset(DataKind.VECTOR)
    run = _train(tmp_path / "run", 2, ema_decay=0.999, overrides={"lr": 0.0})
    expected = genzoo.create("test-two-part", data).preprocess(data.batch_at(0, FAST["batch_size"], 0).x).mean(0)
    ema = load_tensors(run / "last" / "ema.safetensors")
    assert torch.allclose(ema["offset"], expected, atol=1e-6), "the EMA copy must start from the set-up weights"
    assert TwoPart.setup_calls == 1
    _train(run, 4, resume=True, ema_decay=0.999, overrides={"lr": 0.0})
    assert TwoPart.setup_calls == 1, "resume must not run setup again"


def test_stages_step_their_own_optimizers_in_order_and_resume_mid_stage(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    TwoPart.seen = []
    whole = _train(tmp_path / "whole", 6)
    assert TwoPart.seen == [(0, "first"), (1, "first"), (2, "first"), (3, "second"), (4, "second"), (5, "second")]
    real_step = Trainer._train_step

    def interrupted(self: Trainer) -> dict[str, float]:
        if self.step == 4:
            raise KeyboardInterrupt
        return real_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "split", 6, checkpoint_every=4)  # killed in stage two, after its checkpoint at step 4
    monkeypatch.setattr(Trainer, "_train_step", real_step)
    split = _train(tmp_path / "split", 6, resume=True, checkpoint_every=4)
    a, b = load_tensors(whole / "last" / "model.safetensors"), load_tensors(split / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["stage"] for r in RunDir(whole).metrics() if r["split"] == "stage"] == [1.0]


def test_a_stage_cannot_step_another_stages_optimizer() -> None:
    data = tiny_dataset(DataKind.VECTOR)
    model = genzoo.create("test-two-part", data)
    optim = Optimizers(model.configure_optimizers())
    optim.stage = TwoPart.stages[0]
    with pytest.raises(GenzooError, match="does not train optimizer 'b'"):
        optim.step("b", model._loss(data.batch_at(0, 8, 0).x, model.b))


def test_each_optimizer_follows_its_own_schedule(tmp_path: Path) -> None:
    data = tiny_dataset(DataKind.VECTOR)
    model = genzoo.create("test-two-part", data)
    cfg = TrainConfig(**{**FAST, "steps": 4, "warmup_steps": 10})
    trainer = Trainer(model, data, RunDir(tmp_path / "run"), cfg, {"model": "test-two-part"})
    trainer._set_lr()
    assert trainer.optimizers["a"].param_groups[0]["lr"] == pytest.approx(0.05 * 0.1)  # warming up
    assert trainer.optimizers["b"].param_groups[0]["lr"] == pytest.approx(0.05)  # its own: no warm-up


def test_gradient_accumulation_equals_the_whole_batch(tmp_path: Path) -> None:
    whole = _train(tmp_path / "whole", 3, batch_size=16)
    accumulated = _train(tmp_path / "acc", 3, batch_size=16, grad_accum=4)
    a, b = load_tensors(whole / "last" / "model.safetensors"), load_tensors(accumulated / "last" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    with pytest.raises(ConfigError, match="grad_accum"):
        _train(tmp_path / "bad", 3, batch_size=16, grad_accum=3)


def test_gan_ema_averages_the_generator_only(tmp_path: Path) -> None:
    run = genzoo.train("dcgan", tiny_dataset(DataKind.VECTOR), steps=3, out=tmp_path / "run",
                       overrides={"latent_dim": 8, "hidden": 32, "depth": 2}, **{**FAST, "ema_decay": 0.9})
    raw, ema = load_tensors(run / "last" / "model.safetensors"), load_tensors(run / "last" / "ema.safetensors")
    assert all(torch.equal(raw[k], ema[k]) for k in raw if k.startswith("discriminator."))
    assert any(not torch.equal(raw[k], ema[k]) for k in raw if k.startswith("generator."))


def test_precision_is_a_trainer_setting() -> None:
    cpu = torch.device("cpu")
    assert autocast_dtype("fp32", cpu) is None and autocast_dtype("bf16", cpu) is torch.bfloat16
    assert autocast_dtype("auto", cpu) is (torch.bfloat16 if native_bf16(cpu) else None)
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        autocast_dtype("fp16", cpu)


def test_bf16_training_stays_close_to_fp32(tmp_path: Path) -> None:
    def final_loss(precision: str) -> float:
        run = genzoo.train("gpt", tiny_dataset(DataKind.TOKENS), steps=6, out=tmp_path / precision,
                           overrides={"layers": 1, "heads": 2, "width": 16}, precision=precision, **FAST)
        return [r for r in RunDir(run).metrics() if r["split"] == "train"][-1]["loss"]

    fp32, bf16 = final_loss("fp32"), final_loss("bf16")
    assert abs(fp32 - bf16) < 0.05 * fp32


class LangevinOptions(SampleOptions):
    steps: int = Field(5, ge=1, description="Langevin steps")


@register
class Langevin(TwoPart):
    """Samples by gradient steps on an energy: needs autograd while sampling."""

    name = "test-langevin"
    SampleOptions = LangevinOptions
    sampling_needs_grad = True
    stages = ()

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: LangevinOptions) -> Tensor:
        x = self.randn(n, self.data.dims, generator=generator).requires_grad_(True)
        for _ in range(options.steps):
            energy = (x - self.offset).square().sum()
            (grad,) = torch.autograd.grad(energy, x)
            x = (x - 0.1 * grad).detach().requires_grad_(True)
        return self.postprocess(x.detach())


def test_sampling_may_ask_for_gradients() -> None:
    model = genzoo.create("test-langevin", tiny_dataset(DataKind.VECTOR))
    with torch.no_grad():  # even inside a caller's no_grad block
        samples = model.sample(4, seed=0, steps=3)
    assert samples.shape == (4, 2) and torch.isfinite(samples).all()


@register
class Shift(GenerativeModel):
    """Two domains: learns the shift from domain A's mean to domain B's (``--data A --data-b B``)."""

    name = "test-shift"
    family = "test"
    Config = TwoPartConfig
    data_kinds = frozenset({DataKind.VECTOR})
    domains = 2

    def __init__(self, config: TwoPartConfig, data: Any) -> None:
        super().__init__(config, data)
        self.shift = nn.Parameter(torch.zeros(data.dims))

    def _loss(self, batch: Batch) -> Tensor:
        return (batch.x_b.mean(0) - batch.x.mean(0) - self.shift).square().sum()

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = self._loss(batch)
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_loss": self._loss(batch).item()}

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: SampleOptions) -> Tensor:
        return self.randn(n, self.data.dims, generator=generator) + self.shift


def test_two_domain_models_get_both_datasets_in_each_batch(tmp_path: Path) -> None:
    import numpy as np

    gen = np.random.default_rng(0)
    for name, mean in (("a", [0.0, 0.0]), ("b", [3.0, -1.0])):
        np.savez(tmp_path / f"{name}.npz", x=(gen.normal(size=(400, 2)) + mean).astype(np.float32))
    spec_a, spec_b = f"npz:{tmp_path / 'a.npz'}", f"npz:{tmp_path / 'b.npz'}"
    settings = {**FAST, "batch_size": 64, "eval_every": 20}
    run = genzoo.train("test-shift", spec_a, data_b=spec_b, steps=150, out=tmp_path / "run",
                       overrides={"lr": 0.05}, **settings)
    model = genzoo.load(run)
    assert model.data.domain_b is not None and model.data.domain_b.spec == spec_b
    assert torch.allclose(model.shift.detach(), torch.tensor([3.0, -1.0]), atol=0.2)
    genzoo.train(None, None, steps=160, out=run, resume=True)  # the second domain comes back from config.json
    assert genzoo.load(run, "last").provenance["step"] == 160
    with pytest.raises(ConfigError, match="--data-b"):
        genzoo.train("test-shift", spec_a, steps=2, out=tmp_path / "no-b", **settings)
    with pytest.raises(ConfigError, match="one dataset"):
        genzoo.train("vae", spec_a, data_b=spec_b, steps=2, out=tmp_path / "vae", **settings)
    assert not (tmp_path / "no-b").exists() and not (tmp_path / "vae").exists()
