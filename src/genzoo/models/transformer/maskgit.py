"""``maskgit``: a bidirectional masked-token transformer that generates by iterative parallel decoding (MaskGIT,
Chang et al. 2022; BERT's masked-token objective, Devlin et al. 2019).

A sequence x = (x_1 .. x_N) holds ids over V tokens: token data as it is (text through any tokenizer, or the codes of
a VQ-VAE), images as N = C*H*W pixel tokens in raster order over their L levels (id = round(x (L - 1)), as ``gpt``
reads them). One extra id, V, is [MASK].

Training. Per example draw u ~ U(0, 1) and mask a random set M of |M| = ceil(r N) positions with MaskGIT's ratio
r = cos(pi/2 u) in (0, 1]; the loss is the cross-entropy on the masked positions,

    L = - sum_{i in M} log p(x_i | x_{not M}) / |M|   (averaged over every masked token of the batch),

each position's distribution coming from one pass of a transformer whose attention is bidirectional (a position
sees the tokens before and after it; ``gpt``'s blocks without the causal mask). Without that mask nothing tells
positions apart but their encodings: with a learned table alone the loss stayed at the order-free (unigram) level
for hundreds of steps in our runs, so by default positions enter twice, as a learned absolute table (where a pixel
is matters) and as rotary phases on queries and keys (relative offsets from the first step). Validation: the same
loss at the fixed ratio ``val_mask_ratio``, masks drawn from the validation generator.

Decoding (MaskGIT, Algorithm 1) fills the N_0 unknown positions in T = ``steps`` iterations. The number of positions
still masked after iteration t is

    n(t) = ceil(N_0 cos(pi/2 * t / T)),   n(0) = N_0,   n(T) = 0.

Iteration t predicts every masked position at once, draws a token for each (softmax at ``temperature``; 0 = the
argmax), scores each draw by its log-probability plus Gumbel noise scaled by ``choice_temperature`` * (1 - t/T)
(the paper's annealed randomness in which draws are kept), keeps the n(t-1) - n(t) most confident draws and
re-masks the rest. Known tokens are never masked, so sampling, image inpainting (unknown = mask non-zero) and text
infilling (unknown = the prompt's [MASK] markers) are one loop. An iteration that unmasks nothing (n(t) = n(t-1),
when T is large against N_0) needs no network pass: a sample costs at most T passes whatever its length, where
left-to-right decoding costs N.

Text. ``generate(prompt)`` returns the whole text: the prompt with every ``[MASK]`` marker filled by one token
(``[MASK:k]``: k tokens), the context window's positions after the prompt staying [MASK] (unknown, as in training, not
generated); or, for a prompt without a marker, the prompt followed by ``max_new_tokens`` new tokens (default: the
rest of the context window), generated window by window, each decoding run keeping at least half a context of the
text before it (``continues_prompt = False`` tells the CLI not to print the prompt again).

Likelihood. The model defines no tractable log p(x), so it declares none. ``task_metrics`` reports the
*pseudo*-log-likelihood PLL(x) = sum_i log p(x_i | x_{-i}) (position i masked in pass i: N passes), which is not a
likelihood and not comparable with one, and the generation speed.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, ValidationError
from torch import Tensor, nn

from genzoo.contract import (
    Batch,
    Capability,
    Cost,
    DataInfo,
    DataKind,
    GenerativeModel,
    ModelConfig,
    Optimizers,
    SampleOptions,
    eval_mode,
    validation_message,
)
from genzoo.errors import ConfigError, GenzooError
from genzoo.models.autoregressive.pixels import adamw, from_levels, to_levels
from genzoo.models.autoregressive.sequence import TokenSequenceModel
from genzoo.nn.transformer import Block, Rotary, init_weights
from genzoo.registry import register

#: a run of unknown tokens in a text prompt: ``[MASK]`` is one token, ``[MASK:k]`` k tokens
MASK_MARKER = re.compile(r"\[MASK(?::(\d+))?\]")
#: test tokens (whole examples, at least one) the pseudo-log-likelihood is measured on: N passes per example of N
PLL_TOKENS = 16384


class MaskGITConfig(ModelConfig):
    layers: int = Field(4, ge=1, description="transformer blocks")
    heads: int = Field(4, ge=1, description="attention heads per block")
    width: int = Field(128, ge=2, description="model width (token embedding size)")
    positions: Literal["learned+rotary", "learned", "rotary"] = Field(
        "learned+rotary", description="a learned table of absolute positions added to the embeddings, rotary phases "
        "(relative offsets) on queries and keys, or both")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout while training")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay on matrices and embeddings")
    val_mask_ratio: float = Field(0.5, gt=0, le=1, description="share of the tokens masked when validating")


class MaskGITSampling(SampleOptions):
    steps: int = Field(12, ge=1, description="decoding iterations T: tokens are unmasked on a cosine schedule, "
                       "at most T network passes per sample")
    temperature: float = Field(1.0, ge=0, description="softmax temperature of each drawn token; 0 = the most likely")
    choice_temperature: float = Field(4.5, ge=0, description="Gumbel noise on the confidences that choose which "
                                      "draws are kept, annealed to 0 over the iterations (MaskGIT's 4.5); 0 = keep "
                                      "the most confident")


class MaskGITGeneration(MaskGITSampling):
    """Options of ``generate``: the sampling options and what to produce."""

    max_new_tokens: int | None = Field(None, ge=0, description="a prompt without [MASK] markers: tokens to add after "
                                       "it (default: the rest of the context window); ignored when it has markers")
    seed: int | None = Field(None, description="seed of the draws; None = 0, so generation is deterministic")
    num_return_sequences: int = Field(1, ge=1, description="completions to draw")
    num_beams: int = Field(1, ge=1, le=1, description="beam search does not apply to parallel decoding: 1 only")


def masked_after(step: int, steps: int, unknown: Tensor) -> Tensor:
    """n(t) = ceil(N_0 cos(pi/2 * t / T)) per row of ``unknown`` (N_0, long). cos is rounded in floating point
    (cos(pi/3) = 0.5000000000000001, cos(pi/2) = 6e-17): a tolerance keeps exact integers exact, so n(T) = 0."""
    factor = math.cos(math.pi / 2 * step / steps)
    return torch.ceil(unknown.double() * factor - 1e-9).long()


def passes(unknown: int, steps: int) -> int:
    """Network passes to decode ``unknown`` tokens in ``steps`` iterations: the iterations that unmask any."""
    n = torch.tensor(unknown)
    return sum(int(masked_after(t, steps, n) < masked_after(t - 1, steps, n)) for t in range(1, steps + 1))


@register
class MaskGIT(GenerativeModel):
    """Bidirectional masked-token transformer; iterative parallel decoding; native image and text infilling."""

    name = "maskgit"
    family = "transformer"
    Config = MaskGITConfig
    SampleOptions = MaskGITSampling
    config: MaskGITConfig
    data_kinds = frozenset({DataKind.TOKENS, DataKind.IMAGE})
    base_capabilities = frozenset({Capability.SAMPLE, Capability.INPAINT, Capability.GENERATE_TEXT})
    smoke_config: ClassVar[dict[str, Any]] = {"layers": 1, "heads": 2, "width": 16}
    smoke_sample_options: ClassVar[dict[str, Any]] = {"steps": 4}
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 32, "warmup_steps": 100, "grad_clip": 1.0}
    quick_steps = 1000
    #: ``generate`` returns the whole text (the prompt filled or followed by its continuation), not a continuation
    continues_prompt = False

    def __init__(self, config: MaskGITConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        c = config
        if not data.levels:
            raise ConfigError("maskgit models discrete tokens; the data has continuous values (no levels). Use image "
                              "data with discrete levels, a text spec or a VQ-VAE's codes")
        if c.width % c.heads or (c.width // c.heads) % 2:
            raise ConfigError(f"maskgit: width {c.width} must split into {c.heads} heads of even size (rotary pairs)")
        self.vocab = data.levels
        self.mask_id = data.levels
        self.seq_len = data.dims
        self.tokenizer = None
        self.embed = nn.Embedding(self.vocab + 1, c.width)  # + [MASK]
        self.pos = nn.Parameter(torch.zeros(self.seq_len, c.width)) if "learned" in c.positions else None
        self.rotary = Rotary(c.width // c.heads, self.seq_len) if "rotary" in c.positions else None
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c.width, c.heads, False, c.dropout, causal=False) for _ in range(c.layers))
        self.norm = nn.LayerNorm(c.width, bias=False)
        init_weights(self, self.blocks, self.pos)

    @property
    def capabilities(self) -> frozenset[Capability]:
        """Inpainting on images; text generation on token data read through a tokenizer (a VQ-VAE's codes have
        none)."""
        caps = set(super().capabilities)
        if self.data.kind is not DataKind.IMAGE:
            caps.discard(Capability.INPAINT)
        if self.data.kind is not DataKind.TOKENS or self.tokenizer is None:
            caps.discard(Capability.GENERATE_TEXT)
        return frozenset(caps)

    # the text dataset's tokenizer is handed over, checked, saved and loaded exactly as for the left-to-right models
    use_tokenizer = TokenSequenceModel.use_tokenizer
    save_assets = TokenSequenceModel.save_assets
    load_assets = TokenSequenceModel.load_assets
    _tokenizer = TokenSequenceModel._tokenizer

    # ----- data <-> ids ------------------------------------------------------------------------------------------
    def to_ids(self, x: Tensor) -> Tensor:
        """(B, *shape) data -> (B, N) ids: tokens as they are, images as pixel levels in raster order."""
        if self.data.kind is DataKind.TOKENS:
            return x.long().to(self.device)
        return to_levels(x.flatten(1), self.vocab).to(self.device)

    def from_ids(self, ids: Tensor) -> Tensor:
        if self.data.kind is DataKind.TOKENS:
            return ids
        return from_levels(ids, self.vocab).view(-1, *self.data.shape)

    # ----- the network -------------------------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """(B, N) ids, [MASK] = V among them -> (B, N, V) logits of every position, all positions seeing all."""
        h = self.embed(ids)
        if self.pos is not None:
            h = h + self.pos[: ids.shape[1]]
        h = self.drop(h)
        for block in self.blocks:
            h = block(h, self.rotary, 0, None)[0]
        return F.linear(self.norm(h), self.embed.weight[: self.vocab]).float()  # tied to the token embeddings

    # ----- training ----------------------------------------------------------------------------------------------
    def random_mask(self, ratio: Tensor, generator: torch.Generator | None) -> Tensor:
        """(B, N) boolean: per row, ceil(ratio N) positions drawn uniformly without replacement (ratio in (0, 1]:
        at least one)."""
        count = torch.ceil(ratio * self.seq_len)
        rank = torch.rand(len(ratio), self.seq_len, generator=generator).argsort(1).argsort(1)
        return (rank < count[:, None]).to(self.device)

    def masked_loss(self, ids: Tensor, masked: Tensor) -> Tensor:
        """Cross-entropy of the masked tokens given the others, averaged over the masked tokens."""
        logits = self(torch.where(masked, self.mask_id, ids))
        return F.cross_entropy(logits[masked], ids[masked])

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        ids = self.to_ids(batch.x)
        ratio = torch.cos(math.pi / 2 * torch.rand(len(ids)))  # MaskGIT's schedule; the trainer seeds this RNG
        loss = self.masked_loss(ids, self.random_mask(ratio, None))
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        ids = self.to_ids(batch.x)
        ratio = torch.full((len(ids),), self.config.val_mask_ratio)
        return {"val_loss": self.masked_loss(ids, self.random_mask(ratio, generator)).item()}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": adamw(self, self.config.lr, self.config.weight_decay)}

    # ----- iterative parallel decoding -----------------------------------------------------------------------------
    def iterative_decode(self, ids: Tensor, unknown: Tensor, generator: torch.Generator,
                         options: MaskGITSampling) -> Tensor:
        """Fill the positions where ``unknown`` is True in ``options.steps`` iterations; the others never change
        ([MASK] ids among them stay [MASK]: unknown context that is not generated)."""
        ids = torch.where(unknown, self.mask_id, ids)
        before = unknown.sum(1)
        total = before
        for t in range(1, options.steps + 1):
            after = masked_after(t, options.steps, total)
            if torch.equal(after, before):
                continue  # this iteration unmasks nothing: no pass
            todo = unknown & (ids == self.mask_id)
            drawn, confidence = self._draw(self(ids), options, generator)
            if options.choice_temperature > 0:
                gumbel = -torch.log(-torch.log(torch.rand(ids.shape, generator=generator).clamp(1e-20, 1 - 1e-7)))
                confidence = confidence + options.choice_temperature * (1 - t / options.steps) * gumbel.to(self.device)
            # the after(t) least confident of the still-masked draws are masked again; known positions rank last
            rank = confidence.masked_fill(~todo, math.inf).argsort(1).argsort(1)
            reveal = todo & (rank >= after[:, None])
            ids = torch.where(reveal, drawn, ids)
            before = after
        return ids

    def _draw(self, logits: Tensor, options: MaskGITSampling, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """A token per position from softmax(logits / temperature) (argmax at 0), drawn on the CPU, and its log-
        probability under the model (temperature 1): the confidence that decides which draws are kept."""
        if options.temperature == 0:
            drawn = logits.argmax(-1)
        else:
            probs = F.softmax(logits.cpu() / options.temperature, -1)
            drawn = torch.multinomial(probs.flatten(0, 1), 1, generator=generator).view(probs.shape[:2])
            drawn = drawn.to(self.device)
        return drawn, F.log_softmax(logits, -1).gather(-1, drawn[..., None]).squeeze(-1)

    def _sample(self, n: int, generator: torch.Generator, labels: Tensor | None, options: MaskGITSampling) -> Tensor:
        ids = torch.zeros(n, self.seq_len, dtype=torch.long, device=self.device)
        return self.from_ids(self.iterative_decode(ids, torch.ones_like(ids, dtype=torch.bool), generator, options))

    @torch.no_grad()
    def inpaint(self, x: Tensor, mask: Tensor, *, seed: int = 0, generator: torch.Generator | None = None,
                **options: Any) -> Tensor:
        """Decode the pixels where ``mask`` is non-zero given all the known ones (before and after them); the known
        pixels are returned exactly as given."""
        typed = self.sample_options(**options)
        image, fill = self.edit_inputs(x, mask)
        generator = generator or torch.Generator().manual_seed(seed)
        with eval_mode(self):
            ids = self.iterative_decode(self.to_ids(image), fill.flatten(1), generator, typed)
        return torch.where(fill, self.from_ids(ids), image)

    def cost(self, **options: Any) -> Cost:
        """One pass per iteration that unmasks a token (at most ``steps``); FLOPs of a pass over N tokens: 2 per
        matrix weight and token, and 4 N d per layer and token for attention (q k^T and the weighted sum)."""
        typed = self.sample_options(**options)
        c, n = self.config, self.seq_len
        weights = sum(p.numel() for block in self.blocks for p in block.parameters() if p.dim() == 2)
        forward = n * (2.0 * (weights + self.vocab * c.width) + 4.0 * c.layers * n * c.width)
        nfe = passes(n, typed.steps)
        return Cost(nfe_per_sample=nfe, flops_per_sample=nfe * forward, train_flops_per_example=3.0 * forward)

    # ----- text --------------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of ``prompt``, each ``[MASK]`` marker as the [MASK] id (``[MASK:k]``: k of them)."""
        tokenizer, ids, start = self._tokenizer(), [], 0
        for marker in MASK_MARKER.finditer(prompt):
            count = int(marker.group(1) or 1)
            if count < 1:
                raise GenzooError(f"'{marker.group(0)}' asks for no token: write [MASK] or [MASK:k] with k >= 1")
            ids += tokenizer.encode(prompt[start : marker.start()]) + [self.mask_id] * count
            start = marker.end()
        return ids + tokenizer.encode(prompt[start:])

    def generate(self, prompt: str = "", **options: Any) -> str | list[str]:
        """The prompt with its ``[MASK]``/``[MASK:k]`` markers filled, or, without a marker, followed by its
        continuation; a list when ``num_return_sequences > 1``. Deterministic by default
        (``seed=None`` is seed 0)."""
        return self.generate_from_ids(self.prompt_ids(prompt), **options)

    @classmethod
    def generation_options(cls, **options: Any) -> MaskGITGeneration:
        """Validated options of ``generate``; one clear error for unknown names or out-of-range values."""
        try:
            return MaskGITGeneration(**options)
        except ValidationError as err:
            raise ConfigError(f"bad generation option for 'maskgit': {validation_message(err)}") from None

    def generate_from_ids(self, prompt_ids: list[int], **options: Any) -> str | list[str]:
        """``generate`` for prompt ids, [MASK] ids (``mask_id``) marking the tokens to fill."""
        cfg = self.generation_options(**options)
        tokenizer = self._tokenizer()
        generator = torch.Generator().manual_seed(cfg.seed or 0)
        ids = torch.tensor([prompt_ids], dtype=torch.long, device=self.device).view(1, -1)
        ids = ids.expand(cfg.num_return_sequences, -1)
        with eval_mode(self), torch.no_grad():
            if (ids == self.mask_id).any():
                out = self._fill(ids, generator, cfg)
            else:
                new = self.seq_len - ids.shape[1] if cfg.max_new_tokens is None else cfg.max_new_tokens
                out = torch.cat([ids, self._continue(ids, max(new, 0), generator, cfg)], dim=1)
        texts = [tokenizer.decode(row) for row in out.tolist()]
        return texts if cfg.num_return_sequences > 1 else texts[0]

    def _fill(self, ids: Tensor, generator: torch.Generator, options: MaskGITSampling) -> Tensor:
        """Decode the [MASK] positions of (R, L) prompts, L <= N; the window's positions after them stay unknown."""
        length = ids.shape[1]
        if length > self.seq_len:
            raise GenzooError(f"the prompt is {length} tokens with its masks; maskgit reads a window of "
                              f"{self.seq_len} tokens at once: shorten it")
        window = F.pad(ids, (0, self.seq_len - length), value=self.mask_id)
        unknown = F.pad(ids == self.mask_id, (0, self.seq_len - length), value=False)
        return self.iterative_decode(window, unknown, generator, options)[:, :length]

    def _continue(self, ids: Tensor, new: int, generator: torch.Generator, options: MaskGITSampling) -> Tensor:
        """``new`` tokens after (R, L) prompts: windows of at least half a context of text, then unknown tokens,
        each window one decoding run. Returns (R, new)."""
        out = ids
        while out.shape[1] < ids.shape[1] + new:
            chunk = min(ids.shape[1] + new - out.shape[1], self.seq_len - min(out.shape[1], self.seq_len // 2))
            keep = min(out.shape[1], self.seq_len - chunk)
            window = F.pad(out[:, out.shape[1] - keep :], (0, chunk), value=self.mask_id)
            filled = self._fill(window, generator, options)
            out = torch.cat([out, filled[:, keep:]], dim=1)
        return out[:, ids.shape[1] :]

    # ----- what the model does beyond sampling -----------------------------------------------------------------------
    @torch.no_grad()
    def pseudo_log_likelihood(self, x: Tensor) -> Tensor:
        """PLL(x) = sum_i log p(x_i | x_{-i}) in nats per example, position i masked alone in pass i. A
        pseudo-likelihood (Besag 1975): not log p(x), not a bound on it."""
        ids = self.to_ids(x)
        total = torch.zeros(len(ids), device=self.device)
        for i in range(self.seq_len):
            logits = self(torch.where(torch.arange(self.seq_len, device=self.device) == i, self.mask_id, ids))
            total += F.log_softmax(logits[:, i], -1).gather(1, ids[:, i : i + 1]).squeeze(1)
        return total

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """Pseudo-NLL (nats and bits per token, pixel tokens for images) on the first ``PLL_TOKENS`` test tokens,
        and the speed of generating one sequence of N tokens with the default options (network passes and tokens per
        second)."""
        examples = test.x[: max(1, PLL_TOKENS // self.seq_len)]
        with eval_mode(self):
            pll = torch.cat([self.pseudo_log_likelihood(part) for part in examples.split(64)])
            begin = time.perf_counter()
            self.sample(1, generator=generator)
            seconds = time.perf_counter() - begin
        nats = float(-pll.mean()) / self.seq_len
        return {"pseudo_nll_nats_per_token": nats, "pseudo_bits_per_token": nats / math.log(2.0),
                "gen_nfe_per_sequence": float(passes(self.seq_len, MaskGITSampling().steps)),
                "gen_tokens_per_s": self.seq_len / seconds}
