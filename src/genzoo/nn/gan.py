"""Generator and discriminator networks for adversarial models, for image or vector data.

Images: the generator is a :class:`ConvDecoder` from the latent code with a tanh output (network units [-1, 1]);
the discriminator a :class:`ConvEncoder` down to one score. Vectors: plain MLPs, the generator's output linear in
standardised units. Discriminators return one unnormalised score per example, shape (B,).
"""

from __future__ import annotations

from torch import nn

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
