"""What encoder-decoder models share (``seq2seq``, ``hf:NAME`` of a T5-style model): input -> target pairs.

Data (:mod:`genzoo.data.pairs`): ``Batch.x`` holds targets ending in ``</s>`` and padded with ``<pad>``, ``Batch.cond``
the padded sources; ``DataInfo.extra["pairs"]`` records the source length and the ``eos``/``pad`` ids. The model is

    log p(y | x) = sum_t log p(y_t | y_<t, x),   y ending in </s> (padding is not part of y),

a *conditional* likelihood: it is reported by :meth:`task_metrics` (``conditional_nll_per_token``), never in the
likelihood columns of unconditional models. On plain token data (no source) the source is empty and the model is an
ordinary language model p(y): then it samples and has an exact likelihood like ``gpt``.

The decoding loop of :mod:`genzoo.generation` drives every model through ``prefill``/``extend``; an encoder-decoder
reads one row of ids as ``source, SEP, decoder prefix`` with ``SEP = self.bos`` (an id outside the output
vocabulary): ``prefill`` encodes what comes before SEP, keeps the encoder output in the decoding state and starts
decoding at SEP. So ``generate(prompt)`` encodes the prompt and decodes the answer, and greedy decoding, sampling and
beam search work unchanged.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from genzoo.contract import Batch, Capability, LogLikelihood, Optimizers
from genzoo.errors import GenzooError
from genzoo.generation import generate_tokens, generation_config
from genzoo.models.autoregressive.sequence import TokenSequenceModel

#: held-out sources decoded at once by :meth:`EncoderDecoderLM.task_metrics`
DECODE_BATCH = 256


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance: the fewest insertions, deletions and substitutions turning ``a`` into ``b``."""
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        diagonal, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (ca != cb))
    return row[-1]


def char_error_rate(predictions: list[str], references: list[str]) -> float:
    """Corpus character error rate: total edit distance over the total length of the references."""
    edits = sum(edit_distance(p, r) for p, r in zip(predictions, references, strict=True))
    return edits / max(1, sum(len(r) for r in references))


def split_prompt(ids: Tensor, sep: int) -> tuple[Tensor, Tensor]:
    """(B, t) rows ``source, SEP, prefix`` -> (sources (B, j), decoder ids (B, t - j) starting with SEP)."""
    found = (ids[0] == sep).nonzero()
    if not len(found):
        raise GenzooError("an encoder-decoder prompt is the source, then the start id, then the decoder's prefix; "
                          "this one has no start id")
    j = int(found[0])
    return ids[:, :j], ids[:, j:]


class EncoderDecoderLM(TokenSequenceModel):
    """Base of encoder-decoder models: pair data, the prompt convention, training on log p(y | x), task metrics.

    Subclasses implement ``target_logits(source, decoder_ids) -> (B, t, V)`` and ``prefill``/``extend``."""

    #: the answer to a prompt is not its continuation: ``genzoo sample --prompt`` prints the answer alone
    continues_prompt: ClassVar[bool] = False

    @property
    def pairs(self) -> dict[str, Any] | None:
        """``DataInfo.extra["pairs"]`` of pair data (source length, eos and pad ids); None for plain token data."""
        return self.data.extra.get("pairs")

    @property
    def pad(self) -> int | None:
        return None if self.pairs is None else int(self.pairs["pad"])

    @property
    def capabilities(self) -> frozenset[Capability]:
        """On pairs only p(y | x) exists: no unconditional samples, no unconditional likelihood."""
        caps = set(super().capabilities)
        if self.pairs is not None:
            caps -= {Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.ANOMALY_SCORE}
        return frozenset(caps)

    @property
    def eos_ids(self) -> frozenset[int]:
        return frozenset() if self.pairs is None else frozenset({int(self.pairs["eos"])})

    # ----- likelihood and training -----------------------------------------------------------------------------
    def target_logits(self, source: Tensor, decoder_ids: Tensor) -> Tensor:
        """(B, S) padded sources and (B, t) decoder inputs (starting with ``bos``) -> (B, t, V) next-token logits."""
        raise NotImplementedError

    def token_nll(self, x: Tensor, source: Tensor | None = None) -> Tensor:
        """-log p(y_t | y_<t, x) in nats, (B, T); 0 at padding. ``source`` None: the empty source."""
        y = self.to_ids(x)
        if source is None:
            source = y.new_zeros((len(y), 0))
        logits = self.target_logits(source, self.with_bos(y)).float()
        ignore = -100 if self.pad is None else self.pad
        return F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=ignore, reduction="none").view(y.shape)

    def _pair_loss(self, batch: Batch) -> Tensor:
        """Mean negative log-likelihood per target token (padding excluded)."""
        nll = self.token_nll(batch.x, batch.cond)
        tokens = batch.x.numel() if self.pad is None else (batch.x != self.pad).sum()
        return nll.sum() / tokens

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = self._pair_loss(batch)
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        loss = self._pair_loss(batch).item()
        return {"val_loss": loss, "bits_per_token": loss / math.log(2.0)}

    def log_likelihood(self, x: Tensor, labels: Tensor | None = None) -> LogLikelihood:
        """log p(y) of plain token data (the empty source); pairs have only log p(y | x) (:meth:`task_metrics`)."""
        self.require(Capability.EXACT_LIKELIHOOD)
        return super().log_likelihood(x, labels)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: Any) -> Tensor:
        self.require(Capability.SAMPLE)
        return super()._sample(n, generator, labels, options)

    # ----- text ------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """The prompt is the source: its ids, then the start id where decoding begins."""
        return [*self._tokenizer().encode(prompt), self.bos]

    def decode_sources(self, sources: Tensor, **options: Any) -> list[list[int]]:
        """Greedy (or, with options, sampled) answers to (B, S) padded sources, as ids cut at ``</s>``."""
        cfg = generation_config(**{"temperature": 0.0, "max_new_tokens": self.seq_len, **options})
        generator = torch.Generator().manual_seed(0 if cfg.seed is None else cfg.seed)
        prompts = torch.cat([sources, sources.new_full((len(sources), 1), self.bos)], dim=1).to(self.device)
        tokens = torch.stack(list(generate_tokens(self, prompts, cfg, generator, self.vocab_out)), dim=1).tolist()
        return [row[: next((i for i, t in enumerate(row) if t in self.eos_ids), len(row))] for row in tokens]

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """Greedy decoding of the held-out sources: exact match and character error rate of the answers against the
        targets, and the conditional negative log-likelihood per target token (log p(y | x), not log p(y))."""
        if self.pairs is None or test.cond is None:
            return {}
        predictions, references, nll, tokens = [], [], 0.0, 0
        with torch.no_grad():
            for start in range(0, len(test), DECODE_BATCH):
                part = test[start : start + DECODE_BATCH]
                predictions += [self.decode_tokens(ids) for ids in self.decode_sources(part.cond)]
                references += [self.decode_tokens([t for t in row if t not in (*self.eos_ids, self.pad)])
                               for row in part.x.tolist()]
                nll += float(self.token_nll(part.x, part.cond).sum())
                tokens += int((part.x != self.pad).sum())
        exact = sum(p == r for p, r in zip(predictions, references, strict=True)) / len(references)
        return {"exact_match_accuracy": exact, "char_error_rate": char_error_rate(predictions, references),
                "conditional_nll_per_token": nll / tokens}
