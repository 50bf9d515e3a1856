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
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    ExportModule,
    ExportSpec,
    GenerativeModel,
    LogLikelihood,
    ModelConfig,
    Optimizers,
)
from genzoo.errors import ConfigError, GenzooError, RunDirError
from genzoo.generation import GenerationConfig, TextGenerationMixin, TokenSampling, generate_tokens
from genzoo.tokenizer import Tokenizer, load_tokenizer


class TokenSequenceModel(TextGenerationMixin, GenerativeModel):
    """Base of ``gpt``, ``lstm`` and ``hf``: an exact autoregressive likelihood over token or pixel sequences.

    On token data the model reads and writes text through the dataset's tokenizer, handed over with
    :meth:`use_tokenizer` (``build_model(..., tokenizer=dataset.tokenizer)``) or read from a run's
    ``tokenizer.json`` (:meth:`load_assets`); without one it still samples ids and scores them, but does not
    generate text (no ``generate_text`` capability).
    """

    data_kinds = frozenset({DataKind.TOKENS, DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.GENERATE_TEXT})
    SampleOptions: ClassVar[type[TokenSampling]] = TokenSampling
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
        self.tokenizer: Tokenizer | None = None

    @property
    def capabilities(self) -> frozenset[Capability]:
        caps = set(super().capabilities)
        if self.data.kind is not DataKind.TOKENS or not self.reads_text:
            caps.discard(Capability.GENERATE_TEXT)
        return frozenset(caps)

    @property
    def reads_text(self) -> bool:
        """Whether the model has a tokenizer to turn prompts into ids and ids into text."""
        return self.tokenizer is not None

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Take the tokenizer of the dataset the model is built for; it must be the one that made the data's ids."""
        if self.data.kind is not DataKind.TOKENS:
            raise ConfigError(f"model '{self.name}' is built for {self.data.kind.value} data, which has no tokenizer")
        if tokenizer.vocab_size > (self.data.levels or 0):
            raise ConfigError(f"the tokenizer has {tokenizer.vocab_size} tokens but the data only {self.data.levels} "
                              "token ids: it is not the tokenizer of this data")
        expected = (self.data.extra.get("tokenizer") or {}).get("sha256")
        if expected and tokenizer.sha256 != expected:
            raise ConfigError(f"the tokenizer ({tokenizer.source or 'unnamed'}) is not the one the data was tokenised "
                              f"with (SHA-256 {tokenizer.sha256[:12]}, the data's {expected[:12]})")
        self.tokenizer = tokenizer

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
        optim.step(tuple(optim.optimizers), loss)  # one update, however the parameters are split among optimizers
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        loss = self.token_nll(batch.x).mean().item()
        unit = "bits_per_token" if self.data.kind is DataKind.TOKENS else "bits_per_dim"
        return {"val_loss": loss, unit: loss / math.log(2.0)}

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        values = -self.token_nll(x.to(self.device)).sum(1)
        return LogLikelihood(values, "exact", discrete=True, method="autoregressive factorisation")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """AdamW over every trainable parameter."""
        return {"model": self.adamw([p for p in self.parameters() if p.requires_grad])}

    def adamw(self, params: list[nn.Parameter]) -> torch.optim.AdamW:
        """AdamW with ``config.lr``; weight decay on matrices and embeddings only (not on biases and norm gains)."""
        decay = [p for p in params if p.dim() >= 2]
        rest = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": self.config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        fused = self.device.type in ("cpu", "cuda")  # one kernel for all parameters instead of one per tensor
        return torch.optim.AdamW(groups, lr=self.config.lr, betas=(0.9, 0.99), fused=fused)

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

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: TokenSampling) -> Tensor:
        cfg = GenerationConfig(**options.model_dump(), max_new_tokens=self.seq_len)
        start = torch.full((n, 1), self.bos, dtype=torch.long, device=self.device)
        ids = torch.stack(list(generate_tokens(self, start, cfg, generator, self.vocab_out)), dim=1)
        return self.from_ids(ids)

    # ----- export --------------------------------------------------------------------------------------------
    def causal_export(self, batch: int, context: int | None = None) -> ExportSpec:
        """An ``export_module`` for causal models (``export_module = TokenSequenceModel.causal_export``).

        Next-token logits over a fixed window: ids (batch, context) -> logits (batch, context, V). Attention is
        causal, so logits[:, t] depend on ids[:, :t + 1] only: a shorter sequence is padded on the right with any
        id and read at its last position; the generation loop stays with the caller."""
        longest = self.max_positions or self.seq_len
        context = longest if context is None else context
        if not 1 <= context <= longest:
            raise ConfigError(f"model '{self.name}' reads at most {longest} positions; got context {context}")
        ids = torch.randint(self.vocab_out, (batch, context), generator=torch.Generator().manual_seed(0))
        ids[:, 0] = self.bos
        return ExportSpec(ExportModule(self, self.forward), {"ids": ids}, "logits",
                          f"ids[:, 0] = BOS = {self.bos}; draw token t+1 from softmax(logits[:, t]) and write it at "
                          f"ids[:, t + 1]; past {context} positions keep BOS and the last {context - 1} tokens")

    # ----- cost ------------------------------------------------------------------------------------------------
    def token_flops(self, position: int) -> float | None:
        """Forward FLOPs of one token at ``position`` (0 = BOS) with the cache; None when unknown."""
        return None

    def _flops_per_position(self) -> list[float] | None:
        per = [self.token_flops(p) for p in range(self.seq_len)]
        return None if any(f is None for f in per) else per  # type: ignore[return-value]

    def train_flops_per_example(self) -> float | None:
        """Training FLOPs (forward + backward = 3x forward) of one example; None when unknown."""
        per = self._flops_per_position()
        return None if per is None else 3.0 * sum(per)

    def cost(self, **options: Any) -> Cost:
        """One network call per generated token (a sample is ``seq_len`` tokens after BOS). FLOPs: with the cache
        each token is read once; without it step s re-reads all s + 1 positions so far."""
        typed = self.sample_options(**options)
        per = self._flops_per_position()
        flops = None
        if per is not None:
            flops = float(sum(per)) if typed.use_cache else float(sum(sum(per[: s + 1]) for s in range(len(per))))
        return Cost(nfe_per_sample=self.seq_len, flops_per_sample=flops,
                    train_flops_per_example=self.train_flops_per_example())

    # ----- text ------------------------------------------------------------------------------------------------
    def _tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            if self.data.kind is not DataKind.TOKENS:
                raise GenzooError(f"this '{self.name}' model was trained on {self.data.kind.value} data: it has no "
                                  "tokenizer and does not read or write text")
            raise GenzooError(f"this '{self.name}' model has no tokenizer, so it cannot read or write text: build it "
                              "with its dataset's (genzoo.create(name, dataset), or build_model(..., "
                              "tokenizer=dataset.tokenizer)), or load a run directory that has its tokenizer.json")
        return self.tokenizer

    def prompt_ids(self, prompt: str) -> list[int]:
        return [self.bos, *self._tokenizer().encode(prompt)]

    def decode_tokens(self, ids: list[int]) -> str:
        """Token ids -> text (the tokenizer's decoding)."""
        return self._tokenizer().decode(ids)

    @property
    def eos_ids(self) -> frozenset[int]:
        """Token ids that end a completion: none, our tokenizers have no end-of-text token."""
        return frozenset()

    def save_assets(self, directory: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save(Path(directory) / "tokenizer.json")

    def load_assets(self, directory: Path) -> None:
        path = Path(directory) / "tokenizer.json"
        if self.data.kind is not DataKind.TOKENS or not path.is_file():
            return
        tok = load_tokenizer(path)
        expected = (self.data.extra.get("tokenizer") or {}).get("sha256")
        if expected and tok.sha256 != expected:
            raise RunDirError(f"{path}: tokenizer does not match the one the run was trained with")
        if tok.vocab_size > (self.data.levels or 0):
            raise RunDirError(f"{path}: the tokenizer has {tok.vocab_size} tokens but the run's data only "
                              f"{self.data.levels}")
        self.tokenizer = tok
