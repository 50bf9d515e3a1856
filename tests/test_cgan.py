"""cgan: the projection discriminator's class term, the hinge loss, spectral normalisation, class proportions when
sampling without labels, and samples of the requested class after a short training on a toy labelled set."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from genzoo.contract import Batch, Capability, DataInfo, DataKind, Optimizers
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.gan.cgan import hinge_discriminator_loss
from genzoo.registry import build_model

SMALL = {"latent_dim": 4, "width": 4, "feature_dim": 8, "embed_dim": 4}


def info(classes: int = 3, shape: tuple[int, ...] = (1, 8, 8)) -> DataInfo:
    return DataInfo(kind=DataKind.IMAGE, shape=shape, levels=256, num_classes=classes)


def test_unlabelled_data_is_refused_with_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="needs class labels"):
        build_model("cgan", DataInfo(kind=DataKind.IMAGE, shape=(1, 8, 8), levels=256), SMALL)
    with pytest.raises(GenzooError):  # vectors: not a data kind cgan accepts
        build_model("cgan", DataInfo(kind=DataKind.VECTOR, shape=(2,), num_classes=2), SMALL)


def test_projection_discriminator_is_unconditional_score_plus_class_embedding_dot_features() -> None:
    torch.manual_seed(0)
    d = build_model("cgan", info(), {**SMALL, "spectral_norm": False}).discriminator.eval()  # plain weights
    x = torch.randn(5, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 1, 0])
    phi = d.phi(x)
    expected = d.psi(phi).squeeze(1) + (d.embed.weight[y] * phi).sum(1)
    torch.testing.assert_close(d(x, y), expected)
    # changing the class changes the score by <e(y') - e(y), phi(x)> exactly
    other = (y + 1) % 3
    torch.testing.assert_close(d(x, other) - d(x, y), ((d.embed.weight[other] - d.embed.weight[y]) * phi).sum(1))
    # d D(x, y) / d e(k) = phi(x) for the example's class k, 0 for the other classes
    d(x[:1], torch.tensor([2])).sum().backward()
    grad = d.embed.weight.grad
    torch.testing.assert_close(grad[2], phi[0].detach())
    assert (grad[:2] == 0).all()


def test_hinge_loss_is_hand_computed() -> None:
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 0.5])
    # real: max(0, 1 - r) = 0, 0.5, 2 -> mean 5/6; fake: max(0, 1 + f) = 0, 1, 1.5 -> mean 5/6
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(5 / 3)


def _largest_singular_values(module: nn.Module) -> list[float]:
    return [torch.linalg.matrix_norm(layer.weight.detach().flatten(1), 2).item() for layer in module.modules()
            if isinstance(layer, nn.Conv2d | nn.Linear | nn.Embedding)]


def test_spectral_norm_makes_every_discriminator_layer_1_lipschitz() -> None:
    torch.manual_seed(0)
    model = build_model("cgan", info(), {**SMALL, "spectral_norm": True})
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 3, (8,))
    for _ in range(3):  # power iterations run on training forwards
        model.discriminator(x, y)
    sigmas = _largest_singular_values(model.discriminator)
    assert len(sigmas) == 5  # 2 convolutions, the feature head, psi, the class embedding
    assert sigmas == pytest.approx([1.0] * 5, abs=2e-3)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.discriminator.modules())
    plain = build_model("cgan", info(), {**SMALL, "spectral_norm": False})
    assert max(abs(s - 1) for s in _largest_singular_values(plain.discriminator)) > 0.1


def test_class_counts_are_the_training_labels_and_set_the_classes_of_unlabelled_samples() -> None:
    torch.manual_seed(0)
    model = build_model("cgan", info(), SMALL)
    optim = Optimizers(model.configure_optimizers())
    labels = [torch.tensor([0, 0, 0, 2]), torch.tensor([0, 2, 0, 0])]
    for step, y in enumerate(labels):
        model.training_step(Batch(torch.rand(4, 1, 8, 8), y), step, optim)
    assert model.class_counts.tolist() == [6.0, 0.0, 2.0]
    drawn: list[torch.Tensor] = []
    synthesize = model.synthesize
    model.synthesize = lambda z, y=None: drawn.append(y) or synthesize(z, y)  # type: ignore[method-assign]
    model.sample(4000, seed=0)
    share = torch.bincount(drawn[0], minlength=3).float() / 4000
    assert share.tolist() == pytest.approx([0.75, 0.0, 0.25], abs=0.02)  # binomial sd 0.007
    model.sample(3, seed=0, labels=torch.tensor([1, 1, 2]))
    assert drawn[1].tolist() == [1, 1, 2]
    assert {Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE} <= model.capabilities


def _stripes(n: int, gen: torch.Generator) -> Batch:
    """Toy labelled images: class 0 a bright left half, class 1 a bright right half, class 2 bright top half."""
    y = torch.randint(0, 3, (n,), generator=gen)
    x = 0.1 * torch.rand(n, 1, 8, 8, generator=gen)
    x[y == 0, :, :, :4] += 0.8
    x[y == 1, :, :, 4:] += 0.8
    x[y == 2, :, :4, :] += 0.8
    return Batch(x, y)


def _stripe_class(x: torch.Tensor) -> torch.Tensor:
    """The class whose bright half is brightest: the exact classifier of the toy set."""
    halves = torch.stack([x[:, 0, :, :4].mean((1, 2)), x[:, 0, :, 4:].mean((1, 2)), x[:, 0, :4, :].mean((1, 2))], 1)
    return halves.argmax(1)


def test_a_short_training_gives_samples_of_the_requested_class() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = build_model("cgan", info(), {**SMALL, "width": 8, "lr": 1e-3})
    optim = Optimizers(model.configure_optimizers())
    for step in range(150):
        model.training_step(_stripes(32, gen), step, optim)
    labels = torch.arange(3).repeat_interleave(100)
    accuracy = (_stripe_class(model.sample(300, seed=1, labels=labels)) == labels).float().mean().item()
    assert accuracy >= 0.95
    # the requested class, not the data's class mix: one class asked for, one class made
    assert (_stripe_class(model.sample(50, seed=2, labels=torch.tensor(2))) == 2).float().mean() >= 0.95
