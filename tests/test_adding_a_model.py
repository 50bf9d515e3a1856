"""docs/adding-a-model.md, executed: a complete model defined in this file is registered, and that alone makes it
work with `genzoo list`, `train`, `sample` (its typed options on the CLI), `eval`, save/load and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from pydantic import Field
from torch import Tensor, nn
from typer.testing import CliRunner

import genzoo
from genzoo.cli.app import app
from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
    SampleOptions,
)
from genzoo.io import load_tensors
from genzoo.registry import register


# ----- the model of docs/adding-a-model.md ----------------------------------------------------------------------------
class GaussianConfig(ModelConfig):
    lr: float = Field(0.05, gt=0, description="Adam learning rate")


class GaussianSampling(SampleOptions):
    temperature: float = Field(1.0, gt=0, description="scale of the standard deviation when sampling")


@register
class DiagonalGaussian(GenerativeModel):
    """A diagonal Gaussian, x ~ N(mu, diag sigma^2) in network units, fit by maximum likelihood."""

    name = "toy-gaussian"
    family = "example"
    Config = GaussianConfig
    SampleOptions = GaussianSampling
    data_kinds = frozenset({DataKind.VECTOR, DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD})
    smoke_overfit_steps: ClassVar[int] = 20

    def __init__(self, config: GaussianConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        self.mu = nn.Parameter(torch.zeros(data.dims))
        self.log_sigma = nn.Parameter(torch.zeros(data.dims))

    def setup(self, first_batch: Batch) -> None:
        """Start at the first batch's mean: data-dependent initialisation, saved with the weights."""
        self.mu.copy_(self.preprocess(first_batch.x).flatten(1).mean(0))

    def _log_prob(self, x: Tensor) -> Tensor:
        """log N(z; mu, sigma^2) summed over dimensions, plus log |dz/dx| to report it in data units."""
        z = self.preprocess(x).flatten(1)
        normal = torch.distributions.Normal(self.mu, self.log_sigma.exp())
        return normal.log_prob(z).sum(1) + self.preprocess_log_det()

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = -self._log_prob(batch.x).mean() / self.data.dims
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_loss": -self._log_prob(batch.x).mean().item() / self.data.dims}

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        return LogLikelihood(self._log_prob(x.to(self.device)), "exact", discrete=False, method="diagonal Gaussian")

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None,
                options: GaussianSampling) -> Tensor:
        z = self.mu + options.temperature * self.log_sigma.exp() * self.randn(n, self.data.dims, generator=generator)
        return self.postprocess(z.view(n, *self.data.shape))

    def cost(self, **options: Any) -> Cost:
        """One pass, a multiply-add per dimension (no network: the default, which counts module calls, cannot
        see it)."""
        self.sample_options(**options)
        return Cost(nfe_per_sample=1, flops_per_sample=2.0 * self.data.dims)


# ----- what registering it gives ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def blobs(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("data") / "blobs.npz"
    gen = np.random.default_rng(0)
    np.savez(path, x=(gen.normal(size=(600, 2)) * [1.0, 3.0] + [2.0, -1.0]).astype(np.float32))
    return f"npz:{path}"


def _invoke(*args: str) -> Any:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


def test_list_shows_it_with_its_options() -> None:
    listed = {m["name"]: m for m in json.loads(_invoke("list", "--json").output)}
    assert listed["toy-gaussian"]["sample_options"] == ["temperature"]
    assert listed["toy-gaussian"]["capabilities"] == ["exact_likelihood", "sample"]


def test_train_sample_eval_load_and_resume(blobs: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    common = ("--set", "batch_size=64", "--set", "eval_every=50", "-q")
    _invoke("train", "toy-gaussian", "--data", blobs, "--steps", "200", "--out", str(run), *common)
    help_text = _invoke("sample", str(run), "--help").output
    assert "--temperature" in help_text and "scale of the standard" in help_text
    _invoke("sample", str(run), "-n", "500", "--temperature", "0.5", "--out", str(tmp_path / "cold.npy"))
    cold = np.load(tmp_path / "cold.npy")
    assert cold.shape == (500, 2) and np.allclose(cold.std(0), [0.5, 1.5], rtol=0.15)  # half the fitted std
    model = genzoo.load(run)
    train_mean = genzoo.load_dataset(blobs).split("train").x.mean(0)
    assert torch.allclose(model.postprocess(model.mu.detach()), train_mean, atol=0.05)  # the ML estimate
    result = genzoo.evaluate(run, n=200, report=False)
    # exact NLL of N((2, -1), diag(1, 9)) is 0.5 log(2 pi e)^2 + log 3
    expected = math.log(2 * math.pi * math.e) + math.log(3.0)
    assert result["rows"]["model"]["likelihood"]["nll_nats"] == pytest.approx(expected, abs=0.1)
    whole = tmp_path / "whole"
    _invoke("train", "toy-gaussian", "--data", blobs, "--steps", "300", "--out", str(whole), *common)
    _invoke("train", "--out", str(run), "--resume", "--steps", "300", "-q")
    a, b = load_tensors(run / "last" / "model.safetensors"), load_tensors(whole / "last" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
