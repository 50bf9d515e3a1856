"""Muon against its definition, one update through several optimizers, and gpt's split of its parameters."""

from __future__ import annotations

import math

import pytest
import torch

import genzoo
from conftest import TINY_CORPUS
from genzoo.contract import Optimizers
from genzoo.data import DataOptions
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.nn.muon import NS_COEFFICIENTS, Muon, orthogonalize


def _with_spectrum(rows: int, cols: int, singular: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A matrix U diag(s) V^T with random orthonormal U, V and the given singular values."""
    g = torch.Generator().manual_seed(seed)
    k = min(rows, cols)
    u = torch.linalg.qr(torch.randn(rows, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(cols, k, generator=g, dtype=torch.float64))[0]
    return u @ torch.diag(singular) @ v.T, u, v


@pytest.mark.parametrize(("rows", "cols"), [(12, 5), (5, 12), (8, 8)])
def test_orthogonalize_keeps_singular_vectors_and_maps_each_singular_value_through_the_quintic(rows: int,
                                                                                            cols: int) -> None:
    """NS acts on singular values only: s -> f^5(s / ||G||_F) with f(x) = a x + b x^3 + c x^5."""
    k = min(rows, cols)
    s = torch.logspace(-1.5, 0, k, dtype=torch.float64)
    g, u, v = _with_spectrum(rows, cols, s)
    a, b, c = NS_COEFFICIENTS
    expected = s / s.norm()
    for _ in range(5):
        expected = a * expected + b * expected**3 + c * expected**5
    got = u.T @ orthogonalize(g) @ v
    assert torch.allclose(got, torch.diag(expected), atol=1e-10)
    assert expected.min() > 0.6 and expected.max() < 1.25  # near-orthogonal: what makes the update "whitened"


def test_orthogonalize_is_scale_free() -> None:
    g = torch.randn(6, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(orthogonalize(g), orthogonalize(1e3 * g), atol=1e-12)


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("shape", [(6, 3), (3, 6)])
def test_muon_steps_match_the_update_rule(nesterov: bool, shape: tuple[int, int]) -> None:
    """Two steps against M <- b M + (1-b) G, U = (1-b) G + b M (or M with nesterov off),
    W <- (1 - lr wd) W - lr sqrt(max(1, out/in)) NS(U)."""
    gen = torch.Generator().manual_seed(2)
    w0 = torch.randn(*shape, generator=gen, dtype=torch.float64)
    grads = [torch.randn(*shape, generator=gen, dtype=torch.float64) for _ in range(2)]
    lr, beta, wd = 0.05, 0.9, 0.3
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=lr, momentum=beta, nesterov=nesterov, weight_decay=wd)
    w, m = w0.clone(), torch.zeros_like(w0)
    scale = math.sqrt(max(1.0, shape[0] / shape[1]))
    for grad in grads:
        p.grad = grad.clone()
        opt.step()
        m = beta * m + (1 - beta) * grad
        update = (1 - beta) * grad + beta * m if nesterov else m
        w = (1 - lr * wd) * w - lr * scale * orthogonalize(update)
        assert torch.allclose(p.detach(), w, atol=1e-12)


def test_muon_refuses_parameters_that_are_not_matrices() -> None:
    with pytest.raises(ConfigError, match="2-D"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def _sgd_pair(clip: float | None) -> tuple[Optimizers, torch.nn.Parameter, torch.nn.Parameter]:
    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(1))
    opts = {"first": torch.optim.SGD([a], lr=1.0), "second": torch.optim.SGD([b], lr=1.0)}
    return Optimizers(opts, grad_clip=clip), a, b


def test_one_loss_through_two_optimizers_clips_their_gradients_together() -> None:
    """Gradients (3, 0) and (4,): joint norm 5, clipped to 1 -> steps (-0.6, 0) and (-0.8); per-optimizer clipping
    would give (-1, 0) and (-1)."""
    optim, a, b = _sgd_pair(clip=1.0)
    loss = 3 * a[0] + 4 * b[0]
    optim.step(("first", "second"), loss)
    assert torch.allclose(a.detach(), torch.tensor([-0.6, 0.0]), atol=1e-6)
    assert torch.allclose(b.detach(), torch.tensor([-0.8]), atol=1e-6)


def test_one_loss_through_two_optimizers_accumulates_micro_batches_and_names_unknown_ones() -> None:
    optim, a, b = _sgd_pair(clip=None)
    optim.accumulate = 2
    for micro, weight in enumerate((1.0, 3.0)):
        optim.micro = micro
        optim.step(["first", "second"], weight * (a.sum() + b.sum()))
    assert torch.allclose(a.detach(), torch.full((2,), -2.0)) and torch.allclose(b.detach(), torch.tensor([-2.0]))
    optim.micro = 0  # the next update starts from zero gradients in both optimizers
    optim.step(["first", "second"], 0 * a.sum() + b.sum())
    optim.micro = 1
    optim.step(["first", "second"], 0 * a.sum() + b.sum())
    assert torch.allclose(a.detach(), torch.full((2,), -2.0)) and torch.allclose(b.detach(), torch.tensor([-3.0]))
    with pytest.raises(GenzooError, match="unknown optimizer 'third'"):
        optim.step(("first", "third"), a.sum())


@pytest.fixture(scope="module")
def data() -> genzoo.Dataset:
    return text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")


def test_gpt_puts_block_matrices_on_muon_and_everything_else_on_adamw_once(data: genzoo.Dataset) -> None:
    model = genzoo.create("gpt", data, layers=2, heads=2, width=16)
    optimizers = model.configure_optimizers()
    on = {name: {id(p) for g in opt.param_groups for p in g["params"]} for name, opt in optimizers.items()}
    block_matrices = {id(p) for n, p in model.blocks.named_parameters() if p.dim() == 2}
    assert set(optimizers) == {"model", "muon"} and on["muon"] == block_matrices
    assert on["model"] | on["muon"] == {id(p) for p in model.parameters()} and not on["model"] & on["muon"]
    assert set(genzoo.create("gpt", data, layers=1, heads=2, width=16, optimizer="adamw").configure_optimizers()) == {
        "model"}
    lora = genzoo.create("gpt", data, layers=1, heads=2, width=16, lora_rank=2).configure_optimizers()
    assert set(lora) == {"model"}  # adapters only: nothing for Muon


def test_gpt_training_step_updates_through_both_optimizers(data: genzoo.Dataset) -> None:
    torch.manual_seed(0)
    model = genzoo.create("gpt", data, layers=1, heads=2, width=16)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optim = Optimizers(model.configure_optimizers(), grad_clip=1.0)
    model.training_step(data.batch_at(0, 4, 0), 0, optim)
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(before)


def test_optimizer_state_of_an_adamw_only_run_names_the_mismatch_when_loaded_for_muon(data: genzoo.Dataset) -> None:
    from genzoo.errors import RunDirError
    from genzoo.runs.checkpoint import optimizer_from_files, optimizer_to_files

    old = genzoo.create("gpt", data, layers=1, heads=2, width=16, optimizer="adamw").configure_optimizers()
    tensors, meta = optimizer_to_files(old)
    new = genzoo.create("gpt", data, layers=1, heads=2, width=16).configure_optimizers()
    with pytest.raises(RunDirError, match=r"optimizers \['model'\], the model has \['model', 'muon'\].*--init"):
        optimizer_from_files(new, tensors, meta)
