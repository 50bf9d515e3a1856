"""Diffusion transformer (DiT, Peebles & Xie, 2023): a vision transformer as the denoiser of a diffusion model.

(x_t, t, y) -> a tensor shaped like x_t, as the U-Net:

* patch embedding: the (C, H, W) image is cut into (H/p)(W/p) patches of p x p pixels, each a token
  W_e vec(patch) + pos, with fixed 2-D sine-cosine positions;
* the step t, the optional class label y and the optional condition vector (a caption embedding) give one
  conditioning vector c per example (the U-Net's :class:`~genzoo.nn.unet.Conditioning`: MLP(sinusoid(t)) +
  Embedding(y) + MLP(vector), the label ``num_classes`` and the zero vector meaning "none", for classifier-free
  guidance);
* ``depth`` transformer blocks with adaLN-zero conditioning: (shift, scale, gate) for attention and for the MLP
  are a linear function of SiLU(c), and
      h <- h + gate_a * Attn(LN(h) (1 + scale_a) + shift_a),   h <- h + gate_m * MLP(LN(h) (1 + scale_m) + shift_m);
  the linear map starts at zero, so every block starts as the identity;
* a final adaLN (shift, scale from c, zero at the start) and a linear map from each token to its p x p x C
  pixels, also zero at the start (so the untrained network outputs exactly zero), then the patches are put back
  in place (unpatchify).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genzoo.errors import ConfigError
from genzoo.nn.unet import Conditioning


def sincos_positions(rows: int, cols: int, dim: int) -> Tensor:
    """(rows * cols, dim) fixed positions: half the channels encode the row, half the column, each as
    [sin(p w_k), cos(p w_k)] with w_k = 10000^(-k / (dim / 4)) (the 2-D embedding of MAE and DiT)."""
    if dim % 4:
        raise ConfigError(f"the transformer width must be a multiple of 4 for 2-D positions, got {dim}")
    freqs = 1.0 / 10_000.0 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def encode(positions: Tensor) -> Tensor:
        angles = positions.double()[:, None] * freqs[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    row, col = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.cat([encode(row.flatten()), encode(col.flatten())], dim=1).float()


def modulate(h: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """LN(h) (1 + scale) + shift, per example (shift and scale are (B, width), h is (B, tokens, width))."""
    return h * (1 + scale[:, None]) + shift[:, None]


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class Attention(nn.Module):
    """Multi-head self-attention over all tokens (no mask: every patch sees every patch)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        b, n, w = h.shape
        q, k, v = self.qkv(h).view(b, n, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        att = F.scaled_dot_product_attention(q, k, v)  # (b, heads, n, w / heads)
        return self.out(att.transpose(1, 2).reshape(b, n, w))


class DiTBlock(nn.Module):
    """A transformer block whose LayerNorms are modulated by c and whose residual branches are gated by c."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * width, width))
        self.ada = nn.Sequential(nn.SiLU(), _zero_linear(width, 6 * width))  # adaLN-zero

    def forward(self, h: Tensor, c: Tensor) -> Tensor:
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=1)
        h = h + gate_a[:, None] * self.attn(modulate(self.norm1(h), shift_a, scale_a))
        return h + gate_m[:, None] * self.mlp(modulate(self.norm2(h), shift_m, scale_m))


class DiT(nn.Module):
    """(B, C, H, W) x_t, (B,) steps, (B,) labels, (B, cond_dim) conditions -> (B, C, H, W); ``patch`` must divide
    H and W."""

    def __init__(self, shape: tuple[int, ...], patch: int = 2, width: int = 96, depth: int = 4, heads: int = 4,
                 mlp_ratio: int = 4, num_classes: int | None = None, cond_dim: int | None = None) -> None:
        super().__init__()
        channels, height, wide = shape
        if height % patch or wide % patch:
            raise ConfigError(f"DiT patch size {patch} must divide the image sides {height}x{wide}")
        if width % heads:
            raise ConfigError(f"DiT width {width} must be a multiple of its {heads} heads")
        self.patch, self.grid = patch, (height // patch, wide // patch)
        self.embed = nn.Conv2d(channels, width, patch, stride=patch)  # one linear map per patch
        self.register_buffer("pos", sincos_positions(*self.grid, width), persistent=False)
        self.cond = Conditioning(width, width, num_classes, cond_dim)
        self.blocks = nn.ModuleList(DiTBlock(width, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), _zero_linear(width, 2 * width))
        self.head = _zero_linear(width, patch * patch * channels)

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, vector: Tensor | None = None) -> Tensor:
        c = self.cond(t, y, vector)
        h = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # (B, tokens, width), tokens row by row
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(c).chunk(2, dim=1)
        return self.unpatchify(self.head(modulate(self.norm(h), shift, scale)), x.shape[1])

    def unpatchify(self, tokens: Tensor, channels: int) -> Tensor:
        """(B, tokens, p * p * C) -> (B, C, H, W): token (i, j) fills pixels [i p, (i + 1) p) x [j p, (j + 1) p)."""
        (rows, cols), p = self.grid, self.patch
        patches = tokens.view(len(tokens), rows, cols, p, p, channels)
        return patches.permute(0, 5, 1, 3, 2, 4).reshape(len(tokens), channels, rows * p, cols * p)
