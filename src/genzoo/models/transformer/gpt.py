"""``gpt``: a decoder-only transformer language model (Radford et al. 2018/2019), also over pixels (ImageGPT).

Tokens (plus a begin-of-sequence token) are embedded, positions enter as a learned table added to the embedding or
as rotary phases applied to queries and keys (Su et al. 2021: rotating q_m and k_n by angles m*w and n*w makes their
dot product depend on m - n only). Each of ``layers`` pre-norm blocks computes

    h = h + Attn(LN(h)),   h = h + MLP(LN(h)),   Attn = softmax(q k^T / sqrt(d) + causal mask) v,

with one fused q/k/v projection and PyTorch's ``scaled_dot_product_attention``; the MLP is 4x wide with GELU. The
output layer shares the token embedding matrix (weight tying). Residual projections start at std 0.02 / sqrt(2L).
Generation keeps each layer's keys and values (the KV cache), so a new token costs one position instead of all;
past the context length the window slides and is re-read (BOS + the last T - 1 tokens), with or without the cache.
Training: the blocks' weight matrices learn with Muon (orthogonalised momentum, :mod:`genzoo.nn.muon`) and the
embedding, gains and biases with AdamW (``optimizer=adamw`` puts everything on AdamW): on Tiny Shakespeare within
a nanoGPT-style reference's wall-clock, validation loss 1.65 nats per character against AdamW's 1.75.
Mixed precision is the trainer's (``precision``, default ``auto`` for this model: bf16 matmuls where the hardware has
native support, ~1.5x tokens/s on an AVX512-BF16 CPU; ``--set precision=fp32`` turns it off). Under it, attention on
the CPU and the logits stay in fp32, and evaluation runs outside it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import DataInfo, ModelConfig
from genzoo.errors import ConfigError
from genzoo.models.autoregressive.sequence import TokenSequenceModel
from genzoo.nn.lora import apply_lora
from genzoo.nn.muon import Muon
from genzoo.nn.transformer import KV, Block, Rotary, init_weights
from genzoo.registry import register
from genzoo.searchspace import Choice, IntRange, LogUniform, Param, Uniform


@register
class GPT(TokenSequenceModel):
    """Decoder-only transformer language model (causal attention, KV cache); pixels as tokens for images."""

    name = "gpt"
    quick_steps = 600
    family = "transformer"
    export_module = TokenSequenceModel.causal_export  # next-token logits over a fixed window
    smoke_config: ClassVar[dict[str, Any]] = {"layers": 1, "heads": 2, "width": 16}
    search_space: ClassVar[dict[str, Param]] = {
        "lr": LogUniform(3e-4, 1e-2), "muon_lr": LogUniform(5e-3, 5e-2), "layers": IntRange(2, 6),
        "width": Choice(64, 128, 192),
        "dropout": Uniform(0.0, 0.2), "weight_decay": Uniform(0.0, 0.2),
    }
    #: bf16 autocast while training where the hardware computes bf16 natively (the trainer's ``precision``)
    train_defaults: ClassVar[dict[str, Any]] = {**TokenSequenceModel.train_defaults, "precision": "auto"}

    class Config(ModelConfig):
        layers: int = Field(4, ge=1)
        heads: int = Field(4, ge=1)
        width: int = Field(128, ge=2)
        positions: Literal["learned", "rotary"] = "learned"
        bias: bool = False
        dropout: float = Field(0.0, ge=0.0, lt=1.0)
        tie_weights: bool = True
        lora_rank: int = Field(0, ge=0)  # > 0: train LoRA adapters of this rank on every linear layer only
        lora_alpha: float = 16.0
        optimizer: Literal["muon", "adamw"] = "muon"  # the update rule of the blocks' weight matrices
        lr: float = Field(2e-3, gt=0)  # AdamW's (all parameters with optimizer=adamw, else the non-matrix ones)
        muon_lr: float = Field(0.02, gt=0)
        weight_decay: float = 0.1

    def __init__(self, config: Config, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        if c.width % c.heads or (c.width // c.heads) % 2:
            raise ConfigError(f"gpt: width {c.width} must split into {c.heads} heads of even size (rotary pairs)")
        self.embed = nn.Embedding(self.vocab_out + 1, c.width)  # + BOS
        self.max_positions = self.seq_len
        self.pos = nn.Parameter(torch.zeros(self.seq_len, c.width)) if c.positions == "learned" else None
        self.rotary = Rotary(c.width // c.heads, self.seq_len) if c.positions == "rotary" else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, c.bias, c.dropout) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width, bias=c.bias)
        self.head = None if c.tie_weights else nn.Linear(c.width, self.vocab_out, bias=False)
        init_weights(self, self.blocks, self.pos)
        if c.lora_rank:
            apply_lora(self, c.lora_rank, c.lora_alpha, 0.0, r"blocks\.\d+\.(qkv|proj|mlp\.0|mlp\.2)")

    def _run(self, ids: Tensor, start: int, past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """Hidden -> logits for ``ids`` at positions start.., reading/extending the per-layer cache ``past``."""
        h = self.embed(ids)
        if self.pos is not None:
            h = h + self.pos[start : start + ids.shape[1]]
        h = self.drop(h)
        cache = []
        for i, block in enumerate(self.blocks):
            h, kv = block(h, self.rotary, start, None if past is None else past[i])
            cache.append(kv)
        h = self.norm(h)
        weight = self.embed.weight[: self.vocab_out] if self.head is None else self.head.weight
        return F.linear(h, weight), cache

    def forward(self, inputs: Tensor) -> Tensor:
        return self._run(inputs, 0, None)[0].float()

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Muon for the blocks' trainable weight matrices (not LoRA adapters), AdamW for the rest."""
        params = [p for p in self.parameters() if p.requires_grad]
        matrices = [p for n, p in self.blocks.named_parameters() if p.requires_grad and p.dim() == 2
                    and "lora_" not in n] if self.config.optimizer == "muon" else []
        if not matrices:  # optimizer=adamw, or LoRA (only adapters train)
            return {"model": self.adamw(params)}
        taken = set(map(id, matrices))
        return {"model": self.adamw([p for p in params if id(p) not in taken]),
                "muon": Muon(matrices, lr=self.config.muon_lr, weight_decay=self.config.weight_decay)}

    # ----- generation ------------------------------------------------------------------------------------------
    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]:
        logits, cache = self._run(self.window(ids), 0, None)
        return logits[:, -1], (cache, ids)

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        cache, ids = state
        ids = torch.cat([ids, token[:, None]], dim=1)
        if ids.shape[1] > self.max_positions:  # the window slides: positions shift, so re-read it
            return self.prefill(ids)
        logits, cache = self._run(token[:, None], ids.shape[1] - 1, cache)
        return logits[:, -1], (cache, ids)

    # ----- cost ------------------------------------------------------------------------------------------------
    def matmul_params(self) -> int:
        """Weights that multiply every token's activations: the blocks' linear layers and the output layer."""
        params = sum(p.numel() for n, p in self.named_parameters()
                     if n.endswith("weight") and p.dim() == 2 and not n.startswith("embed"))
        return params + (self.vocab_out * self.config.width if self.head is None else 0)  # the tied output layer

    def token_flops(self, position: int) -> float:
        """Forward FLOPs of one token with the KV cache: 2 per matmul weight, and 4 d per layer for each of the
        position + 1 keys it attends to (q k^T and the weighted sum of values)."""
        return 2.0 * self.matmul_params() + 4.0 * self.config.layers * self.config.width * (position + 1)

    def train_flops_per_example(self) -> float:
        """Training FLOPs of one example: per token 6 N (forward + backward over N matmul weights) + 12 L T d for
        attention over the whole window (the usual count, e.g. nanoGPT's and PaLM's), times T tokens."""
        c, t = self.config, self.seq_len
        return t * (6.0 * self.matmul_params() + 12.0 * c.layers * t * c.width)
