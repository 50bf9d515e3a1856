"""Transformer layers shared by the token models: rotary positions and the pre-norm self-attention block.

Rotary position embedding (Su et al. 2021): rotating q_m and k_n by angles m*w and n*w makes their dot product
depend on m - n only. A block computes

    h = h + Attn(LN(h)),   h = h + MLP(LN(h)),   Attn = softmax(q k^T / sqrt(d) [+ causal mask]) v,

with one fused q/k/v projection and PyTorch's ``scaled_dot_product_attention``; the MLP is 4x wide with GELU. A
causal block (``gpt``) lets position t attend to positions <= t and keeps its keys and values for a KV cache; a
bidirectional one (``maskgit``) lets every position attend to every other.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

KV = tuple[Tensor, Tensor]


class Rotary(nn.Module):
    """cos/sin tables for rotary position embedding (half-split convention)."""

    def __init__(self, head_dim: int, max_len: int, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float32), inv_freq)
        angles = torch.cat([angles, angles], dim=-1)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, x: Tensor, start: int) -> Tensor:
        """Rotate (B, H, t, d) queries or keys at positions start .. start + t - 1."""
        t = x.shape[-2]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Block(nn.Module):
    """Pre-norm transformer block: multi-head self-attention (causal or bidirectional) and a GELU MLP, each
    residual."""

    def __init__(self, width: int, heads: int, bias: bool, dropout: float, causal: bool = True) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.causal = causal
        self.norm1 = nn.LayerNorm(width, bias=bias)
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)
        self.norm2 = nn.LayerNorm(width, bias=bias)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width, bias=bias), nn.GELU(),
                                 nn.Linear(4 * width, width, bias=bias), nn.Dropout(dropout))
        self.resid_drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, rotary: Rotary | None, start: int, past: KV | None) -> tuple[Tensor, KV]:
        b, t, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).view(b, t, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        if rotary is not None:
            q, k = rotary(q, start), rotary(k, start)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # a single new query attends to every cached key: no mask needed then
        causal = self.causal and past is None and bool(t > 1)  # bool(): t is a tensor when traced for export
        dropout = self.dropout if self.training else 0.0
        if h.device.type == "cpu":  # the CPU flash-attention backward is ~4x slower in bf16: attend in fp32
            with torch.autocast("cpu", enabled=False):
                y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=causal, dropout_p=dropout)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=causal, dropout_p=dropout)
        h = h + self.resid_drop(self.proj(y.transpose(1, 2).reshape(b, t, width)))
        return h + self.mlp(self.norm2(h)), (k, v)


def init_weights(model: nn.Module, blocks: nn.ModuleList, pos: nn.Parameter | None) -> None:
    """GPT-2's initialisation: linear and embedding weights ~ N(0, 0.02^2), biases 0, learned positions ~ N(0, 0.02^2),
    and the two projections of each block back into the residual stream ~ N(0, (0.02 / sqrt(2L))^2), so the
    residual stream's variance does not grow with the number of blocks L."""
    for module in model.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)
    for block in blocks:
        for proj in (block.proj, block.mlp[2]):
            nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * len(blocks)))
    if pos is not None:
        nn.init.normal_(pos, std=0.02)
