"""``captioner``: image-to-text, a ViT-style image encoder feeding a gpt-style decoder through prefix tokens.

The image (network units, [-1, 1]) is cut into p x p patches; each is embedded linearly with a learned position and
the P patch embeddings pass through bidirectional transformer blocks (Dosovitskiy et al., 2021):

    m = Encoder(W_patch patches(x) + pos),   m in R^(P x d).

The caption y_1 .. y_L (words, then ``</s>``, padded with ``<pad>``) is modelled by a causal decoder of gpt's blocks
reading the sequence [m, BOS, y_1, ..., y_(L-1)] (the image as a prefix, positions as rotary phases):

    log p(y | x) = sum_(t <= L) log p(y_t | m, BOS, y_<t),   p(y_t | ...) = softmax(E h_(P + t - 1))   (tied E),

padding excluded from the sum and never generated (its logit is -inf). Training minimises the mean negative
log-likelihood per caption token. Decoding is the shared loop of :mod:`genzoo.generation` (greedy, sampled or beam
search) on the decoder with the image prefix fixed (:class:`ImagePrefix`); the KV cache holds the prefix, so each
new word costs one position.

Data: captioned images with the caption as token ids (``scenes:#caption=tokens``, asked for by
:meth:`Captioner.data_options`); the dataset's word tokenizer turns ids into text. On ``scenes`` the task metrics
parse each caption with the scene grammar and score every attribute.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, cast

import torch
import torch.nn.functional as F
from pydantic import Field
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
)
from genzoo.data.scenes import Scene, parse
from genzoo.errors import ConfigError, DataError, GenzooError, RunDirError
from genzoo.generation import beam_search, generate_tokens, generation_config
from genzoo.nn.transformer import KV, Block, Rotary, init_weights
from genzoo.registry import register
from genzoo.tokenizer import Tokenizer, load_tokenizer

#: held-out images captioned at once by :meth:`Captioner.task_metrics`
CAPTION_BATCH = 256
#: the relation of B to A when A stands in a relation to B (the same scene, described from its other object)
CONVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}


class CaptionerConfig(ModelConfig):
    patch: int = Field(4, ge=1, description="patch side in pixels (must divide the image sides)")
    width: int = Field(128, ge=4, description="token width d (a multiple of heads, with heads of even size)")
    heads: int = Field(4, ge=1, description="attention heads")
    encoder_layers: int = Field(2, ge=1, description="bidirectional blocks over the image patches")
    decoder_layers: int = Field(2, ge=1, description="causal blocks over the image prefix and the caption")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on residual branches and attention")
    lr: float = Field(1e-3, gt=0, description="Adam learning rate")


class CaptionOptions(SampleOptions):
    """How ``captioner`` decodes (``model.caption(images, num_beams=4)``, ``genzoo sample RUN --image x.png``)."""

    num_beams: int = Field(1, ge=1, description="beam search with this many beams (> 1: the most probable caption "
                           "per word; temperature does not apply)")
    temperature: float = Field(0.0, ge=0.0, description="0 = greedy (the most likely word each step); > 0 samples "
                               "words at this softmax temperature")


class ImagePrefix(nn.Module):
    """The caption decoder with a fixed image prefix, as the decoding loops of :mod:`genzoo.generation` drive a
    model: ``prefill(ids)`` reads [prefix, ids], ``extend(token, cache)`` one more word."""

    def __init__(self, model: Captioner, memory: Tensor) -> None:
        super().__init__()
        self.model, self.memory = model, memory
        self.device = model.device
        self.eos_ids = frozenset({model.eos})

    def prefill(self, ids: Tensor) -> tuple[Tensor, list[KV]]:
        logits, cache = self.model.decode_step(ids, self.memory, None)
        return logits[:, -1], cache

    def extend(self, token: Tensor, cache: list[KV]) -> tuple[Tensor, list[KV]]:
        logits, cache = self.model.decode_step(token[:, None], None, cache)
        return logits[:, -1], cache


@register
class Captioner(GenerativeModel):
    """Image captioning: ViT patch encoder, gpt-style causal decoder reading the image as prefix tokens."""

    name = "captioner"
    family = "transformer"
    Config = CaptionerConfig
    SampleOptions = CaptionOptions
    data_kinds = frozenset({DataKind.IMAGE})
    base_capabilities = frozenset({Capability.CAPTION})
    smoke_config: ClassVar[dict[str, Any]] = {"width": 16, "heads": 2, "encoder_layers": 1, "decoder_layers": 1}
    smoke_data: ClassVar[str | None] = "scenes:#n=60,image_size=16,caption=tokens"
    train_defaults: ClassVar[dict[str, Any]] = {"batch_size": 64, "warmup_steps": 100, "grad_clip": 1.0}
    config: CaptionerConfig

    def __init__(self, config: CaptionerConfig, data: DataInfo) -> None:
        super().__init__(config, data)
        record, tokens = data.extra.get("caption") or {}, data.extra.get("tokenizer") or {}
        if record.get("form") != "tokens" or "vocab_size" not in tokens:
            raise ConfigError("captioner trains on captioned images read as tokens, e.g. --data "
                              "'scenes:#caption=tokens' (genzoo train asks for caption=tokens itself)")
        channels, height, width = data.shape
        c = config
        if height % c.patch or width % c.patch:
            raise ConfigError(f"captioner: patch {c.patch} must divide the image sides {height}x{width}")
        if c.width % c.heads or (c.width // c.heads) % 2:
            raise ConfigError(f"captioner: width {c.width} must split into {c.heads} heads of even size")
        self.vocab, self.length = int(tokens["vocab_size"]), int(record["length"])
        self.pad, self.eos, self.bos = int(record["pad"]), int(record["eos"]), self.vocab
        self.prefix = (height // c.patch) * (width // c.patch)
        self.patch_embed = nn.Linear(channels * c.patch**2, c.width)
        self.patch_pos = nn.Parameter(torch.zeros(self.prefix, c.width))
        self.encoder = nn.ModuleList(Block(c.width, c.heads, False, c.dropout, causal=False)
                                     for _ in range(c.encoder_layers))
        self.encoder_norm = nn.LayerNorm(c.width, bias=False)
        self.embed = nn.Embedding(self.vocab + 1, c.width)  # + BOS
        self.rotary = Rotary(c.width // c.heads, self.prefix + self.length + 1)
        self.decoder = nn.ModuleList(Block(c.width, c.heads, False, c.dropout) for _ in range(c.decoder_layers))
        self.norm = nn.LayerNorm(c.width, bias=False)
        init_weights(self, nn.ModuleList([*self.encoder, *self.decoder]), self.patch_pos)

    @classmethod
    def data_options(cls, config: ModelConfig) -> dict[str, Any]:
        """The caption as token ids (``Batch.cond``), with the dataset's word tokenizer."""
        return {"caption": "tokens"}

    # ----- the network -------------------------------------------------------------------------------------------
    def encode_images(self, images: Tensor) -> Tensor:
        """(B, C, H, W) images in [0, 1] -> (B, P, d) prefix tokens m."""
        patches = F.unfold(self.preprocess(images), self.config.patch, stride=self.config.patch).transpose(1, 2)
        h = self.patch_embed(patches) + self.patch_pos
        for block in self.encoder:
            h = block(h, None, 0, None)[0]
        return self.encoder_norm(h)

    def decode_step(self, ids: Tensor, memory: Tensor | None, past: list[KV] | None) -> tuple[Tensor, list[KV]]:
        """Logits (B, t, V) of the word after each of ``ids``: read after the prefix ``memory`` (no cache yet) or
        after the cached positions ``past``; and the extended cache."""
        h = self.embed(ids)
        if past is None:
            h = torch.cat([memory.expand(len(ids), -1, -1), h], dim=1)
        start = 0 if past is None else past[0][0].shape[2]
        cache = []
        for i, block in enumerate(self.decoder):
            h, kv = block(h, self.rotary, start, None if past is None else past[i])
            cache.append(kv)
        logits = F.linear(self.norm(h[:, -ids.shape[1]:]), self.embed.weight[: self.vocab]).float()
        return logits.index_fill(-1, torch.tensor([self.pad], device=logits.device), float("-inf")), cache

    def caption_logits(self, images: Tensor, captions: Tensor) -> Tensor:
        """Teacher forcing: (B, L, V) logits of y_t given the image and y_<t, for (B, L) caption ids."""
        inputs = torch.cat([captions.new_full((len(captions), 1), self.bos), captions[:, :-1]], dim=1)
        return self.decode_step(inputs, self.encode_images(images), None)[0]

    # ----- training ------------------------------------------------------------------------------------------------
    def _captions(self, batch: Batch) -> Tensor:
        if batch.cond is None or batch.cond.dtype != torch.long:
            raise DataError("captioner needs captions as token ids in the batch (data option caption=tokens)")
        return batch.cond

    def _loss(self, batch: Batch) -> Tensor:
        """Mean -log p(y_t | x, y_<t) per caption token (padding excluded)."""
        captions = self._captions(batch)
        logits = self.caption_logits(batch.x, captions)
        return F.cross_entropy(logits.flatten(0, 1), captions.flatten(), ignore_index=self.pad)

    def training_step(self, batch: Batch, step: int, optim: Optimizers) -> dict[str, float]:
        loss = self._loss(batch)
        optim.step("model", loss)
        return {"loss": loss.item()}

    def validation_step(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"val_loss": self._loss(batch).item()}

    # ----- captioning ----------------------------------------------------------------------------------------------
    def caption(self, images: Tensor, *, seed: int | None = None, **options: Any) -> list[str]:
        """One caption per image of (N, C, H, W) ``images`` in [0, 1] (a single (C, H, W) image too): greedy by
        default, sampled with a temperature > 0 (from ``seed``), or beam search with ``num_beams`` > 1."""
        return [self.decode_tokens(ids) for ids in self.caption_ids(images, seed=seed, **options)]

    def caption_ids(self, images: Tensor, *, seed: int | None = None, **options: Any) -> list[list[int]]:
        """Word ids of each image's caption, without ``</s>`` (see :meth:`caption`)."""
        typed = cast(CaptionOptions, self.sample_options(**options))
        images = self._images(images)
        cfg = generation_config(temperature=typed.temperature, num_beams=typed.num_beams,
                                max_new_tokens=self.length, seed=seed)
        generator = torch.Generator().manual_seed(0 if seed is None else seed)
        with eval_mode(self), torch.no_grad():
            memory = self.encode_images(images)
            if typed.num_beams > 1:
                rows = [beam_search(ImagePrefix(self, m[None]), [self.bos], cfg)[0][0] for m in memory]
            else:
                bos = torch.full((len(images), 1), self.bos, dtype=torch.long, device=self.device)
                steps = generate_tokens(ImagePrefix(self, memory), bos, cfg, generator, self.vocab)
                rows = torch.stack(list(steps), dim=1).tolist()
        return [row[: row.index(self.eos)] if self.eos in row else row for row in rows]

    def _images(self, images: Tensor) -> Tensor:
        """Images as (N, C, H, W) in [0, 1] on the model's device; one clear error for a wrong shape or range."""
        images = torch.as_tensor(images, dtype=torch.float32)
        images = images.unsqueeze(0) if images.dim() == 3 else images
        if images.dim() != 4 or tuple(images.shape[1:]) != tuple(self.data.shape):
            raise GenzooError(f"captioner reads images of shape {tuple(self.data.shape)} (channels, height, width); "
                              f"got {tuple(images.shape)}")
        if images.min() < 0 or images.max() > 1:
            raise GenzooError("image values must be in [0, 1]")
        return images.to(self.device)

    def decode_tokens(self, ids: list[int]) -> str:
        if self.tokenizer is None:
            raise GenzooError("this captioner has no tokenizer to write words with: build it with the dataset's "
                              "(build_model(..., tokenizer=dataset.tokenizer)) or load its run directory")
        return self.tokenizer.decode([i for i in ids if i != self.pad])

    def cost(self, **options: Any) -> Cost:
        """One decoder call per caption position (the image encoder once more), times the beams."""
        typed = cast(CaptionOptions, self.sample_options(**options))
        return Cost(nfe_per_sample=self.length * typed.num_beams)

    def task_metrics(self, test: Batch, generator: torch.Generator) -> dict[str, float]:
        """Greedy captions of the held-out images: exact match with the reference caption and, on ``scenes``
        data, the share of captions in the grammar and of each attribute right (:func:`agreement`)."""
        if test.cond is None:
            return {}
        predictions: list[str] = []
        for start in range(0, len(test), CAPTION_BATCH):
            predictions += self.caption(test.x[start : start + CAPTION_BATCH])
        references = [self.decode_tokens(row[: row.index(self.eos)] if self.eos in row else row)
                      for row in test.cond.tolist()]
        metrics = {"exact_match_accuracy": sum(p == r for p, r in zip(predictions, references, strict=True))
                   / len(references)}
        if "scenes" in self.data.extra:
            metrics |= attribute_accuracy(predictions, references)
        return metrics

    # ----- the tokenizer -------------------------------------------------------------------------------------------
    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """Take the word tokenizer of the captions; it must be the one that made the data's ids."""
        expected = (self.data.extra.get("tokenizer") or {}).get("sha256")
        if expected and tokenizer.sha256 != expected:
            raise ConfigError("the tokenizer is not the one the captions were tokenised with")
        self.tokenizer = tokenizer

    def save_assets(self, directory: Path) -> None:
        if self.tokenizer is not None:
            self.tokenizer.save(Path(directory) / "tokenizer.json")

    def load_assets(self, directory: Path) -> None:
        path = Path(directory) / "tokenizer.json"
        if not path.is_file():
            raise RunDirError(f"{path}: missing; the captioner writes its words with it")
        self.use_tokenizer(load_tokenizer(path))


# ----- scoring captions of scenes -------------------------------------------------------------------------------------
def agreement(predicted: Scene | None, reference: Scene) -> dict[str, bool | None]:
    """Which attributes of the ``reference`` scene a predicted caption's scene gets right: ``count``; ``colour``,
    ``shape`` and ``size`` (the multisets over objects); ``relation`` (two-object scenes only, else None: both
    objects and their relation, stated from either object); ``scene`` (the same scene). None predicted (a caption
    outside the grammar) gets everything wrong."""
    if predicted is None:
        return {"count": False, "colour": False, "shape": False, "size": False,
                "relation": None if reference.relation is None else False, "scene": False}
    same = {attr: sorted(getattr(t, attr) for t in predicted.things) == sorted(getattr(t, attr) for t in
                                                                                 reference.things)
            for attr in ("colour", "shape", "size")}
    converse = None if reference.relation is None else Scene(reference.things[::-1], CONVERSE[reference.relation])
    scene = predicted in (reference, converse)
    return {"count": len(predicted.things) == len(reference.things), **same,
            "relation": None if reference.relation is None else scene, "scene": scene}


def attribute_accuracy(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Shares of predicted captions in the scene grammar (``grammatical_accuracy``) and right on each attribute
    (``<attribute>_accuracy``; ``relation`` over two-object references only)."""
    scenes = [_parse_or_none(p) for p in predictions]
    verdicts = [agreement(s, parse(r)) for s, r in zip(scenes, references, strict=True)]
    out = {"grammatical_accuracy": sum(s is not None for s in scenes) / len(scenes)}
    for key in ("colour", "shape", "size", "count", "relation", "scene"):
        values = [v[key] for v in verdicts if v[key] is not None]
        if values:
            out[f"{key}_accuracy"] = sum(values) / len(values)
    return out


def _parse_or_none(text: str) -> Scene | None:
    try:
        return parse(text)
    except DataError:
        return None
