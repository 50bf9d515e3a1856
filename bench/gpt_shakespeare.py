"""Tiny Shakespeare, character level: genzoo's ``gpt`` against a plain nanoGPT-style reference, in one process.

Configuration (the one the widely used reference documents for CPUs): 4 layers, 4 heads, width 128, context 64,
batch 12, 2000 iterations, dropout 0; first 90% of the characters train, the last 10% validate. The reference is a
straightforward implementation written below (learned positions, biases, weight tying, SDPA attention, AdamW lr 1e-3
with 100 warm-up steps and cosine decay to 1e-4, gradient clipping 1.0, no torch.compile). genzoo's ``gpt`` trains
through ``genzoo.train`` (the product path). Also: the ``lstm`` at a similar parameter count, generation tokens/s
with and without the KV cache, and achieved FLOP/s as a fraction of this machine's measured fp32 matmul peak.

    python bench/gpt_shakespeare.py [--data ../shared/data/tinyshakespeare.txt] [--iters 2000]

Writes bench/results/gpt_shakespeare.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import genzoo
from genzoo.data.text import TextOptions, text_dataset
from genzoo.metrics.text import generation_speed

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


def train_reference(train: Tensor, vocab: int, iters: int) -> tuple[RefGPT, float]:
    torch.manual_seed(1337)
    model = RefGPT(vocab)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    other = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    start = time.perf_counter()
    for it in range(iters):
        for group in opt.param_groups:
            group["lr"] = ref_lr(it, iters)
        ix = torch.randint(len(train) - CONTEXT, (BATCH,))
        x = torch.stack([train[i : i + CONTEXT] for i in ix])
        y = torch.stack([train[i + 1 : i + 1 + CONTEXT] for i in ix])
        loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return model, time.perf_counter() - start


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
def matmul_peak(seconds: float = 3.0) -> float:
    """Best fp32 GFLOP/s over square matmuls of a few sizes (each timed for ~seconds / 3)."""
    best = 0.0
    for n in (256, 512, 1024):
        a, b = torch.randn(n, n), torch.randn(n, n)
        a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 3:
            a @ b
            reps += 1
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - start) / 1e9)
    return best


def machine() -> dict:
    cpu = platform.processor()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average_1m": os.getloadavg()[0]}


# ----- genzoo ------------------------------------------------------------------------------------------------------
def train_genzoo(name: str, dataset: genzoo.Dataset, iters: int, out: Path, **hparams: object) -> tuple[Path, float]:
    settings = {"progress": False, "eval_every": 10**9, "sample_every": 10**9, "checkpoint_every": 10**9,
                "batch_size": BATCH, "lr_schedule": "cosine"}
    start = time.perf_counter()
    run = genzoo.train(name, dataset, steps=iters, out=out, seed=0, overrides=hparams, **settings)
    return run, time.perf_counter() - start


def train_seconds(run: Path) -> float:
    """Wall-clock of the training loop itself, from the trainer's logged steps/s."""
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if r.get("split") == "train"][-1]
    return last["step"] / last["steps_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/tinyshakespeare.txt"))
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "gpt_shakespeare.json"))
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count() or 1)

    text = Path(args.data).read_text(encoding="utf-8")
    dataset = text_dataset(text, TextOptions(context=CONTEXT), args.data)
    train, val = dataset.streams["train"], torch.cat([dataset.streams["val"], dataset.streams["test"]])
    vocab = dataset.info.levels
    result: dict = {"config": {"layers": LAYERS, "heads": HEADS, "width": WIDTH, "context": CONTEXT,
                               "batch": BATCH, "iters": args.iters, "train_chars": len(train), "val_chars": len(val)},
                    "machine": machine()}
    result["machine"]["matmul_peak_gflops"] = peak = matmul_peak()
    print(f"fp32 matmul peak {peak:.1f} GFLOP/s")

    ref, ref_s = train_reference(train, vocab, args.iters)
    ref_tps = args.iters * BATCH * CONTEXT / ref_s
    result["reference"] = {"val_loss": reference_val_loss(ref, val), "train_seconds": ref_s, "tokens_per_s": ref_tps,
                           "params": sum(p.numel() for p in ref.parameters())}
    print("reference", result["reference"])

    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        # equal configuration: same model size, data, batch and iterations; our defaults otherwise
        run, total_s = train_genzoo("gpt", dataset, args.iters, Path(tmp) / "gpt", layers=LAYERS, heads=HEADS,
                                    width=WIDTH)
        model = genzoo.load(run, checkpoint="last")
        seconds = train_seconds(run)
        val_all, val_ctx = genzoo_val_loss(model, val)
        flops = model.flops_per_token() * args.iters * BATCH * CONTEXT
        rows["gpt"] = {"val_loss": val_all, "val_loss_with_context": val_ctx, "train_seconds": seconds,
                       "seconds_with_setup": total_s, "tokens_per_s": args.iters * BATCH * CONTEXT / seconds,
                       "speedup_vs_reference": ref_s / seconds, "params": model.num_parameters(),
                       "achieved_gflops": flops / seconds / 1e9, "fraction_of_peak": flops / seconds / 1e9 / peak,
                       "gen_tokens_per_s_cache": generation_speed(model, 256, use_cache=True),
                       "gen_tokens_per_s_no_cache": generation_speed(model, 256, use_cache=False)}
        print("gpt", rows["gpt"])
        # equal wall-clock: as many steps as fit in the reference's training time at our measured speed
        steps = int(args.iters * ref_s / seconds)
        run, _ = train_genzoo("gpt", dataset, steps, Path(tmp) / "gpt-time", layers=LAYERS, heads=HEADS, width=WIDTH)
        model = genzoo.load(run, checkpoint="last")
        val_all, val_ctx = genzoo_val_loss(model, val)
        rows["gpt_equal_wallclock"] = {"steps": steps, "val_loss": val_all, "val_loss_with_context": val_ctx,
                                       "train_seconds": train_seconds(run)}
        print("gpt equal wall-clock", rows["gpt_equal_wallclock"])
        # LSTM at a similar parameter count (~0.8M)
        run, _ = train_genzoo("lstm", dataset, args.iters, Path(tmp) / "lstm", layers=2, width=256, embed_dim=64)
        model = genzoo.load(run, checkpoint="last")
        seconds = train_seconds(run)
        val_all, val_ctx = genzoo_val_loss(model, val)
        rows["lstm"] = {"val_loss": val_all, "val_loss_with_context": val_ctx, "train_seconds": seconds,
                        "tokens_per_s": args.iters * BATCH * CONTEXT / seconds, "params": model.num_parameters(),
                        "gen_tokens_per_s_cache": generation_speed(model, 256, use_cache=True),
                        "gen_tokens_per_s_no_cache": generation_speed(model, 256, use_cache=False)}
        print("lstm", rows["lstm"])
    result.update(rows)
    result["machine"]["load_average_1m_end"] = os.getloadavg()[0]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
