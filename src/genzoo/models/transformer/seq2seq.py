"""``seq2seq``: a T5-style encoder-decoder transformer (Raffel et al. 2020) trained on input -> target pairs.

A bidirectional encoder reads the source x after a start token; the decoder predicts the target y left to right
from its own earlier tokens and, through cross-attention, from every encoder output:

    m = Encoder([BOS, x]),   p(y_t | y_<t, x) = softmax(E^T Decoder([BOS, y_<t], m)_t / sqrt(d)).

Both stacks are pre-norm residual layers with RMSNorm (T5's normalisation: no mean, no bias):

    encoder layer:  h += SelfAttn(N(h)),        h += MLP(N(h))     every source position sees every other
    decoder layer:  h += CausalSelfAttn(N(h)),  h += CrossAttn(N(h), m),  h += MLP(N(h))

Positions enter as rotary phases of self-attention queries and keys (their product depends on the offset m - n
only, the role of T5's relative position biases); cross-attention has no positions. One embedding matrix E serves
the encoder input, the decoder input and the output layer (shared embeddings; the output is scaled by 1/sqrt(d), as
in T5). Source padding is masked out of every attention; target padding is no part of y, so its logit is -inf.
Decoding keeps each decoder layer's self-attention keys and values (the KV cache) and the cross-attention keys and
values of the encoder output in the decoding state: the source is encoded once and a new token costs one position.
Training, the prompt convention, generation and the task metrics are :class:`EncoderDecoderLM`'s.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from genzoo.contract import DataInfo, DataKind, ModelConfig
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.transformer.encoder_decoder import EncoderDecoderLM, split_prompt
from genzoo.nn.transformer import KV, Rotary
from genzoo.registry import register


class Attention(nn.Module):
    """Multi-head scaled dot-product attention with separate query and key/value projections (self or cross)."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width, bias=False)
        self.kv = nn.Linear(width, 2 * width, bias=False)
        self.out = nn.Linear(width, width, bias=False)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, width = x.shape
        return x.view(b, t, self.heads, width // self.heads).transpose(1, 2)

    def queries(self, x: Tensor, rotary: Rotary | None = None, start: int = 0) -> Tensor:
        q = self._heads(self.q(x))
        return q if rotary is None else rotary(q, start)

    def keys_values(self, x: Tensor, rotary: Rotary | None = None, start: int = 0) -> KV:
        k, v = (self._heads(part) for part in self.kv(x).chunk(2, dim=-1))
        return (k if rotary is None else rotary(k, start)), v

    def attend(self, q: Tensor, kv: KV, mask: Tensor | None = None, causal: bool = False) -> Tensor:
        """softmax(q k^T / sqrt(d) + mask) v, heads joined and projected; ``mask`` True = may attend."""
        dropout = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, *kv, attn_mask=mask, is_causal=causal, dropout_p=dropout)
        return self.out(y.transpose(1, 2).flatten(2))


def _mlp(width: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, 4 * width, bias=False), nn.GELU(), nn.Linear(4 * width, width, bias=False),
                         nn.Dropout(dropout))


class EncoderLayer(nn.Module):
    """Bidirectional self-attention over the source (padding masked), then the MLP; pre-norm, residual."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.RMSNorm(width), nn.RMSNorm(width)
        self.attn, self.mlp, self.drop = Attention(width, heads, dropout), _mlp(width, dropout), nn.Dropout(dropout)

    def forward(self, h: Tensor, rotary: Rotary, mask: Tensor | None) -> Tensor:
        a = self.norm1(h)
        h = h + self.drop(self.attn.attend(self.attn.queries(a, rotary), self.attn.keys_values(a, rotary), mask))
        return h + self.mlp(self.norm2(h))


class DecoderLayer(nn.Module):
    """Causal self-attention (with a KV cache), cross-attention to the encoder output, the MLP; pre-norm, residual."""

    def __init__(self, width: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.RMSNorm(width), nn.RMSNorm(width), nn.RMSNorm(width)
        self.self_attn, self.cross = Attention(width, heads, dropout), Attention(width, heads, dropout)
        self.mlp, self.drop = _mlp(width, dropout), nn.Dropout(dropout)

    def forward(self, h: Tensor, memory: KV, mask: Tensor | None, rotary: Rotary, start: int,
                past: KV | None) -> tuple[Tensor, KV]:
        """``h`` at decoder positions start.. ; ``memory`` the cross-attention keys/values of the encoder output."""
        a = self.norm1(h)
        k, v = self.self_attn.keys_values(a, rotary, start)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
        # without a cache the queries and keys are the same positions: causal mask; new queries see every cached key
        causal = past is None and h.shape[1] > 1
        h = h + self.drop(self.self_attn.attend(self.self_attn.queries(a, rotary, start), (k, v), causal=causal))
        h = h + self.drop(self.cross.attend(self.cross.queries(self.norm2(h)), memory, mask))
        return h + self.mlp(self.norm3(h)), (k, v)


@register
class Seq2Seq(EncoderDecoderLM):
    """T5-style encoder-decoder transformer: bidirectional encoder, causal decoder with cross-attention."""

    name = "seq2seq"
    family = "transformer"
    data_kinds = frozenset({DataKind.TOKENS})
    smoke_config: ClassVar[dict[str, Any]] = {"layers": 1, "heads": 2, "width": 16}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64, "warmup_steps": 100, "grad_clip": 1.0}
    #: training steps (batch 64) after which the built-in tasks are mostly solved (bench/seq2seq.py, docs/seq2seq.md)
    quick_steps = 800

    class Config(ModelConfig):
        layers: int = Field(2, ge=1, description="layers of the encoder, and of the decoder")
        heads: int = Field(4, ge=1, description="attention heads")
        width: int = Field(128, ge=2, description="model width d")
        dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on residual branches and attention")
        max_positions: int = Field(512, ge=2, description="longest source (+1) or decoded sequence (+1)")
        lr: float = Field(1e-3, gt=0.0, description="AdamW learning rate")
        weight_decay: float = Field(0.01, ge=0.0, description="AdamW weight decay of matrices and embeddings")

    def __init__(self, config: Config, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        if c.width % c.heads or (c.width // c.heads) % 2:
            raise ConfigError(f"seq2seq: width {c.width} must split into {c.heads} heads of even size (rotary pairs)")
        self.embed = nn.Embedding(self.vocab_out + 1, c.width)  # + BOS, the start of both sequences
        self.rotary = Rotary(c.width // c.heads, c.max_positions)
        self.encoder = nn.ModuleList(EncoderLayer(c.width, c.heads, c.dropout) for _ in range(c.layers))
        self.decoder = nn.ModuleList(DecoderLayer(c.width, c.heads, c.dropout) for _ in range(c.layers))
        self.encoder_norm, self.decoder_norm = nn.RMSNorm(c.width), nn.RMSNorm(c.width)
        self.drop = nn.Dropout(c.dropout)

    def _check_length(self, end: int, what: str) -> None:
        if end > self.config.max_positions:
            raise GenzooError(f"seq2seq: the {what} reaches position {end}, past the {self.config.max_positions} the "
                              "model has (hyperparameter max_positions)")

    def run_encoder(self, source: Tensor) -> tuple[Tensor, Tensor | None]:
        """(B, S) padded sources -> encoder output m (B, S + 1, d) over [BOS, x], and the (B, 1, 1, S + 1) mask of
        its non-padding positions (None without padding)."""
        ids = torch.cat([source.new_full((len(source), 1), self.bos), source], dim=1)
        self._check_length(ids.shape[1], "source")
        mask = None if self.pad is None else (ids != self.pad)[:, None, None, :]
        h = self.drop(self.embed(ids))
        for layer in self.encoder:
            h = layer(h, self.rotary, mask)
        return self.encoder_norm(h), mask

    def cross_keys_values(self, memory: Tensor) -> list[KV]:
        """Each decoder layer's cross-attention keys and values of the encoder output (computed once per source)."""
        return [layer.cross.keys_values(memory) for layer in self.decoder]

    def run_decoder(self, ids: Tensor, memory: list[KV], mask: Tensor | None, start: int,
                    past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """(B, t) decoder ids at positions start.. -> (B, t, V) logits, and the extended self-attention cache."""
        self._check_length(start + ids.shape[1], "decoded sequence")
        h = self.drop(self.embed(ids))
        cache = []
        for i, layer in enumerate(self.decoder):
            h, kv = layer(h, memory[i], mask, self.rotary, start, None if past is None else past[i])
            cache.append(kv)
        h = self.decoder_norm(h) * self.config.width**-0.5
        logits = F.linear(h, self.embed.weight[: self.vocab_out])
        if self.pad is not None:
            logits = logits.index_fill(-1, torch.tensor([self.pad], device=logits.device), float("-inf"))
        return logits, cache

    def target_logits(self, source: Tensor, decoder_ids: Tensor) -> Tensor:
        memory, mask = self.run_encoder(source)
        return self.run_decoder(decoder_ids, self.cross_keys_values(memory), mask, 0, None)[0]

    # ----- generation: the encoder output lives in the decoding state --------------------------------------------
    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]:
        source, decoder_ids = split_prompt(ids, self.bos)
        memory, mask = self.run_encoder(source)
        cross = self.cross_keys_values(memory)
        logits, cache = self.run_decoder(decoder_ids, cross, mask, 0, None)
        return logits[:, -1], (cache, cross, mask)

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        cache, cross, mask = state
        logits, cache = self.run_decoder(token[:, None], cross, mask, cache[0][0].shape[2], cache)
        return logits[:, -1], (cache, cross, mask)
