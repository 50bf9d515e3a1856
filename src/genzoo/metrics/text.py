"""Language-model metrics: held-out loss, perplexity, bits per character/byte, and generation throughput.

With N held-out tokens covering C characters (B UTF-8 bytes) and total negative log-likelihood L nats,
loss = L / N, perplexity = exp(L / N), bits/token = L / (N ln 2), bits/char = L / (C ln 2), bits/byte = L / (B ln 2).
Bits per character and per byte compare models with different tokenizers; perplexity does not.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from genzoo.contract import eval_mode
from genzoo.data.base import Dataset
from genzoo.errors import GenzooError
from genzoo.generation import generate_tokens, generation_config


@torch.no_grad()
def text_metrics(model: Any, data: Dataset, split: str = "test", batch_size: int = 32,
                 limit: int | None = None) -> dict[str, float]:
    """Held-out metrics of a token language model on a TOKENS dataset (consecutive windows of ``split``)."""
    nats, tokens, ids = 0.0, 0, []
    with eval_mode(model):
        for batch in data.batches(split, batch_size, limit):
            x = batch.x.to(model.device)
            nats -= float(model.log_likelihood(x).values.sum())
            tokens += x.numel()
            ids.extend(batch.x.flatten().tolist())
    if not tokens:
        raise GenzooError(f"the {split} split has no complete window to evaluate")
    out = {"loss": nats / tokens, "perplexity": math.exp(nats / tokens), "bits_per_token": nats / tokens / math.log(2),
           "tokens": float(tokens)}
    tokenizer = data.tokenizer
    if tokenizer is not None:  # the data's own tokenizer turns the ids back into the text they cover
        text = tokenizer.decode(ids)
        out["bits_per_char"] = nats / max(1, len(text)) / math.log(2)
        out["bits_per_byte"] = nats / max(1, len(text.encode())) / math.log(2)
    return out


@torch.no_grad()
def generation_speed(model: Any, new_tokens: int = 128, batch: int = 1, use_cache: bool = True,
                     seed: int = 0) -> float:
    """Tokens per second generating ``new_tokens`` tokens per sequence from the start token (KV cache on/off)."""
    cfg = generation_config(max_new_tokens=new_tokens, use_cache=use_cache)
    start = torch.full((batch, 1), model.bos, dtype=torch.long, device=model.device)
    with eval_mode(model):
        begin = time.perf_counter()
        for _ in generate_tokens(model, start, cfg, torch.Generator().manual_seed(seed), model.vocab_out):
            pass
        seconds = time.perf_counter() - begin
    return batch * new_tokens / seconds
