"""Tiny Shakespeare, character level: genzoo's ``gpt`` against a plain nanoGPT-style reference, in one process.

Configuration (the one the widely used reference documents for CPUs): 4 layers, 4 heads, width 128, context 64,
batch 12, 2000 iterations, dropout 0; first 90% of the characters train, the last 10% validate. genzoo's ``gpt`` has
the same shape and trains on the same token budget at its own batch (``--batch``; iterations = 2000 * 12 / batch).
The reference is a straightforward implementation written below (learned positions, biases, weight tying, SDPA
attention, AdamW lr 1e-3 with 100 warm-up steps and cosine decay to 1e-4, gradient clipping 1.0, no torch.compile).
genzoo's ``gpt`` trains with the trainer's pieces (batches by step, warm-up + cosine schedule, ``Optimizers``). The
loops alternate in 40 turns of equal shares of their tokens so that each sees the same machine load (the machine may
be shared); genzoo's steps run under the trainer's mixed precision (``precision``: gpt's default ``auto`` = bf16
autocast where the CPU has native bf16; then ``gpt`` in fp32 is measured too). Also: the ``lstm`` at a similar
parameter count, generation tokens/s with and without the KV cache (one sequence, and a batch of 64), and achieved
FLOP/s (from ``model.cost()``) as a fraction of this machine's measured fp32 matmul peak.

    python bench/gpt_shakespeare.py [--data ../shared/data/tinyshakespeare.txt] [--iters 2000] [--batch 48]

Writes bench/results/gpt_shakespeare.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genzoo
from genzoo.contract import Optimizers, parse_override
from genzoo.data import DataOptions
from genzoo.data.text import text_dataset
from genzoo.metrics.text import generation_speed
from genzoo.registry import model_class
from genzoo.training.trainer import LRSchedule, TrainConfig, autocast_dtype

LAYERS, HEADS, WIDTH, CONTEXT, BATCH = 4, 4, 128, 64, 12


# ----- the reference: a plain nanoGPT-style model and loop ----------------------------------------------------------
class RefBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.c_attn, self.c_proj = nn.Linear(WIDTH, 3 * WIDTH), nn.Linear(WIDTH, WIDTH)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.GELU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: Tensor) -> Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(WIDTH, dim=2)
        q, k, v = (z.view(b, t, HEADS, c // HEADS).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp(self.ln_2(x))


class RefGPT(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, WIDTH), nn.Embedding(CONTEXT, WIDTH)
        self.blocks = nn.ModuleList(RefBlock() for _ in range(LAYERS))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.lm_head = nn.Linear(WIDTH, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for name, p in self.named_parameters():
            if p.dim() == 2:
                std = 0.02 / math.sqrt(2 * LAYERS) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx: Tensor, targets: Tensor) -> Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.shape[-1]), targets.view(-1))


def ref_lr(it: int, iters: int, lr: float = 1e-3, min_lr: float = 1e-4, warmup: int = 100) -> float:
    if it < warmup:
        return lr * (it + 1) / warmup
    ratio = (it - warmup) / max(1, iters - warmup)
    return min_lr + 0.5 * (1 + math.cos(math.pi * ratio)) * (lr - min_lr)


class Reference:
    """The reference training loop, advanced a chunk of iterations at a time."""

    def __init__(self, train: Tensor, vocab: int, iters: int) -> None:
        torch.manual_seed(1337)
        self.model, self.train, self.iters, self.it = RefGPT(vocab), train, iters, 0
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        other = [p for p in self.model.parameters() if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                                     lr=1e-3, betas=(0.9, 0.99))

    def run(self, steps: int) -> None:
        for _ in range(steps):
            for group in self.opt.param_groups:
                group["lr"] = ref_lr(self.it, self.iters)
            ix = torch.randint(len(self.train) - CONTEXT, (BATCH,))
            x = torch.stack([self.train[i : i + CONTEXT] for i in ix])
            y = torch.stack([self.train[i + 1 : i + 1 + CONTEXT] for i in ix])
            loss = self.model(x, y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            self.it += 1


class Ours:
    """genzoo's model through the trainer's pieces (batches by step, warm-up + cosine schedule, Optimizers, the
    trainer's autocast for its ``precision`` setting: the model's default unless given)."""

    def __init__(self, name: str, dataset: genzoo.Dataset, iters: int, precision: str | None = None,
                 batch: int = BATCH, **hparams: object) -> None:
        torch.manual_seed(0)
        self.model, self.dataset, self.step, self.batch = genzoo.create(name, dataset, **hparams), dataset, 0, batch
        self.optimizers = self.model.configure_optimizers()
        self.optim = Optimizers(self.optimizers, grad_clip=1.0)
        settings = {**model_class(name).train_defaults, "steps": iters, "warmup_steps": 100, "lr_schedule": "cosine",
                    "batch_size": batch}
        self.cfg = TrainConfig(**settings | ({} if precision is None else {"precision": precision}))
        self.schedule = LRSchedule(self.cfg.lr_schedule, self.cfg.warmup_steps, self.cfg.steps)
        self.dtype = autocast_dtype(self.cfg.precision, self.model.device)
        self.base_lr = [[g["lr"] for g in opt.param_groups] for opt in self.optimizers.values()]

    def run(self, steps: int) -> None:
        self.model.train()
        for _ in range(steps):
            factor = self.schedule.factor(self.step)
            for opt, lrs in zip(self.optimizers.values(), self.base_lr, strict=True):
                for group, lr in zip(opt.param_groups, lrs, strict=True):
                    group["lr"] = lr * factor
            batch = self.dataset.batch_at(self.step, self.batch, 0)
            with torch.autocast(self.model.device.type, dtype=self.dtype) if self.dtype else nullcontext():
                self.model.training_step(batch, self.step, self.optim)
            self.step += 1


def interleaved(trainers: dict[str, Reference | Ours], iters: dict[str, int], chunks: int = 40) -> dict[str, float]:
    """Train each for its ``iters`` steps in ``chunks`` alternating turns (equal shares of each one's tokens), so
    that all see the same machine load; seconds each."""
    seconds = dict.fromkeys(trainers, 0.0)
    for turn in range(chunks):
        for name, trainer in trainers.items():
            steps = iters[name] * (turn + 1) // chunks - iters[name] * turn // chunks
            start = time.perf_counter()
            trainer.run(steps)
            seconds[name] += time.perf_counter() - start
    return seconds


@torch.no_grad()
def reference_val_loss(model: RefGPT, val: Tensor) -> float:
    """Mean loss over consecutive windows: inputs val[i:i+64], targets shifted by one (context 1..64 per target)."""
    n = (len(val) - 1) // CONTEXT
    x = val[: n * CONTEXT].view(n, CONTEXT)
    y = val[1 : n * CONTEXT + 1].view(n, CONTEXT)
    return sum(float(model(x[i : i + 256], y[i : i + 256])) * len(x[i : i + 256]) for i in range(0, n, 256)) / n


@torch.no_grad()
def genzoo_val_loss(model: genzoo.GenerativeModel, val: Tensor) -> tuple[float, float]:
    """Mean loss over consecutive 64-token windows: all targets, and only targets with >= 1 token of context."""
    n = len(val) // model.seq_len
    windows = val[: n * model.seq_len].view(n, model.seq_len)
    model.eval()
    nll = torch.cat([model.token_nll(windows[i : i + 256]) for i in range(0, n, 256)])
    return float(nll.mean()), float(nll[:, 1:].mean())


# ----- machine -----------------------------------------------------------------------------------------------------
def matmul_peak(seconds: float = 6.0) -> float:
    """Best fp32 GFLOP/s over square matmuls of a few sizes, each timed in three rounds (the best round counts:
    a peak, not an average over whatever else the machine was doing)."""
    best = 0.0
    sizes = (1024, 2048, 4096)
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        for _ in range(3):
            reps, start = 0, time.perf_counter()
            while reps == 0 or time.perf_counter() - start < seconds / len(sizes) / 3:
                a @ b
                reps += 1
            best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo")
    names = [line.split(":", 1)[1].strip() for line in (cpuinfo.read_text().splitlines() if cpuinfo.exists() else [])
             if line.startswith("model name")]
    cpu = names[0] if names else platform.processor()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}


def gen_speed(model: genzoo.GenerativeModel, use_cache: bool, batch: int = 1, repeats: int = 5) -> float:
    """Median tokens/s generating 63 tokens (one context window after BOS) for ``batch`` sequences at once."""
    speeds = sorted(generation_speed(model, CONTEXT - 1, batch, use_cache=use_cache, seed=i) for i in range(repeats))
    return speeds[len(speeds) // 2]


def ours_row(trainer: Ours, seconds: float, val: Tensor, peak: float) -> dict:
    model, iters = trainer.model, trainer.step
    val_all, val_ctx = genzoo_val_loss(model, val)
    tokens = iters * trainer.batch * CONTEXT
    row = {"batch": trainer.batch, "iters": iters, "val_loss": val_all, "val_loss_with_context": val_ctx,
           "train_seconds": seconds, "tokens_per_s": tokens / seconds, "params": model.num_parameters(),
           "gen_tokens_per_s_cache": gen_speed(model, True), "gen_tokens_per_s_no_cache": gen_speed(model, False),
           "gen_tokens_per_s_batch64_cache": gen_speed(model, True, batch=64, repeats=3)}
    row["precision"] = trainer.cfg.precision  # the trainer setting, and what it resolved to on this machine:
    row["autocast_dtype"] = None if trainer.dtype is None else str(trainer.dtype).removeprefix("torch.")
    train_flops = model.cost().train_flops_per_example
    if train_flops is not None:
        row["achieved_gflops"] = train_flops * iters * trainer.batch / seconds / 1e9
        row["fraction_of_fp32_peak"] = row["achieved_gflops"] / peak
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on a shared machine)")
    parser.add_argument("--batch", type=int, default=BATCH, help="genzoo's batch (its iterations keep the "
                        "reference's token budget: iters * 12 / batch)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a gpt hyperparameter for genzoo's rows (as genzoo train --set)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpt_shakespeare.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    text = Path(args.data).read_text(encoding="utf-8")
    dataset = text_dataset(text, DataOptions(context=CONTEXT), args.data)
    train, val = dataset.streams["train"], torch.cat([dataset.streams["val"], dataset.streams["test"]])
    vocab = dataset.info.levels
    size = {"layers": LAYERS, "heads": HEADS, "width": WIDTH}
    result: dict = {"config": {**size, "context": CONTEXT, "batch": BATCH, "iters": args.iters,
                               "train_tokens": len(train), "val_tokens": len(val)}, "machine": machine()}
    result["machine"]["matmul_peak_gflops_fp32"] = peak = matmul_peak()
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s", flush=True)

    ours_iters = args.iters * BATCH // args.batch  # the reference's token budget
    hparams = size | dict(parse_override(item) for item in args.overrides)
    result["config"]["gpt"] = {"batch": args.batch, "iters": ours_iters, "hparams": hparams}
    trainers: dict[str, Reference | Ours] = {"reference": Reference(train, vocab, args.iters),
                                             "gpt": Ours("gpt", dataset, ours_iters, batch=args.batch, **hparams)}
    if trainers["gpt"].dtype is not None:  # mixed precision on this CPU: also measure without it
        trainers["gpt_fp32"] = Ours("gpt", dataset, ours_iters, precision="fp32", batch=args.batch, **hparams)
    seconds = interleaved(trainers, {name: args.iters if name == "reference" else ours_iters for name in trainers})
    ref = trainers["reference"].model
    ref_tokens_s = args.iters * BATCH * CONTEXT / seconds["reference"]
    # the same matmuls as the reference: training FLOPs per example (window) times the windows trained on
    flops = trainers["gpt"].model.cost().train_flops_per_example * args.iters * BATCH
    result["reference"] = {"batch": BATCH, "iters": args.iters, "val_loss": reference_val_loss(ref, val),
                           "train_seconds": seconds["reference"], "tokens_per_s": ref_tokens_s,
                           "params": sum(p.numel() for p in ref.parameters()),
                           "fraction_of_fp32_peak": flops / seconds["reference"] / 1e9 / peak}
    print("reference", result["reference"], flush=True)
    for name in trainers.keys() - {"reference"}:
        result[name] = ours_row(trainers[name], seconds[name], val, peak)
        result[name]["tokens_per_s_vs_reference"] = result[name]["tokens_per_s"] / ref_tokens_s
        print(name, result[name], flush=True)

    # equal wall-clock: as many steps as fit in the reference's training time at the measured speed ratio (the
    # schedule spans them all)
    steps = int(ours_iters * seconds["reference"] / seconds["gpt"])
    trainer = Ours("gpt", dataset, steps, batch=args.batch, **hparams)
    start = time.perf_counter()
    trainer.run(steps)
    val_all, val_ctx = genzoo_val_loss(trainer.model, val)
    result["gpt_equal_wallclock"] = {"batch": args.batch, "steps": steps, "val_loss": val_all,
                                     "val_loss_with_context": val_ctx, "train_seconds": time.perf_counter() - start,
                                     "reference_train_seconds": seconds["reference"]}
    print("gpt equal wall-clock", result["gpt_equal_wallclock"], flush=True)

    # LSTM at a similar parameter count (~0.9M)
    trainer = Ours("lstm", dataset, args.iters, layers=2, width=256, embed_dim=64)
    start = time.perf_counter()
    trainer.run(args.iters)
    result["lstm"] = ours_row(trainer, time.perf_counter() - start, val, peak)
    print("lstm", result["lstm"], flush=True)

    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
