"""What every autoregressive token model shares: data -> token ids, the likelihood, sampling and text generation.

A sequence x = (x_1 .. x_T) over a vocabulary of V tokens is factorised exactly,

    log p(x) = sum_t log p(x_t | BOS, x_<t),

with an extra begin-of-sequence token (id V) so that the first token has a distribution too. Token data uses its
ids; images become ImageGPT-style sequences of T = C*H*W pixel tokens in raster order over the data's L discrete
levels (id = round(x * (L - 1))), so the same loss is an exact discrete log-likelihood and bits/dim = loss / ln 2.
Subclasses implement ``forward(inputs) -> logits`` plus ``prefill``/``extend`` for generation.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genzoo.contract import (
    Batch,
    Capability,
    DataInfo,
    DataKind,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
)
from genzoo.data.text import TextCodec, find_tokenizer, load_tokenizer, tokenizer_key
from genzoo.errors import ConfigError, GenzooError, RunDirError
from genzoo.generation import TextGenerationMixin, generate_tokens, generation_config

SAMPLE_OPTIONS = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "use_cache")


class TokenSequenceModel(TextGenerationMixin, GenerativeModel):
    """Base of ``gpt`` and ``lstm``: an exact autoregressive likelihood over token or pixel sequences."""

    data_kinds = frozenset({DataKind.TOKENS, DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.GENERATE_TEXT})
    sample_options = SAMPLE_OPTIONS
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 16, "warmup_steps": 100, "grad_clip": 1.0}

    def __init__(self, config: ModelConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        if not data.levels:
            raise ConfigError(f"model '{self.name}' models discrete tokens; the data has continuous values (no "
                              "levels). Use image data with discrete levels or a text spec")
        self.vocab_out = data.levels
        self.bos = data.levels
        self.seq_len = data.dims
        #: longest input the network reads (positions); None for recurrent models
        self.max_positions: int | None = None
        found = find_tokenizer(data) if data.kind is DataKind.TOKENS else None
        self.codec: TextCodec | None = TextCodec(found) if found is not None else None

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set(super().capabilities)
        if self.data.kind is not DataKind.TOKENS:
            caps.discard(Capability.GENERATE_TEXT)
        return frozenset(caps)

    # ----- data <-> ids ----------------------------------------------------------------------------------------
    def to_ids(self, x: Tensor) -> Tensor:
        if self.data.kind is DataKind.TOKENS:
            return x.long()
        levels = self.vocab_out - 1
        return (x.flatten(1) * levels).round().long().clamp(0, levels)

    def from_ids(self, ids: Tensor) -> Tensor:
        if self.data.kind is DataKind.TOKENS:
            return ids
        return (ids.float() / (self.vocab_out - 1)).view(-1, *self.data.shape)

    def with_bos(self, ids: Tensor) -> Tensor:
        """(B, T) targets -> (B, T) inputs: BOS then all but the last token."""
        bos = torch.full_like(ids[:, :1], self.bos)
        return torch.cat([bos, ids[:, :-1]], dim=1)

    # ----- likelihood and training -----------------------------------------------------------------------------
    def forward(self, inputs: Tensor) -> Tensor:
        """(B, t) input ids -> (B, t, V) next-token logits."""
        raise NotImplementedError

    def token_nll(self, x: Tensor) -> Tensor:
        """-log p(x_t | x_<t) in nats, (B, T)."""
        ids = self.to_ids(x)
        logits = self(self.with_bos(ids))
        return F.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(ids.shape)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = self.token_nll(batch.x).mean()
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        loss = self.token_nll(batch.x).mean().item()
        unit = "bits_per_token" if self.data.kind is DataKind.TOKENS else "bits_per_dim"
        return {"val_loss": loss, unit: loss / math.log(2.0)}

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        values = -self.token_nll(x.to(self.device)).sum(1)
        return LogLikelihood(values, "exact", discrete=True, method="autoregressive factorisation")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW; weight decay on matrices and embeddings only (not on biases and norm gains)."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        fused = self.device.type in ("cpu", "cuda")  # one kernel for all parameters instead of one per tensor
        return {"model": torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=fused)}

    # ----- sampling --------------------------------------------------------------------------------------------
    def prefill(self, ids: Tensor) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def window(self, ids: Tensor) -> Tensor:
        """The last ``max_positions`` ids, keeping the leading BOS when the sequence is longer than that."""
        if self.max_positions is None or ids.shape[1] <= self.max_positions:
            return ids
        return torch.cat([ids[:, :1], ids[:, ids.shape[1] - self.max_positions + 1 :]], dim=1)

    def extend(self, token: Tensor, state: Any) -> tuple[Tensor, Any]:
        raise NotImplementedError

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, **options: Any) -> Tensor:
        cfg = generation_config(max_new_tokens=self.seq_len, **options)
        start = torch.full((n, 1), self.bos, dtype=torch.long, device=self.device)
        ids = torch.stack(list(generate_tokens(self, start, cfg, generator, self.vocab_out)), dim=1)
        return self.from_ids(ids)

    # ----- text ------------------------------------------------------------------------------------------------
    def _codec(self) -> TextCodec:
        if self.codec is None:
            raise GenzooError(f"this '{self.name}' model has no tokenizer: it was trained on "
                              f"{self.data.kind.value} data, or its run directory lacks tokenizer.json")
        return self.codec

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos, *self._codec().encode(prompt)]

    def decode(self, ids: list[int]) -> str:
        return self._codec().decode(ids)

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end a completion: none, our tokenizers have no end-of-text token."""
        return frozenset()

    def preview_text(self, generator: torch.Generator) -> str:
        """A 300-token completion of the empty prompt at temperature 0.8 (the trainer's sample preview)."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        text = self.generate("", max_new_tokens=300, temperature=0.8, seed=seed)
        return text if isinstance(text, str) else text[0]

    def save_assets(self, directory: Path) -> None:
        if self.codec is not None:
            self.codec.tokenizer.save(str(Path(directory) / "tokenizer.json"))

    def load_assets(self, directory: Path) -> None:
        path = Path(directory) / "tokenizer.json"
        if self.data.kind is not DataKind.TOKENS or not path.is_file():
            return
        tok = load_tokenizer(path)
        expected = self.data.extra.get("tokenizer", {}).get("sha256")
        if expected and tokenizer_key(tok) != expected:
            raise RunDirError(f"{path}: tokenizer does not match the one the run was trained with")
        self.codec = TextCodec(tok)
