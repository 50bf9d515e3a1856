"""Time-conditioned denoising networks: a U-Net for images and a residual MLP for vectors.

Both map (x_t, t, y, c) to a tensor shaped like x_t. The step t enters through a sinusoidal embedding followed by
an MLP; an optional class label y through a learned embedding with one extra "null" class (index
``num_classes``), which classifier-free guidance uses for the unconditional prediction; an optional conditioning
vector c (a caption's sentence embedding, ``cond_dim`` wide) through an MLP, the zero vector meaning "no
condition" (embeddings are unit length, never zero). Their sum is added to every residual block (adaLN).

The U-Net (Ronneberger et al., 2015, in the form of Ho et al., 2020) has one level per entry of
``channel_mult``, capped by how often the image can be halved (both sides even and >= 4 after halving: 8x8 has
two levels, 28x28 three, 64x64 up to five). Each level holds ``num_res_blocks`` residual blocks (GroupNorm, SiLU,
3x3 conv; the embedding scales and shifts the normalised activations, as in Dhariwal & Nichol, 2021), with
multi-head self-attention where the larger side is at most ``attention_below``, and a middle block of
residual-attention-residual at the lowest resolution. The decoder mirrors the encoder and concatenates the
encoder's activations (skip connections). Output convolutions of each block start at zero, so every block starts
as the identity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from genzoo.nn.conv import resolution_levels


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10_000.0) -> Tensor:
    """Sinusoidal features [cos(t w_k), sin(t w_k)] with w_k = max_period^(-k / (dim / 2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    emb = torch.cat([angles.cos(), angles.sin()], dim=1)
    return F.pad(emb, (0, dim % 2))


def _group_norm(channels: int) -> nn.GroupNorm:
    """At most 32 groups of at least 4 channels where possible (single-channel groups would erase per-channel
    offsets such as the step embedding)."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


def _zero(module: nn.Module) -> nn.Module:
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class Conditioning(nn.Module):
    """(t, y, c) -> one embedding vector per example: MLP(sinusoid(t)) + Embedding(y) + MLP(c)."""

    def __init__(self, width: int, dim: int, num_classes: int | None, cond_dim: int | None = None) -> None:
        super().__init__()
        self.width = width
        self.time = nn.Sequential(nn.Linear(width, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label = nn.Embedding(num_classes + 1, dim) if num_classes else None
        self.vector = nn.Sequential(nn.Linear(cond_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if cond_dim else None

    def forward(self, t: Tensor, y: Tensor | None, c: Tensor | None = None) -> Tensor:
        emb = self.time(timestep_embedding(t, self.width))
        if self.label is not None:
            if y is None:
                raise ValueError("this network is class-conditional: pass labels (num_classes means 'no label')")
            emb = emb + self.label(y)
        if self.vector is not None:
            if c is None:
                raise ValueError("this network is vector-conditional: pass c (zeros mean 'no condition')")
            emb = emb + self.vector(c)
        return emb


class ResBlock(nn.Module):
    """x + conv(SiLU(GN(h) * (1 + scale) + shift)), h = conv(SiLU(GN(x))), (scale, shift) = Linear(emb)."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.inner = nn.Sequential(_group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, 2 * c_out))
        self.norm = _group_norm(c_out)
        self.outer = nn.Sequential(nn.SiLU(), nn.Dropout(dropout), _zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(self.inner(x)) * (1 + scale) + shift
        return self.skip(x) + self.outer(h)


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions (heads of 32 channels at most)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.heads = max(1, channels // 32)
        self.norm = _group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = _zero(nn.Conv2d(channels, channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        att = F.scaled_dot_product_attention(q, k, v)  # (b, heads, hw, c/heads)
        return x + self.out(att.transpose(-1, -2).reshape(b, c, h, w))


class Stage(nn.Module):
    """A residual block, optionally followed by self-attention."""

    def __init__(self, c_in: int, c_out: int, emb_dim: int, dropout: float, attention: bool) -> None:
        super().__init__()
        self.res = ResBlock(c_in, c_out, emb_dim, dropout)
        self.attn = SelfAttention(c_out) if attention else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return self.attn(self.res(x, emb))


class UNet(nn.Module):
    """(B, in_channels, H, W) x_t (with any conditioning images stacked on it), (B,) steps, (B,) labels,
    (B, cond_dim) conditions -> (B, C, H, W)."""

    def __init__(self, shape: tuple[int, ...], width: int = 64, channel_mult: tuple[int, ...] = (1, 2, 2),
                 num_res_blocks: int = 2, attention_below: int = 16, dropout: float = 0.0,
                 num_classes: int | None = None, cond_dim: int | None = None, in_channels: int | None = None) -> None:
        super().__init__()
        channels, height, wide = shape
        levels = min(resolution_levels(height, wide), len(channel_mult) - 1) + 1
        widths = [width * m for m in channel_mult[:levels]]
        emb_dim = 4 * width
        self.cond = Conditioning(width, emb_dim, num_classes, cond_dim)
        self.stem = nn.Conv2d(in_channels or channels, width, 3, padding=1)

        def attend(level: int) -> bool:
            return max(height, wide) >> level <= attention_below

        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        skips, c = [width], width
        for level, w in enumerate(widths):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(Stage(c, w, emb_dim, dropout, attend(level)))
                c = w
                skips.append(c)
            self.down.append(blocks)
            if level < levels - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.middle = nn.ModuleList([Stage(c, c, emb_dim, dropout, True), Stage(c, c, emb_dim, dropout, False)])
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for level, w in reversed(list(enumerate(widths))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(Stage(c + skips.pop(), w, emb_dim, dropout, attend(level)))
                c = w
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.head = nn.Sequential(_group_norm(c), nn.SiLU(), _zero(nn.Conv2d(c, channels, 3, padding=1)))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        emb = self.cond(t, y, c)
        h = self.stem(x)
        saved = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                saved.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                saved.append(h)
        for block in self.middle:
            h = block(h, emb)
        for i, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, saved.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.head(h)


class ResidualMLP(nn.Module):
    """(B, D) x_t, (B,) steps, (B,) labels, (B, cond_dim) conditions -> (B, D): ``depth`` blocks
    h += W2 SiLU(W1 LN(h) + emb)."""

    def __init__(self, dims: int, width: int = 256, depth: int = 3, num_classes: int | None = None,
                 cond_dim: int | None = None) -> None:
        super().__init__()
        self.cond = Conditioning(width, width, num_classes, cond_dim)
        self.stem = nn.Linear(dims, width)
        self.blocks = nn.ModuleList(
            nn.ModuleDict({"norm": nn.LayerNorm(width), "inner": nn.Linear(width, width),
                           "outer": nn.Sequential(nn.SiLU(), nn.Linear(width, width))})
            for _ in range(depth)
        )
        self.head = nn.Sequential(nn.LayerNorm(width), nn.SiLU(), nn.Linear(width, dims))

    def forward(self, x: Tensor, t: Tensor, y: Tensor | None = None, c: Tensor | None = None) -> Tensor:
        emb = self.cond(t, y, c)
        h = self.stem(x)
        for block in self.blocks:
            h = h + block["outer"](block["inner"](block["norm"](h)) + emb)
        return self.head(h)
