"""Generator and discriminator networks for adversarial models, for image or vector data.

Images: the generator is a :class:`ConvDecoder` from the latent code with a tanh output (network units [-1, 1]);
the discriminator a :class:`ConvEncoder` down to one score. Vectors: plain MLPs, the generator's output linear in
standardised units. Discriminators return one unnormalised score per example, shape (B,).

Also what every GAN shares to watch and steady its training: the discriminator's accuracy, the diversity of a batch
of samples, DiffAugment, spectral normalisation.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from genzoo.contract import DataInfo, DataKind
from genzoo.nn.conv import ConvDecoder, ConvEncoder, Norm, mlp


def generator_net(data: DataInfo, latent_dim: int, width: int, hidden: int, depth: int,
                  norm: Norm = "batch") -> nn.Module:
    """z (B, latent_dim) -> x (B, *data.shape) in network units.

    ``width`` is the conv base channel count (images), ``hidden``/``depth`` the MLP hidden units and layers (vectors).
    """
    if data.kind is DataKind.IMAGE:
        return nn.Sequential(ConvDecoder(latent_dim, data.shape, data.shape[0], width=width, norm=norm), nn.Tanh())
    return mlp(latent_dim, [hidden] * depth, data.dims, act=nn.ReLU)


def discriminator_net(data: DataInfo, width: int, hidden: int, depth: int, norm: Norm = "batch",
                      norm_first: bool = False) -> nn.Module:
    """x (B, *data.shape) in network units -> score (B,). ``norm_first`` normalises the first conv layer too."""
    if data.kind is DataKind.IMAGE:
        body: nn.Module = ConvEncoder(data.shape, 1, width=width, norm=norm, norm_first=norm_first)
    else:
        body = mlp(data.dims, [hidden] * depth, 1, act=nn.LeakyReLU)
    return nn.Sequential(body, nn.Flatten(0))


# ----- training health: how well D tells real from fake, and how varied G's samples are --------------------------

def classifier_accuracy(real_logits: Tensor, fake_logits: Tensor) -> tuple[float, float]:
    """Share of real examples a real/fake classifier calls real (logit > 0) and of fakes it calls fake.

    Near (1, 1) D wins outright and G's gradients vanish; near (0.5, 0.5) D has given up."""
    return (real_logits > 0).float().mean().item(), (fake_logits < 0).float().mean().item()


def critic_accuracy(real_scores: Tensor, fake_scores: Tensor) -> float:
    """Share of (real, fake) pairs a critic scores real above fake (its scores have no threshold); 0.5 = chance."""
    return (real_scores[:, None] > fake_scores[None, :]).float().mean().item()


def mean_pairwise_distance(x: Tensor) -> Tensor:
    """Mean Euclidean distance between distinct examples of ``x`` (n >= 2, flattened): 0 for a collapsed batch."""
    flat = x.flatten(1).double()
    n = len(flat)
    return torch.cdist(flat, flat).sum() / (n * (n - 1))


# ----- DiffAugment (Zhao et al., 2020): the same random, differentiable augmentation of real and fake images -----

def diff_augment(x: Tensor, translation: float = 0.125, cutout: float = 0.5,
                 generator: torch.Generator | None = None) -> Tensor:
    """Translate each image by up to ``translation`` of its size (zeros shifted in), then zero a square of side
    ``cutout`` of its size at a random centre. Differentiable in ``x``, so G learns through it; D sees only
    augmented images, real and fake alike, which keeps it from memorising a small training set."""
    b, _, h, w = x.shape
    dy, dx = (torch.randint(-round(translation * s), round(translation * s) + 1, (b,), generator=generator)
              for s in (h, w))
    x = _translate(x, dy.to(x.device), dx.to(x.device))
    cy, cx = (torch.randint(0, s, (b,), generator=generator).to(x.device) for s in (h, w))
    keep = ~(_band(h, cy, round(cutout * h))[:, :, None] & _band(w, cx, round(cutout * w))[:, None, :])
    return x * keep[:, None].to(x.dtype)


def _translate(x: Tensor, dy: Tensor, dx: Tensor) -> Tensor:
    """out[b, :, i, j] = x[b, :, i - dy[b], j - dx[b]], zero where that falls outside the image."""
    b, _, h, w = x.shape
    rows = torch.arange(h, device=x.device)[None] - dy[:, None]  # (B, H): source row of each output row
    cols = torch.arange(w, device=x.device)[None] - dx[:, None]
    inside = ((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :]
    batch = torch.arange(b, device=x.device)[:, None, None]
    moved = x[batch, :, rows.clamp(0, h - 1)[:, :, None], cols.clamp(0, w - 1)[:, None, :]]  # (B, H, W, C)
    return moved.permute(0, 3, 1, 2) * inside[:, None].to(x.dtype)


def _band(size: int, centre: Tensor, width: int) -> Tensor:
    """(B, size) mask of the ``width`` positions starting ``width // 2`` before each centre."""
    start = centre[:, None] - width // 2
    index = torch.arange(size, device=centre.device)[None]
    return (index >= start) & (index < start + width)


def spectral_normalise(module: nn.Module) -> nn.Module:
    """Divide the weight of every convolution, linear and embedding layer by its largest singular value
    (Miyato et al., 2018; one power iteration per training forward), making each layer 1-Lipschitz."""
    for layer in list(module.modules()):
        if isinstance(layer, nn.Conv2d | nn.Linear | nn.Embedding):
            spectral_norm(layer)
    return module
