"""Captioned images: ``captions:FILE.jsonl`` and the caption conditioning every captioned dataset shares.

A captioned dataset holds images in ``Batch.x`` and, per the ``caption`` data option, the caption in ``Batch.cond``:

* ``embedding`` (default): the caption's sentence embedding, ``[n, 384]`` float, unit length, from
  :class:`genzoo.embed.SentenceEncoder` (cached per list of captions under ``genzoo.embed.default_cache_dir()``);
* ``tokens``: the caption's word ids followed by ``</s>`` and padded with ``<pad>`` to the longest, ``[n, L]`` long,
  with a word-level :class:`~genzoo.tokenizer.Tokenizer` of the caption vocabulary as ``dataset.tokenizer``;
* ``none``: no condition (unconditional image data).

``DataInfo.extra["caption"]`` records the form and what turns a new prompt into the same condition at sample time
(the encoder's name, or the token length and ids); :func:`encode_prompts` does it.

``captions:FILE.jsonl``: one JSON object per line, ``{"image": "path/to/img.png", "caption": "a red circle"}``, the
path relative to the file. Images are read as RGB (or grey when all are), must share one size unless ``image_size``
is given, and are cut 80/10/10 with the fixed split seed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from genzoo.contract import Batch, DataInfo, DataKind
from genzoo.data.base import SPLITS, TensorDataset, split_tensors
from genzoo.data.images import _read_image
from genzoo.data.specs import DataOptions, register_loader
from genzoo.embed import SentenceEncoder, default_cache_dir
from genzoo.errors import DataError
from genzoo.tokenizer import Tokenizer

PAD, EOS = "<pad>", "</s>"
#: the data options a captioned dataset takes after ``#``
CAPTION_OPTIONS = ("caption", "image_size")


class CaptionDataset(TensorDataset):
    """Captioned images in memory; ``captions[split]`` are the caption texts in the split's order."""

    captions: dict[str, list[str]]


# ----- caption -> condition -----------------------------------------------------------------------------------------
def word_tokenizer(texts: list[str]) -> Tokenizer:
    """One token per distinct whitespace-separated word of ``texts``, after ``<pad>`` (id 0) and ``</s>`` (id 1)."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers

    words = sorted({word for text in texts for word in text.split()})
    backend = Backend(models.WordLevel({w: i for i, w in enumerate([PAD, EOS, *words])}))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens([PAD, EOS])
    return Tokenizer(backend, "word")


def caption_tokens(texts: list[str], tok: Tokenizer, length: int | None = None) -> Tensor:
    """Word ids of each text, then ``</s>``, padded with ``<pad>`` to ``length`` (default: the longest): [n, L]."""
    vocab = tok.backend.get_vocab()
    rows = []
    for text in texts:
        unknown = [w for w in text.split() if w not in vocab]
        if unknown:
            raise DataError(f"caption {text!r} has words the caption vocabulary lacks: {', '.join(unknown)}")
        rows.append(torch.tensor([*tok.encode(text), vocab[EOS]], dtype=torch.long))
    ids = pad_sequence(rows, batch_first=True, padding_value=vocab[PAD])
    if length is not None:
        if ids.shape[1] > length:
            raise DataError(f"a caption has {ids.shape[1] - 1} words; the model reads at most {length - 1}")
        ids = torch.nn.functional.pad(ids, (0, length - ids.shape[1]), value=vocab[PAD])
    return ids


def caption_embeddings(texts: list[str], encoder: str | None = None) -> Tensor:
    """Sentence embeddings of ``texts`` ([n, dim] float32), each distinct text encoded once and cached on disk."""
    distinct = sorted(set(texts))
    vectors = SentenceEncoder(*([encoder] if encoder else [])).encode_cached(distinct, default_cache_dir())
    index = {text: i for i, text in enumerate(distinct)}
    return torch.from_numpy(vectors[[index[t] for t in texts]])


def caption_dataset(images: dict[str, Tensor], captions: dict[str, list[str]], options: DataOptions,
                    levels: int | None, extra: dict[str, Any] | None = None,
                    vocabulary: list[str] | None = None) -> CaptionDataset:
    """A :class:`CaptionDataset` of per-split images and captions with ``Batch.cond`` in the ``caption`` form;
    ``vocabulary``: the words of the token form (default: those of the captions)."""
    every = [text for split in SPLITS for text in captions[split]]
    tok = word_tokenizer(vocabulary or every) if options.caption == "tokens" else None
    record: dict[str, Any] = {"form": options.caption}
    if options.caption == "embedding":
        conds = {split: caption_embeddings(captions[split]) for split in SPLITS}
        record.update(encoder=SentenceEncoder().name, dim=int(conds["train"].shape[1]))
    elif tok is not None:
        length = caption_tokens(every, tok).shape[1]
        vocab = tok.backend.get_vocab()
        record.update(length=length, pad=vocab[PAD], eos=vocab[EOS])
        conds = {split: caption_tokens(captions[split], tok, length) for split in SPLITS}
    else:
        conds = {split: None for split in SPLITS}
    x = images["train"]
    info_extra = {**(extra or {}), "caption": record, "options": {"caption": options.caption},
                  **({"tokenizer": tok.metadata()} if tok else {})}
    info = DataInfo(kind=DataKind.IMAGE, shape=tuple(x.shape[1:]), levels=levels, extra=info_extra)
    batches = [Batch(images[split], cond=conds[split]) for split in SPLITS]
    dataset = CaptionDataset(info, *batches, tokenizer=tok)
    dataset.captions = captions
    return dataset


def encode_prompts(info: DataInfo, prompts: list[str], tokenizer: Tokenizer | None = None) -> Tensor:
    """New prompts as the condition a model trained on captioned data ``info`` reads: the same encoder's embedding,
    or the same tokenizer's padded word ids (``tokenizer``: the run's)."""
    record = info.extra.get("caption")
    if not isinstance(record, dict) or record.get("form") in (None, "none"):
        raise DataError(f"data '{info.spec}' has no captions: the model was not trained to follow a prompt")
    if record["form"] == "embedding":
        return caption_embeddings(prompts, record["encoder"])
    if tokenizer is None:
        raise DataError("prompts as tokens need the run's caption tokenizer")
    return caption_tokens(prompts, tokenizer, record["length"])


# ----- captions:FILE.jsonl --------------------------------------------------------------------------------------------
def read_caption_file(path: Path, image_size: int | None) -> tuple[list[np.ndarray], list[str]]:
    """Images (uint8 arrays) and captions of a JSON-lines file; one clear error for a bad line or missing image."""
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    images, texts = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{where}: not valid JSON ({err.msg})") from None
        if not (isinstance(record, dict) and isinstance(record.get("image"), str)
                and isinstance(record.get("caption"), str) and record["caption"].strip()):
            raise DataError(f'{where}: expected {{"image": "path", "caption": "text"}} with a non-empty caption')
        image = path.parent / record["image"]
        if not image.is_file():
            raise DataError(f"{where}: image {record['image']} not found (looked for {image})")
        array = _read_image(image, image_size)
        if images and array.shape[:2] != images[0].shape[:2]:
            raise DataError(f"{where}: image {record['image']} is {array.shape[1]}x{array.shape[0]}, the first is "
                            f"{images[0].shape[1]}x{images[0].shape[0]}; set image_size to resize all")
        images.append(array)
        texts.append(" ".join(record["caption"].split()))
    return images, texts


@register_loader("captions", "captions:FILE.jsonl[#caption=embedding|tokens|none,image_size=N]  images with "
                 'captions, one {"image": PATH, "caption": TEXT} per line (paths relative to the file)',
                 options=CAPTION_OPTIONS)
def load_captions(arg: str | None, options: DataOptions) -> CaptionDataset:
    if not arg:
        raise DataError("captions: needs a file, e.g. captions:data.jsonl")
    arrays, texts = read_caption_file(Path(arg).expanduser(), options.image_size)
    if len(texts) < 3:
        raise DataError(f"{arg}: {len(texts)} captioned images; need at least 3 for train/validation/test splits")
    grey = all(a.ndim == 2 for a in arrays)
    stacked = np.stack([a if a.ndim == 3 or grey else np.repeat(a[..., None], 3, axis=2) for a in arrays])
    x = torch.from_numpy((stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)).astype(np.float32) / 255.0)
    parts = split_tensors(x, torch.arange(len(texts)))
    images = {split: part.x for split, part in zip(SPLITS, parts, strict=True)}
    captions = {split: [texts[i] for i in part.y.tolist()] for split, part in zip(SPLITS, parts, strict=True)}
    return caption_dataset(images, captions, options, levels=256)
