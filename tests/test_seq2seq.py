"""seq2seq, pair data and beam search: exact task answers, the pairs: loader, causality and padding by gradient,
cached decoding, beam search against greedy decoding and brute force, character error rate, learning task:reverse."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_dataset
from generation_checks import check_all
from genzoo.contract import Capability, DataKind, Optimizers
from genzoo.data.pairs import TASK_SIZES, pair_dataset, task_answer, task_pairs
from genzoo.data.specs import DataOptions, load_dataset
from genzoo.errors import ConfigError, DataError, GenzooError
from genzoo.generation import beam_search, generate_tokens, generation_config
from genzoo.models.transformer.encoder_decoder import char_error_rate, edit_distance
from genzoo.registry import build_model

SMALL = {"layers": 2, "heads": 2, "width": 16}


def _reverse_data(train: int = 2000) -> object:
    """task:reverse over 5 letters, 1-5 of them: small enough to learn in a few hundred steps."""
    pairs = task_pairs("reverse", {"train": train, "val": 100, "test": 200}, lengths=(1, 5), alphabet="abcde")
    return pair_dataset(pairs, DataOptions(), "tiny-reverse", task="reverse")


@pytest.fixture(scope="module")
def data() -> object:
    return _reverse_data(300)


def _model(data: object, seed: int = 0, **hparams: object) -> object:
    torch.manual_seed(seed)
    model = build_model("seq2seq", data.info, {**SMALL, **hparams}, tokenizer=data.tokenizer).eval()
    with torch.no_grad():  # perturbed weights: no parameter sits at a special value (zero, one)
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model


# ----- data ---------------------------------------------------------------------------------------------------------
def test_tasks_give_exact_answers() -> None:
    assert task_answer("reverse", "abc") == "cba"
    assert task_answer("sort", "cab") == "abc" and task_answer("sort", "bcabz") == "abbcz"
    assert task_answer("add", "12+345") == "357" and task_answer("add", "999+999") == "1998"
    assert task_answer("add", "0+0") == "0"


def test_task_splits_are_fixed_disjoint_and_documented() -> None:
    for name in ("reverse", "sort", "add"):
        splits = task_pairs(name)
        assert {s: len(p) for s, p in splits.items()} == TASK_SIZES
        inputs = [{s for s, _ in pairs} for pairs in splits.values()]
        assert sum(map(len, inputs)) == sum(TASK_SIZES.values())  # distinct within and across splits
        assert all(t == task_answer(name, s) for pairs in splits.values() for s, t in pairs)
        assert splits == task_pairs(name)  # generated from a fixed seed
    letters = [s for pairs in task_pairs("reverse").values() for s, _ in pairs]
    assert {len(s) for s in letters} == set(range(1, 9)) and set("".join(letters)) <= set("abcdefghijklmnopqrstuvwxyz")
    operands = [int(n) for pairs in task_pairs("add").values() for s, _ in pairs for n in s.split("+")]
    assert min(operands) == 0 and max(operands) == 999


def test_task_spec_holds_targets_with_eos_and_padded_sources() -> None:
    data = load_dataset("task:add")
    pairs, tok = data.info.extra["pairs"], data.tokenizer
    assert data.info.kind is DataKind.TOKENS and data.info.shape == (5,)  # 1998 + </s>
    assert pairs["source_len"] == 7 and data.info.levels == tok.vocab_size  # 999+999
    batch = data.examples("test")
    assert batch.cond.shape == (500, 7) and batch.x.shape == (500, 5)
    eos, pad = pairs["eos"], pairs["pad"]
    expected = task_pairs("add")["test"]
    for (source, target), src, tgt in zip(expected[:50], batch.cond.tolist(), batch.x.tolist(), strict=False):
        assert tok.decode([i for i in src if i != pad]) == source
        end = tgt.index(eos)
        assert tok.decode(tgt[:end]) == target and all(i == pad for i in tgt[end + 1 :])
    with pytest.raises(DataError, match="unknown task 'copy'"):
        load_dataset("task:copy")


def test_pairs_loader_reads_jsonl_with_custom_fields_and_tsv(tmp_path: Path) -> None:
    rows = [{"src": f"in{i}", "tgt": f"out {i}!", "other": 1} for i in range(10)]
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    tsv = tmp_path / "p.tsv"
    tsv.write_text("".join(f"{r['src']}\t{r['tgt']}\r\n" for r in rows))
    for spec in (f"pairs:{jsonl}#input=src,target=tgt", f"pairs:{tsv}"):
        data = load_dataset(spec)
        tok, pairs = data.tokenizer, data.info.extra["pairs"]
        both = data.examples("train", "val", "test")
        assert len(both) == 10 and data.size("train") == 8
        got = {(tok.decode([i for i in s if i != pairs["pad"]]), tok.decode(t[: t.index(pairs["eos"])]))
               for s, t in zip(both.cond.tolist(), both.x.tolist(), strict=True)}
        assert got == {(r["src"], r["tgt"]) for r in rows}
    with pytest.raises(DataError, match=r"p.jsonl:1: no string field 'input'"):
        load_dataset(f"pairs:{jsonl}")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"input": "a", "target": "b"}\n{"input": "a",\n')
    with pytest.raises(DataError, match=r"bad.jsonl:2: not valid JSON"):
        load_dataset(f"pairs:{bad}")
    tabs = tmp_path / "bad.tsv"
    tabs.write_text("a\tb\nno tab here\nc\td\n")
    with pytest.raises(DataError, match=r"bad.tsv:2: expected 'source<TAB>target', found 0 tabs"):
        load_dataset(f"pairs:{tabs}")
    with pytest.raises(DataError, match="unknown text spec option 'field'"):
        load_dataset(f"pairs:{jsonl}#field=src")


# ----- metrics ------------------------------------------------------------------------------------------------------
def test_edit_distance_and_character_error_rate_on_hand_made_strings() -> None:
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3 and edit_distance("abc", "abc") == 0
    assert edit_distance("ab", "ba") == 2 and edit_distance("flaw", "lawn") == 2
    assert char_error_rate(["abd", "xy"], ["abc", "xyz"]) == pytest.approx(2 / 6)
    assert char_error_rate(["cba"], ["cba"]) == 0.0


# ----- the network --------------------------------------------------------------------------------------------------
def test_decoder_sees_every_source_token_and_only_earlier_targets(data: object) -> None:
    """d logits_t / d embeddings: non-zero for every real source position (the encoder is bidirectional) and
    decoder inputs <= t, exactly zero for source padding and later decoder inputs."""
    model = _model(data)
    batch = data.examples("test")[:6]
    pad = data.info.extra["pairs"]["pad"]
    assert (batch.cond == pad).any() and (batch.cond != pad).all(1).any()  # some rows padded, one not
    embedded = []

    def keep(module: object, inputs: object, out: torch.Tensor) -> None:
        out.retain_grad()
        embedded.append(out)

    hook = model.embed.register_forward_hook(keep)
    logits = model.target_logits(batch.cond, model.with_bos(batch.x))
    hook.remove()
    t = 2
    logits[:, t, :pad].sum().backward()
    source_grad, target_grad = (e.grad.abs().sum(-1) for e in embedded)
    real = torch.cat([torch.ones(len(batch), 1, dtype=torch.bool), batch.cond != pad], dim=1)  # BOS + source
    assert (source_grad[real] > 0).all() and (source_grad[~real] == 0).all()
    assert (target_grad[:, : t + 1] > 0).all() and (target_grad[:, t + 1 :] == 0).all()
    # bidirectional: the encoder output at the first source token depends on the last one
    embedded.clear()
    hook = model.embed.register_forward_hook(keep)
    row = batch[(batch.cond != pad).all(1)][:1]
    model.run_encoder(row.cond)[0][0, 1].sum().backward()
    hook.remove()
    assert embedded[0].grad[0, -1].abs().sum() > 0


def test_padding_the_source_further_changes_nothing(data: object) -> None:
    model = _model(data)
    batch = data.examples("test")[:8]
    extra = torch.full((8, 3), data.info.extra["pairs"]["pad"])
    with torch.no_grad():
        a = model.target_logits(batch.cond, model.with_bos(batch.x))
        b = model.target_logits(torch.cat([batch.cond, extra], 1), model.with_bos(batch.x))
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_cached_decoding_equals_the_full_forward(data: object) -> None:
    model = _model(data)
    batch = data.examples("test")[:5]
    bos = torch.full((5, 1), model.bos)
    with torch.no_grad():
        full = model.target_logits(batch.cond, model.with_bos(batch.x))
        logits, state = model.prefill(torch.cat([batch.cond, bos], 1))
        steps = [logits]
        for t in range(batch.x.shape[1] - 1):
            logits, state = model.extend(batch.x[:, t], state)
            steps.append(logits)
        torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
        # a decoder prefix read at once (causal prefill) gives the same next-token logits
        prefix = model.prefill(torch.cat([batch.cond, bos, batch.x[:, :3]], 1))[0]
        torch.testing.assert_close(prefix, full[:, 3], atol=1e-5, rtol=1e-5)


def test_pad_is_never_predicted_and_pairs_only_have_the_conditional_likelihood(data: object) -> None:
    model = _model(data)
    assert model.capabilities == {Capability.GENERATE_TEXT}
    with pytest.raises(GenzooError, match="cannot sample"):
        model.sample(2)
    with pytest.raises(GenzooError, match="cannot exact likelihood"):
        model.log_likelihood(data.examples("test").x[:2])
    logits = model.prefill(torch.tensor([[0, 1, model.bos]]))[0]
    pad = data.info.extra["pairs"]["pad"]
    assert logits[0, pad] == float("-inf") and torch.isfinite(logits[0, :pad]).all()
    # log p(y | x) per token: the mean of -log softmax at the target tokens, </s> included, padding excluded
    test = data.examples("test")[:20]
    nll = model.task_metrics(test, torch.Generator())["conditional_nll_per_token"]
    with torch.no_grad():
        logp = model.target_logits(test.cond, model.with_bos(test.x)).log_softmax(-1)
    real = test.x != pad
    picked = logp.gather(-1, test.x[..., None])[..., 0][real]
    assert nll == pytest.approx(-picked.mean().item(), rel=1e-5)


def test_without_a_source_it_is_a_language_model_with_an_exact_likelihood() -> None:
    """On plain text the source is empty: log p(x) is the chain rule through cached decoding, sampling and the
    shared generation controls work as for gpt."""
    text = tiny_dataset(DataKind.TOKENS)
    torch.manual_seed(0)
    model = build_model("seq2seq", text.info, SMALL, tokenizer=text.tokenizer).eval()
    assert {Capability.SAMPLE, Capability.EXACT_LIKELIHOOD, Capability.GENERATE_TEXT} <= model.capabilities
    x = next(text.batches("test", 3)).x
    with torch.no_grad():
        logits, state = model.prefill(torch.full((3, 1), model.bos))
        total = torch.zeros(3)
        for t in range(x.shape[1]):
            total += logits.log_softmax(-1).gather(1, x[:, t : t + 1])[:, 0]
            logits, state = model.extend(x[:, t], state)
        torch.testing.assert_close(model.log_likelihood(x).values, total, atol=1e-4, rtol=1e-5)
    check_all(model, "the", 6)


# ----- beam search --------------------------------------------------------------------------------------------------
def _greedy(model: object, prompt: list[int], n: int) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = [int(t) for t in generate_tokens(model, ids, generation_config(temperature=0, max_new_tokens=n),
                                               torch.Generator(), model.vocab_out)]
    return out[: next((i for i, t in enumerate(out) if t in model.eos_ids), n)]


def _mean_log_prob(model: object, prompt: list[int], tokens: list[int]) -> float:
    """Log-probability per token of ``tokens`` after ``prompt`` by full forwards (no cache)."""
    total = 0.0
    with torch.no_grad():
        for i, token in enumerate(tokens):
            total += float(model.prefill(torch.tensor([prompt + tokens[:i]]))[0].log_softmax(-1)[0, token])
    return total / len(tokens)


class _EosBiased(torch.nn.Module):
    """The model with ``bias`` added to the end-of-sequence logit, so that answers end within a few tokens."""

    def __init__(self, model: object, bias: float) -> None:
        super().__init__()
        self.model, self.bias = model, bias
        self.eos_ids, self.vocab_out, self.device = model.eos_ids, model.vocab_out, model.device

    def _biased(self, out: tuple[torch.Tensor, object]) -> tuple[torch.Tensor, object]:
        logits = out[0].clone()
        logits[:, next(iter(self.eos_ids))] += self.bias
        return logits, out[1]

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, object]:
        return self._biased(self.model.prefill(ids))

    def extend(self, token: torch.Tensor, state: object) -> tuple[torch.Tensor, object]:
        return self._biased(self.model.extend(token, state))


def test_one_beam_is_greedy_and_more_beams_score_at_least_as_well(data: object) -> None:
    base = _model(data, seed=1)
    model, eos = _EosBiased(base, 1.8), data.info.extra["pairs"]["eos"]
    ended = 0
    for source in ("abcde", "ba", "eeadc", "c", "dd"):
        prompt = base.prompt_ids(source)
        greedy = _greedy(model, prompt, 6)
        (best, score), *_ = beam_search(model, prompt, generation_config(num_beams=1, max_new_tokens=6))
        assert best == greedy
        ended += len(greedy) < 6
        scored = [*greedy, eos] if len(greedy) < 6 else greedy
        assert score == pytest.approx(_mean_log_prob(model, prompt, scored), abs=1e-5)
        beams = beam_search(model, prompt, generation_config(num_beams=4, max_new_tokens=6))
        assert beams[0][1] >= score - 1e-6
        assert [s for _, s in beams] == sorted((s for _, s in beams), reverse=True)
        uncached = beam_search(model, prompt, generation_config(num_beams=4, max_new_tokens=6, use_cache=False))
        assert [b for b, _ in uncached] == [b for b, _ in beams]
    assert 0 < ended < 5  # answers that end with </s> and answers cut at max_new_tokens are both covered


def test_enough_beams_rank_every_answer_of_up_to_two_tokens(data: object) -> None:
    """With more beams than candidates, beam search over two steps ranks every finished answer ([</s>],
    [a, </s>]) and every unfinished one ([a, b]) by its mean log-probability per token, as brute force does."""
    base = _model(data, seed=2)
    model, eos, pad = _EosBiased(base, 1.5), base.eos_ids, data.info.extra["pairs"]["pad"]
    prompt = base.prompt_ids("bad")
    symbols = [t for t in range(base.vocab_out) if t not in eos and t != pad]
    (end,) = eos
    answers = [[end]] + [[a, end] for a in symbols] + [[a, b] for a in symbols for b in symbols]
    expected = sorted(((tuple(a if a[-1] != end else a[:-1]), _mean_log_prob(model, prompt, a)) for a in answers),
                      key=lambda h: -h[1])
    beams = beam_search(model, prompt, generation_config(num_beams=len(answers), max_new_tokens=2,
                                                         num_return_sequences=len(answers)))
    assert [tuple(b) for b, _ in beams] == [b for b, _ in expected]
    assert [s for _, s in beams] == pytest.approx([s for _, s in expected], abs=1e-5)


@pytest.mark.parametrize("name", ["gpt", "seq2seq"])
def test_enough_beams_find_the_most_probable_two_token_continuation(name: str) -> None:
    """With as many beams as tokens, two steps of beam search are exhaustive: the best beam is the argmax of the
    mean log-probability over all V^2 continuations (models without an end-of-sequence token)."""
    text = tiny_dataset(DataKind.TOKENS)
    torch.manual_seed(0)
    model = build_model(name, text.info, {"layers": 1, "heads": 2, "width": 16}, tokenizer=text.tokenizer).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    prompt, vocab = model.prompt_ids("the "), model.vocab_out
    with torch.no_grad():
        first = model.prefill(torch.tensor([prompt]))[0].log_softmax(-1)[0]
        second = torch.stack([model.prefill(torch.tensor([[*prompt, a]]))[0].log_softmax(-1)[0]
                              for a in range(vocab)])
    scores = (first[:, None] + second) / 2
    best = divmod(int(scores.argmax()), vocab)
    beams = beam_search(model, prompt, generation_config(num_beams=vocab, max_new_tokens=2,
                                                         num_return_sequences=3))
    assert tuple(beams[0][0]) == best and beams[0][1] == pytest.approx(float(scores.max()), abs=1e-5)
    top3 = sorted(itertools.product(range(vocab), repeat=2), key=lambda ab: -float(scores[ab]))[:3]
    assert [tuple(b) for b, _ in beams[:3]] == top3
    texts = model.generate("the ", num_beams=vocab, max_new_tokens=2, num_return_sequences=3)
    assert texts == [model.decode_tokens(list(ab)) for ab in top3]


def test_beam_options_are_checked() -> None:
    text = tiny_dataset(DataKind.TOKENS)
    model = build_model("seq2seq", text.info, SMALL, tokenizer=text.tokenizer)
    with pytest.raises(ConfigError, match="num_return_sequences"):
        model.generate("the", num_beams=2, num_return_sequences=3)
    with pytest.raises(ConfigError, match="num_beams"):
        list(model.stream("the", num_beams=2))
    with pytest.raises(ConfigError, match="num_beams"):
        model.generate("the", num_beams=0)


# ----- learning -----------------------------------------------------------------------------------------------------
def test_seq2seq_learns_to_reverse() -> None:
    data = _reverse_data()
    torch.manual_seed(0)
    model = build_model("seq2seq", data.info, {"layers": 1, "heads": 2, "width": 32, "lr": 1e-2},
                        tokenizer=data.tokenizer)
    optim = Optimizers(model.configure_optimizers(), grad_clip=1.0)
    for step in range(250):
        model.training_step(data.batch_at(step, 64, seed=0), step, optim)
    model.eval()
    with torch.no_grad():
        metrics = model.task_metrics(data.examples("test"), torch.Generator())
    assert metrics["exact_match_accuracy"] >= 0.9 and metrics["char_error_rate"] < 0.03, metrics
    assert model.generate("abc") == "cba" and model.generate("abc", num_beams=3) == "cba"


def test_validation_loss_is_the_conditional_nll_per_target_token(data: object) -> None:
    model = _model(data)
    test = data.examples("test")[:32]
    with torch.no_grad():
        val = model.validation_step(test, torch.Generator())
    nll = model.task_metrics(test, torch.Generator())["conditional_nll_per_token"]
    assert val["val_loss"] == pytest.approx(nll, rel=1e-5)
    assert val["bits_per_token"] == pytest.approx(nll / 0.6931471805599453, rel=1e-5)


def test_train_and_eval_record_the_task_metrics_apart_from_likelihoods(data: object, tmp_path: Path) -> None:
    import genzoo
    from conftest import FAST

    run = genzoo.train("seq2seq", data, steps=2, out=tmp_path / "run", overrides=dict(SMALL), **FAST)
    result = genzoo.evaluate(run, data=data, report=False)
    row = result["rows"]["model"]
    assert row["likelihood"] is None and row["cost"]["samples_per_s"] is None  # nothing unconditional
    assert set(row["task"]) == {"exact_match_accuracy", "char_error_rate", "conditional_nll_per_token"}
    assert result["protocol"]["n_test"] == 200
    loaded = genzoo.load(run)
    assert loaded.tokenizer.sha256 == data.tokenizer.sha256 and loaded.pairs == data.info.extra["pairs"]


class _Markov(torch.nn.Module):
    """A hand-set bigram model over a, b and </s> (ids 0, 1, 2; 3 starts): next-token probabilities per last token."""

    eos_ids, vocab_out, device = frozenset({2}), 3, torch.device("cpu")
    NEXT = torch.tensor([[0.36, 0.33, 0.31], [0.4, 0.3, 0.3], [1 / 3, 1 / 3, 1 / 3], [0.55, 0.0, 0.45]]).log()

    def prefill(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.NEXT[ids[:, -1]], ids[:, -1]

    def extend(self, token: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.NEXT[token], token


def test_an_end_of_sequence_outside_the_best_beams_does_not_finish_an_answer() -> None:
    """By hand: "a" (0.55) beats "</s>" (0.45), then "aa" has per-token log-prob (ln .55 + ln .36) / 2 = -0.810.
    With one beam "</s>" ranks second and is dropped (as in Hugging Face), so the answer is greedy's "aa"; with two
    it finishes with ln .45 = -0.799 and wins over "aa" and "ab" (-0.853); "a</s>" ranks third and is dropped."""
    model = _Markov()
    one = beam_search(model, [3], generation_config(num_beams=1, max_new_tokens=2))
    assert one == [([0, 0], pytest.approx((torch.tensor(0.55).log() + torch.tensor(0.36).log()).item() / 2))]
    assert one[0][0] == _greedy(model, [3], 2)
    two = beam_search(model, [3], generation_config(num_beams=2, max_new_tokens=2, num_return_sequences=2))
    assert [b for b, _ in two] == [[], [0, 0], [0, 1]]
    assert two[0][1] == pytest.approx(torch.tensor(0.45).log().item())
