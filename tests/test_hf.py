"""The Hugging Face adapter on tiny random models built locally (no download): generation, chat, scoring, LoRA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import genzoo
from conftest import FAST, TINY_CORPUS
from generation_checks import check_all
from genzoo.finetune import plan_training
from genzoo.nn.lora import base_key

transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant:{% endif %}")


def _tiny_hf(folder: Path, architecture: str) -> Path:
    """A randomly initialised causal LM with a byte-level BPE tokenizer trained on the tiny corpus, saved."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([TINY_CORPUS], trainers.BpeTrainer(
        vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|endoftext|>"],
        show_progress=False))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>",
                                                eos_token="<|endoftext|>")
    fast.chat_template = TEMPLATE
    common = {"vocab_size": len(fast), "bos_token_id": fast.bos_token_id, "eos_token_id": fast.eos_token_id}
    if architecture == "gpt2":
        config = transformers.GPT2Config(n_positions=32, n_embd=16, n_layer=2, n_head=2, **common)
    else:
        config = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                          num_attention_heads=2, max_position_embeddings=32, **common)
    torch.manual_seed(0)
    transformers.AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def tiny_hf(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_hf(tmp_path_factory.mktemp(request.param), request.param)


def test_pretrained_model_generates_through_the_shared_controls(tiny_hf: Path) -> None:
    model = genzoo.load_pretrained(str(tiny_hf))
    assert genzoo.Capability.GENERATE_TEXT in model.capabilities
    # 40 new tokens run past the 32 positions: the sliding window is covered too
    check_all(model, "the cat", 40)


def test_chat_goes_through_the_template(tiny_hf: Path) -> None:
    model = genzoo.load_pretrained(str(tiny_hf))
    messages = [{"role": "user", "content": "the cat"}]
    prompt = "user: the cat\nassistant:"
    expected = model.generate_from_ids(model.hf_tokenizer.encode(prompt, add_special_tokens=False), max_new_tokens=8,
                                       seed=1)
    assert genzoo.Capability.CHAT in model.capabilities
    assert model.chat(messages, max_new_tokens=8, seed=1) == expected


def test_chat_is_a_capability_only_with_a_chat_template(tiny_hf: Path) -> None:
    from genzoo.cli.text import sample_text

    model = genzoo.load_pretrained(str(tiny_hf))
    model.hf_tokenizer.chat_template = None
    assert genzoo.Capability.CHAT not in model.capabilities
    assert genzoo.Capability.GENERATE_TEXT in model.capabilities
    with pytest.raises(genzoo.GenzooError, match="no chat template"):
        model.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)
    with pytest.raises(genzoo.GenzooError, match="--chat needs"):
        sample_text(model, prompt="hi", seed=0, chat=True, max_new_tokens=2)


def test_the_genzoo_tokenizer_of_a_pretrained_model_is_its_own(tiny_hf: Path, tmp_path: Path) -> None:
    model = genzoo.load_pretrained(str(tiny_hf))
    assert model.tokenizer.source == f"hf:{tiny_hf}" and model.tokenizer.sha256 == \
        model.data.extra["tokenizer"]["sha256"]
    assert model.tokenizer.encode("the cat") == model.hf_tokenizer.encode("the cat", add_special_tokens=False)
    corpus = tmp_path / "t.txt"
    corpus.write_text(TINY_CORPUS)
    own = genzoo.load_dataset(f"text:{corpus}#tokenizer=hf:{tiny_hf},context=16")
    model.use_tokenizer(own.tokenizer)  # the same vocabulary: accepted
    chars = genzoo.load_dataset(f"text:{corpus}#context=16")
    with pytest.raises(genzoo.ConfigError, match="own tokenizer"):
        genzoo.build_model(f"hf:{tiny_hf}", chars.info, tokenizer=chars.tokenizer)


def test_cli_samples_and_chats_with_a_pretrained_model(tiny_hf: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    model = genzoo.load("hf:" + str(tiny_hf))
    assert model.provenance["checkpoint"] == "pretrained"
    runner = CliRunner()
    completion = model.generate("the cat", max_new_tokens=6, seed=2)
    for source in (["hf:" + str(tiny_hf)], ["--model", "hf:" + str(tiny_hf)]):
        result = runner.invoke(app, ["sample", *source, "--prompt", "the cat", "--max-new-tokens", "6", "--seed", "2"])
        assert result.exit_code == 0, result.output
        assert result.output == "the cat" + completion + "\n"
    answer = model.chat([{"role": "user", "content": "the cat"}], max_new_tokens=6, seed=2)
    result = runner.invoke(app, ["sample", "hf:" + str(tiny_hf), "--chat", "--prompt", "the cat", "--max-new-tokens",
                                 "6", "--seed", "2", "--stream"])
    assert result.exit_code == 0, result.output
    assert result.output == answer + "\n"


def test_eval_scores_a_pretrained_model_on_user_text(tiny_hf: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    corpus = tmp_path / "t.txt"
    corpus.write_text(TINY_CORPUS * 8)
    result = genzoo.evaluate("hf:" + str(tiny_hf), data=f"text:{corpus}")
    text = result["rows"]["model"]["text"]
    # independent of genzoo's scoring path: Hugging Face's own mean loss over the same test windows (after BOS)
    model = genzoo.load_pretrained(str(tiny_hf))
    data = genzoo.load_dataset(f"text:{corpus}#tokenizer=hf:{tiny_hf},context={model.data.shape[0]}")
    windows = torch.cat([batch.x for batch in data.batches("test", 256)])
    with torch.no_grad():
        inputs = torch.cat([torch.full((len(windows), 1), model.bos), windows[:, :-1]], dim=1)
        logits = model.lm(input_ids=inputs).logits
        hf_loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), windows.flatten())
    assert text["loss"] == pytest.approx(float(hf_loss), rel=1e-4)
    assert text["bits_per_byte"] > 0 and text["gen_tokens_per_s_cache"] > 0
    runner = CliRunner()
    out = runner.invoke(app, ["eval", "hf:" + str(tiny_hf), "--data", f"text:{corpus}", "--no-report"])
    assert out.exit_code == 0, out.output
    assert "perplexity" in out.output
    missing = runner.invoke(app, ["eval", "hf:" + str(tiny_hf)])
    assert missing.exit_code != 0 and "name the data" in str(missing.exception)


def test_log_likelihood_matches_the_hf_loss(tiny_hf: Path) -> None:
    model = genzoo.load_pretrained(str(tiny_hf))
    ids = torch.tensor([model.hf_tokenizer.encode("the dog ran to the log")])
    with torch.no_grad():
        ll = model.log_likelihood(ids).values
        full = torch.cat([torch.tensor([[model.bos]]), ids], dim=1)
        hf_loss = model.lm(input_ids=full, labels=full).loss  # mean over the predicted tokens
    assert float(-ll[0] / ids.shape[1]) == pytest.approx(float(hf_loss), rel=1e-5)


def test_hf_name_trains_with_the_model_tokenizer_and_lora(tiny_hf: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "new.txt"
    corpus.write_text(TINY_CORPUS)
    plan = plan_training(f"hf:{tiny_hf}", f"text:{corpus}#context=16", {}, lora=True)
    assert plan.data == f"text:{corpus}#context=16" and plan.data_options.tokenizer == f"hf:{tiny_hf}"
    run = genzoo.train(plan.model, plan.data, steps=4, out=tmp_path / "run", overrides={**plan.hparams, "lr": 1e-2},
                       **FAST)
    tuned = genzoo.load(run, checkpoint="last")
    base = genzoo.load_pretrained(str(tiny_hf))
    tuned_weights, base_weights = tuned.lm.state_dict(), base.lm.state_dict()
    for key, value in tuned_weights.items():
        if "lora_" not in key:
            assert torch.equal(value, base_weights[base_key(key)]), f"LoRA must leave base weights alone: {key}"
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tuned_weights.items())
    assert isinstance(tuned.generate("the", max_new_tokens=5, seed=0), str)


def test_prompts_are_read_as_hugging_face_generate_reads_them(tiny_hf: Path) -> None:
    model = genzoo.load_pretrained(str(tiny_hf))
    ids = model.hf_tokenizer("the cat").input_ids
    assert model.prompt_ids("the cat") == ids  # no start token prepended to a non-empty prompt
    assert model.prompt_ids("") == [model.bos]  # the empty prompt needs one to predict from
    with torch.no_grad():
        out = model.lm.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=10,
                                pad_token_id=model.hf_tokenizer.eos_token_id)
    expected = model.hf_tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)
    assert model.generate("the cat", max_new_tokens=10, temperature=0) == expected


def test_generation_stops_at_every_eos_id_of_the_generation_config(tiny_hf: Path) -> None:
    from generation_checks import sampled_ids

    model = genzoo.load_pretrained(str(tiny_hf))
    eos = model.hf_tokenizer.eos_token_id
    drawn = sampled_ids(model, "the cat", rows=1, max_new_tokens=12)[0].tolist()  # what generate(seed=0) draws
    stop = next(t for i, t in enumerate(drawn) if i and t != eos and t not in drawn[:i])
    expected = model.decode_tokens(drawn[: min(drawn.index(t) for t in (eos, stop) if t in drawn)])
    for configured in ([eos, stop], stop):
        model.lm.generation_config.eos_token_id = configured
        assert model.generate("the cat", max_new_tokens=12) == expected
        assert model.eos_ids == {eos, stop}


def test_the_kv_cache_goes_by_the_name_the_installed_transformers_uses(tiny_hf: Path) -> None:
    import inspect
    import warnings

    model = genzoo.load_pretrained(str(tiny_hf))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*past_key_values.*")
        assert model.generate("the cat", max_new_tokens=5, seed=0, use_cache=True) == \
            model.generate("the cat", max_new_tokens=5, seed=0, use_cache=False)
    assert model.cache_name in inspect.signature(model.lm.forward).parameters


# ----- encoder-decoder (T5-style) models ----------------------------------------------------------------------------
def _tiny_t5(folder: Path) -> Path:
    """A randomly initialised T5 (d_model 32, one layer each side) with a character tokenizer, saved."""
    from tokenizers import Tokenizer, decoders, models

    chars = "abcdefghijklmnopqrstuvwxyz0123456789+ "
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{c: i + 3 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(["<pad>", "</s>", "<unk>"])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                                unk_token="<unk>")
    config = transformers.T5Config(vocab_size=len(fast), d_model=32, d_kv=8, d_ff=64, num_layers=1,
                                   num_decoder_layers=1, num_heads=4, pad_token_id=0, eos_token_id=1,
                                   decoder_start_token_id=0, dropout_rate=0.0)
    torch.manual_seed(0)
    model = transformers.AutoModelForSeq2SeqLM.from_config(config)
    with torch.no_grad():  # away from the random start, where <pad> wins every step
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_t5(tmp_path_factory.mktemp("t5"))


def test_encoder_decoder_generates_as_hugging_face_does(tiny_t5: Path) -> None:
    """Greedy decoding and beam search (answers and length-normalised scores) equal transformers' own generate on
    the source followed by </s>; the prompt is not echoed, and the cache changes nothing."""
    from generation_checks import check_cache_equals_no_cache
    from genzoo.generation import beam_search, generation_config

    model = genzoo.load_pretrained(str(tiny_t5))
    assert model.encoder_decoder and not model.continues_prompt
    for prompt in ("abc", "hello", "x"):
        ids = torch.tensor([[*model.hf_tokenizer(prompt).input_ids, model.hf_tokenizer.eos_token_id]])
        with torch.no_grad():
            greedy = model.lm.generate(ids, do_sample=False, max_new_tokens=8)
            beams = model.lm.generate(ids, do_sample=False, num_beams=3, max_new_tokens=8, num_return_sequences=2,
                                      output_scores=True, return_dict_in_generate=True)
        expected = model.hf_tokenizer.decode(greedy[0], skip_special_tokens=True)
        assert model.generate(prompt, max_new_tokens=8, temperature=0) == expected
        ours = beam_search(model, model.prompt_ids(prompt), generation_config(num_beams=3, max_new_tokens=8))
        for (tokens, score), theirs, their_score in zip(ours, beams.sequences, beams.sequences_scores, strict=False):
            assert tokens == [t for t in theirs.tolist()[1:] if t > 1]  # without the start id, </s> and padding
            assert score == pytest.approx(float(their_score), abs=1e-5)
    check_cache_equals_no_cache(model, "abc", 6)


def test_encoder_decoder_lora_trains_on_task_pairs(tiny_t5: Path, tmp_path: Path) -> None:
    plan = plan_training(f"hf:{tiny_t5}", "task:reverse", {}, lora=True)
    assert plan.data_options.tokenizer == f"hf:{tiny_t5}"
    run = genzoo.train(plan.model, plan.data, steps=4, out=tmp_path / "run", overrides={**plan.hparams, "lr": 1e-2},
                       **FAST)
    tuned, base = genzoo.load(run, checkpoint="last"), genzoo.load_pretrained(str(tiny_t5))
    assert tuned.capabilities == {genzoo.Capability.GENERATE_TEXT}  # pairs: p(y | x) only
    base_weights = base.lm.state_dict()
    for key, value in tuned.lm.state_dict().items():
        if "lora_" not in key:
            assert torch.equal(value, base_weights[base_key(key)]), f"LoRA must leave base weights alone: {key}"
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in tuned.lm.state_dict().items())
    test = genzoo.data.load_dataset("task:reverse", options=plan.data_options).examples("test")[:8]
    metrics = tuned.task_metrics(test, torch.Generator())
    assert set(metrics) == {"exact_match_accuracy", "char_error_rate", "conditional_nll_per_token"}
    assert isinstance(tuned.generate("abc", max_new_tokens=4, num_beams=2), str)


def test_a_causal_model_refuses_pair_data(tiny_hf: Path) -> None:
    from genzoo.data.specs import DataOptions, load_dataset
    from genzoo.registry import build_model

    data = load_dataset("task:reverse", options=DataOptions(tokenizer=f"hf:{tiny_hf}"))
    with pytest.raises(genzoo.ConfigError, match="no encoder for the sources"):
        build_model("hf", data.info, {"pretrained": str(tiny_hf)}, tokenizer=data.tokenizer)
