"""gpt and lstm: causality, exact likelihood, generation controls, training on text, runs, fine-tuning."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, TINY_CORPUS
from generation_checks import check_all
from genzoo.contract import DataInfo, DataKind, Optimizers
from genzoo.data import DataOptions
from genzoo.data.text import text_dataset
from genzoo.errors import ConfigError
from genzoo.finetune import plan_training

VARIANTS = {
    "gpt-learned": ("gpt", {"layers": 2, "heads": 2, "width": 16}),
    "gpt-rotary": ("gpt", {"layers": 2, "heads": 2, "width": 16, "positions": "rotary", "tie_weights": False}),
    "lstm": ("lstm", {"layers": 1, "width": 16, "embed_dim": 8}),
    "gru": ("lstm", {"layers": 2, "width": 16, "embed_dim": 8, "cell": "gru"}),
}


@pytest.fixture(scope="module")
def data() -> genzoo.Dataset:
    return text_dataset(TINY_CORPUS, DataOptions(context=16), "tiny")


def _model(variant: str, data: genzoo.Dataset) -> genzoo.GenerativeModel:
    torch.manual_seed(0)
    name, hparams = VARIANTS[variant]
    return genzoo.create(name, data, **hparams).eval()


def _cli(*args: str) -> str:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_at_t_ignore_tokens_after_t(variant: str, data: genzoo.Dataset) -> None:
    model = _model(variant, data)
    x = data.batch_at(0, 2, seed=0).x
    t = 6
    changed = x.clone()
    changed[:, t + 1 :] = (changed[:, t + 1 :] + 1) % data.info.levels
    with torch.no_grad():
        a, b = model(model.with_bos(x)), model(model.with_bos(changed))
    assert torch.allclose(a[:, : t + 2], b[:, : t + 2], atol=1e-6)  # input t+1 is x_t: still the same
    assert not torch.allclose(a[:, t + 2 :], b[:, t + 2 :], atol=1e-6)
    # and by gradient: d logits_t / d embedding of later inputs is zero
    if variant.startswith("gpt"):
        model.train()
        h = model.embed(model.with_bos(x)).detach().requires_grad_(True)
        out = h
        for block in model.blocks:
            out, _ = block(out, model.rotary, 0, None)
        out[:, t].sum().backward()
        assert h.grad[:, t + 1 :].abs().max() == 0 and h.grad[:, : t + 1].abs().max() > 0


def test_training_under_the_trainers_bf16_precision_stays_close_to_fp32(data: genzoo.Dataset) -> None:
    """Mixed precision is the trainer's setting (an outer autocast); gpt asks for it by default."""
    from genzoo.models.autoregressive.sequence import TokenSequenceModel
    from genzoo.models.transformer.gpt import GPT

    assert GPT.train_defaults == {**TokenSequenceModel.train_defaults, "precision": "auto"}
    assert "mixed_precision" not in GPT.Config.model_fields
    model = _model("gpt-learned", data).train()
    x = data.batch_at(0, 8, seed=0).x
    with torch.no_grad():
        fp32 = model.token_nll(x).mean()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = model.token_nll(x).mean()
    assert torch.isfinite(bf16) and float(bf16) == pytest.approx(float(fp32), rel=2e-2)
    optim = Optimizers(model.configure_optimizers(), grad_clip=1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = [model.training_step(data.batch_at(step, 8, seed=0), step, optim)["loss"] for step in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())


def test_cost_counts_one_network_call_per_token(data: genzoo.Dataset) -> None:
    gpt, lstm = _model("gpt-learned", data), _model("lstm", data)
    for model in (gpt, lstm):
        cached, uncached = model.cost(), model.cost(use_cache=False, temperature=0.5)
        assert cached.nfe_per_sample == uncached.nfe_per_sample == model.seq_len == 16
        assert 0 < cached.flops_per_sample < uncached.flops_per_sample
    # gpt: the usual 6 N + 12 L T d training FLOPs per token, N = the matmul weights (the tied output layer once)
    n = sum(p.numel() for name, p in gpt.named_parameters() if p.dim() == 2 and name.startswith("blocks."))
    n += gpt.vocab_out * 16
    assert gpt.cost().train_flops_per_example == pytest.approx(16 * (6 * n + 12 * 2 * 16 * 16))
    measured = genzoo.GenerativeModel.cost(gpt)  # the base class counts forward calls while sampling
    assert measured.nfe_per_sample == gpt.cost().nfe_per_sample
    with pytest.raises(ConfigError, match="temperature"):
        gpt.cost(temperature=-1)


def test_sampling_options_are_typed_and_described(data: genzoo.Dataset) -> None:
    model = _model("lstm", data)
    schema = model.sample_options_schema()["properties"]
    assert set(schema) == {"temperature", "top_k", "top_p", "min_p", "repetition_penalty", "use_cache"}
    assert all(field.get("description") for field in schema.values())
    assert torch.equal(model.sample(3, seed=1, temperature=0), model.sample(3, seed=2, temperature=0))
    for bad in ({"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 5}):
        with pytest.raises(ConfigError, match="bad sampling option"):
            model.sample(2, **bad)


@pytest.mark.parametrize("variant", VARIANTS)
def test_generation_controls(variant: str, data: genzoo.Dataset) -> None:
    # 40 new tokens run past the 16-token context: the sliding window is covered too
    check_all(_model(variant, data), "the cat", 40)


def test_likelihood_of_pixel_sequences_is_exact() -> None:
    """Summed over every possible 2-pixel image with 3 levels, p(x) is exactly 1."""
    info = DataInfo(kind=DataKind.IMAGE, shape=(1, 1, 2), levels=3)
    for name, hparams in (("gpt", {"layers": 1, "heads": 2, "width": 8}), ("lstm", {"width": 8})):
        torch.manual_seed(0)
        model = genzoo.create(name, info, **hparams).eval()
        images = torch.tensor(list(itertools.product(range(3), repeat=2)), dtype=torch.float32).view(9, 1, 1, 2) / 2
        with torch.no_grad():
            ll = model.log_likelihood(images)
        assert ll.kind == "exact" and ll.discrete
        assert float(ll.values.exp().sum()) == pytest.approx(1.0, abs=1e-5)
        samples = model.sample(50, seed=0)
        assert samples.shape == (50, 1, 1, 2) and set((samples * 2).round().unique().tolist()) <= {0.0, 1.0, 2.0}


def test_gpt_on_digits_reports_bits_per_dim() -> None:
    data = genzoo.load_dataset("digits")
    model = genzoo.create("gpt", data, layers=1, heads=2, width=16)
    metrics = model.validation_step(next(data.batches("val", 16)), torch.Generator())
    assert metrics["bits_per_dim"] == pytest.approx(metrics["val_loss"] / math.log(2))
    assert metrics["bits_per_dim"] < math.log2(17) + 0.5


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_loss_falls_when_overfitting_a_tiny_corpus(name: str, data: genzoo.Dataset) -> None:
    torch.manual_seed(0)
    model = genzoo.create(name, data, lr=1e-2, **VARIANTS[name if name == "lstm" else "gpt-learned"][1])
    optim = Optimizers(model.configure_optimizers(), grad_clip=1.0)
    batch = data.batch_at(0, 16, seed=0)
    losses = [model.training_step(batch, step, optim)["loss"] for step in range(60)]
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_run_directory_keeps_the_tokenizer_and_finetunes(data: genzoo.Dataset, tmp_path: Path) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text(TINY_CORPUS)
    settings = {**FAST, "batch_size": 8}
    hparams = VARIANTS["gpt-learned"][1]
    run = genzoo.train("gpt", f"text:{corpus}#context=16", steps=5, out=tmp_path / "run", overrides=hparams,
                       **settings)
    assert (run / "tokenizer.json").is_file()
    model = genzoo.load(run, checkpoint="last")
    expected = model.generate("the", max_new_tokens=10, seed=3, temperature=0.8)
    assert expected == model.generate("the", max_new_tokens=10, seed=3, temperature=0.8)
    # the CLI prints the prompt and the same completion, whole or streamed
    for extra in ([], ["--stream"]):
        printed = _cli("sample", str(run), "--checkpoint", "last", "--prompt", "the", "--max-new-tokens", "10",
                       "--seed", "3", "--temperature", "0.8", *extra)
        assert printed == "the" + expected + "\n"
    # --init RUN: the new text is read with the run's tokenizer and context, and weights start from the run
    new = tmp_path / "b.txt"
    new.write_text("the mat sat on the cat. " * 40)
    plan = plan_training("gpt", f"text:{new}", {}, init=str(run), lora=True)
    assert plan.data == f"text:{new}"  # the spec is not rewritten: the run's tokenizer and context are options
    assert plan.data_options == DataOptions(tokenizer=str(run), context=16)
    dataset = genzoo.load_dataset(plan.data, options=plan.data_options)
    assert dataset.info.levels == model.data.levels  # 'b' never occurs in b.txt, the vocabulary is the run's
    assert dataset.tokenizer.sha256 == model.tokenizer.sha256 and dataset.info.spec == f"text:{new}"
    # the user's own options still win over the run's
    assert genzoo.load_dataset(f"{plan.data}#context=8", options=plan.data_options).info.shape == (8,)
    fresh = genzoo.build_model(plan.model, dataset.info, plan.hparams, tokenizer=dataset.tokenizer)
    plan.apply(fresh.eval())
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    with torch.no_grad():
        assert torch.allclose(fresh(fresh.with_bos(dataset.batch_at(0, 2, 0).x)),
                              model(model.with_bos(dataset.batch_at(0, 2, 0).x)), atol=1e-5)


def test_eval_reports_language_metrics_consistent_with_the_likelihood(tmp_path: Path) -> None:
    corpus = tmp_path / "a.txt"
    corpus.write_text(TINY_CORPUS)
    run = genzoo.train("gpt", f"text:{corpus}#context=16", steps=20, out=tmp_path / "run",
                       overrides=VARIANTS["gpt-learned"][1], **{**FAST, "batch_size": 8})
    result = genzoo.evaluate(run, seed=0)
    text, likelihood = result["rows"]["model"]["text"], result["rows"]["model"]["likelihood"]
    # the same test windows, summed two ways: nats per token from the exact likelihood
    assert text["loss"] == pytest.approx(likelihood["nll_nats"] / 16, rel=1e-5)
    assert text["perplexity"] == pytest.approx(math.exp(text["loss"]))
    # characters: one token per character, so bits/char equals bits/token
    assert text["bits_per_char"] == pytest.approx(text["bits_per_token"], rel=1e-6)
    assert text["gen_tokens_per_s_cache"] > 0 and text["gen_tokens_per_s_no_cache"] > 0
    printed = _cli("eval", str(run), "--no-report")
    assert "perplexity" in printed and "bits/char" in printed


def test_cli_finetunes_a_run_with_lora_and_keeps_base_weights(tmp_path: Path) -> None:
    import subprocess
    import sys

    from genzoo.io import load_tensors

    corpus, new = tmp_path / "a.txt", tmp_path / "b.txt"
    corpus.write_text(TINY_CORPUS)
    new.write_text("the mat sat on the cat. " * 40)
    hparams = VARIANTS["gpt-learned"][1]
    base = genzoo.train("gpt", f"text:{corpus}#context=16", steps=3, out=tmp_path / "base", overrides=hparams,
                        **{**FAST, "batch_size": 8})
    sets = [arg for key, value in hparams.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.run([sys.executable, "-m", "genzoo", "train", "gpt", "--data", f"text:{new}", "--init",
                           str(base), "--lora", "--steps", "4", "--out", str(tmp_path / "tuned"), "--quiet",
                           "--set", "batch_size=8", *sets], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert genzoo.read_config(tmp_path / "tuned")["finetune"] == {"init": str(base), "lora": True, "notes": []}
    before, after = load_tensors(base / "last" / "model.safetensors"), load_tensors(tmp_path / "tuned" / "last" /
                                                                                   "model.safetensors")
    adapters = [k for k in after if "lora_" in k]
    assert adapters, "no LoRA adapter weights were saved"
    frozen = [k for k in after if "lora_" not in k and "base_layer" not in k and k in before]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)


@pytest.fixture(scope="module")
def tuned_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny gpt run and a LoRA fine-tune of it (a few steps, so the adapters are not zero)."""
    folder = tmp_path_factory.mktemp("tuned")
    corpus, new = folder / "a.txt", folder / "b.txt"
    corpus.write_text(TINY_CORPUS)
    new.write_text("the mat sat on the cat. " * 40)
    settings = {**FAST, "batch_size": 8}
    base = genzoo.train("gpt", f"text:{corpus}#context=16", steps=3, out=folder / "base",
                        overrides=VARIANTS["gpt-learned"][1], **settings)
    lora = genzoo.train("gpt", f"text:{new}", steps=3, out=folder / "lora", init=str(base), lora=True,
                        overrides={"lora_rank": 4, "lr": 1e-2}, **settings)
    return {"base": base, "lora": lora, "new": new}


@pytest.mark.parametrize("lora", [False, True])
def test_finetuning_continues_from_a_lora_run_with_its_adapters_merged(tuned_runs: dict[str, Path],
                                                                       lora: bool) -> None:
    from genzoo.io import load_tensors
    from genzoo.runs import RunDir

    tuned = genzoo.load(tuned_runs["lora"])
    plan = plan_training("gpt", f"text:{tuned_runs['new']}", {}, init=str(tuned_runs["lora"]), lora=lora)
    dataset = genzoo.load_dataset(plan.data, options=plan.data_options)
    fresh = genzoo.build_model(plan.model, dataset.info, plan.hparams, tokenizer=dataset.tokenizer)
    plan.apply(fresh.eval())
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert all("lora_" in n for n in trainable) == lora and trainable
    # the adapters learned something, and the merged model computes what the LoRA run computes
    x = fresh.with_bos(dataset.batch_at(0, 4, 0).x)
    with torch.no_grad():
        expected = tuned(x)
        assert not torch.allclose(expected, genzoo.load(tuned_runs["base"])(x), atol=1e-4)
        assert torch.allclose(fresh(x), expected, atol=1e-5)
    # merged by W + (alpha / r) B A with the LoRA run's own alpha and rank
    saved = load_tensors(RunDir(tuned_runs["lora"]).checkpoint() / "model.safetensors")
    hparams = genzoo.read_config(tuned_runs["lora"])["hparams"]
    layer = "blocks.0.qkv"
    a, b = saved[f"{layer}.lora_A.default.weight"], saved[f"{layer}.lora_B.default.weight"]
    assert a.shape[0] == hparams["lora_rank"] == 4 and b.abs().max() > 0
    merged = saved[f"{layer}.base_layer.weight"] + hparams["lora_alpha"] / hparams["lora_rank"] * b @ a
    weight = fresh.state_dict()[f"{layer}.base_layer.weight" if lora else f"{layer}.weight"]
    assert torch.allclose(weight, merged, atol=1e-6)


def test_cli_stop_strings_understand_backslash_escapes(tuned_runs: dict[str, Path]) -> None:
    model = genzoo.load(tuned_runs["base"])
    full = model.generate("the", max_new_tokens=80)
    expected = model.generate("the", max_new_tokens=80, stop="\n")
    assert 0 < len(expected) < len(full) and full.startswith(expected + "\n")
    printed = _cli("sample", str(tuned_runs["base"]), "--prompt", "the", "--max-new-tokens", "80", "--stop", r"\n")
    assert printed == "the" + expected + "\n"
    from genzoo.cli.sample import unescape

    assert unescape(r"a\n\tb\\n\x") == "a\n\tb\\n\\x"  # an escaped backslash stays one; unknown escapes stay


def test_bad_generation_options_fail_before_any_output(data: genzoo.Dataset,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from genzoo.cli.text import sample_text
    from genzoo.errors import ConfigError

    model = _model("gpt-learned", data)
    for stop in ("", [""]):
        with pytest.raises(ConfigError, match="empty stop string"):
            model.generate("the", max_new_tokens=5, stop=stop)
    for options in ({"stream": True, "num_return_sequences": 2}, {"stop": [""]}):
        with pytest.raises(ConfigError):
            sample_text(model, prompt="the cat", seed=0, max_new_tokens=5, **options)
        assert capsys.readouterr().out == ""
