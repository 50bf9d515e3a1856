"""Serving, issue 17's last parts: per-token log-probabilities (library and OpenAI formats), per-request timeouts and
cascades (signals, calibration, escalation on low confidence, constraint or verifier failure; text and images)."""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

import genzoo
from genzoo.errors import ConfigError
from genzoo.generation import TokenLogprob
from genzoo.serve import ModelRegistry, ServeSettings, create_app
from genzoo.serve.cascade import CascadeConfig, calibrate, image_confidence, request_flops, text_confidence
from genzoo.serve.deadline import Deadline, RequestTimeoutError
from test_serve import _error, _events, runs  # noqa: F401  (the session's tiny runs)

PROMPTS = ["the cat", "the dog", "a bird", "the mat"]


@pytest.fixture(scope="module")
def big(runs: Path) -> genzoo.GenerativeModel:  # noqa: F811
    """An untrained, larger gpt with the small one's tokenizer: less confident than the trained small one."""
    torch.manual_seed(0)
    return genzoo.create("gpt", genzoo.load(runs / "gpt").data.spec, layers=2, width=48, heads=2)


@pytest.fixture(scope="module")
def served(runs: Path, big: genzoo.GenerativeModel, tmp_path_factory: pytest.TempPathFactory  # noqa: F811
           ) -> TestClient:
    registry = ModelRegistry.from_sources([f"small={runs / 'gpt'}", str(runs / "made"), str(runs / "vae"),
                                           str(runs / "dcgan")])
    registry.add("big", big)
    prompts = tmp_path_factory.mktemp("calib") / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    options = {"max_new_tokens": 6, "seed": 0}
    cascades = [
        {"name": "sure", "steps": [{"model": "small", "threshold": -1e9}, {"model": "big"}]},
        {"name": "unsure", "steps": [{"model": "small", "threshold": 1e9}, {"model": "big"}]},
        {"name": "half", "calibration_prompts": str(prompts), "calibration_options": options,
         "steps": [{"model": "small", "signal": "min_logprob", "target_escalation": 0.5}, {"model": "big"}]},
        {"name": "checked", "steps": [{"model": "small", "threshold": -1e9, "verify": "python"},
                                      {"model": "big"}]},
        {"name": "pictures", "calibration_samples": 8,
         "steps": [{"model": "made", "signal": "likelihood", "target_escalation": 0.5}, {"model": "vae"}]},
    ]
    settings = ServeSettings(cascades=cascades, store=f"sqlite:///{tmp_path_factory.mktemp('db') / 'r.db'}")
    return TestClient(create_app(registry, settings), raise_server_exceptions=False)


def _model(client: TestClient, name: str) -> genzoo.GenerativeModel:
    return client.app.state.registry.model(name)


def _teacher_forced(model: genzoo.GenerativeModel, prompt: list[int], tokens: list[int]) -> tuple[list[float],
                                                                                                   list[float]]:
    """log p(token_t | prompt, tokens_<t) and the entropy of each step, from one forward pass over the sequence."""
    ids = torch.tensor([prompt + tokens])
    with torch.no_grad():
        logp = model.eval()(ids)[0, len(prompt) - 1 : -1].log_softmax(-1)
    chosen = logp.gather(1, torch.tensor(tokens)[:, None]).squeeze(1)
    return chosen.tolist(), (-(logp.exp() * logp).sum(-1)).tolist()


# ----- log-probabilities --------------------------------------------------------------------------------------------
def test_logprobs_are_the_model_s_teacher_forced_log_likelihood(served: TestClient) -> None:
    model = _model(served, "small")
    # temperature and top-k change what is drawn, never the log-probabilities reported (the model's own)
    result = model.generate("the cat", max_new_tokens=12, temperature=0.7, top_k=5, seed=3, return_details=True)
    tokens = [r.token for r in result.logprobs]
    assert len(tokens) == 12 and model.decode_tokens(tokens) == result.text
    logprobs, entropies = _teacher_forced(model, model.prompt_ids("the cat"), tokens)
    assert [r.logprob for r in result.logprobs] == pytest.approx(logprobs, abs=1e-5)
    assert [r.entropy for r in result.logprobs] == pytest.approx(entropies, abs=1e-5)
    assert result.mean_logprob == pytest.approx(sum(logprobs) / 12, abs=1e-5)
    body = {"model": "small", "prompt": "the cat", "max_tokens": 12, "temperature": 0.7, "top_k": 5, "seed": 3,
            "logprobs": 3}
    choice = served.post("/v1/completions", json=body).json()["choices"][0]
    listed = choice["logprobs"]
    assert choice["text"] == result.text and "".join(listed["tokens"]) == result.text
    assert listed["token_logprobs"] == pytest.approx(logprobs, abs=1e-5)
    assert listed["text_offset"] == list(range(12))  # one character per token
    for token, logprob, top in zip(listed["tokens"], listed["token_logprobs"], listed["top_logprobs"], strict=True):
        values = list(top.values())
        assert len(top) == 3 and values == sorted(values, reverse=True)
        assert (token in top) == (logprob >= values[-1])  # the chosen token is listed exactly when it is in the top 3
        if token in top:
            assert top[token] == pytest.approx(logprob, abs=1e-6)
    # constrained: still the model's own log-probabilities, not those renormalised over the allowed tokens
    body = {"model": "small", "prompt": "the ", "max_tokens": 12, "choice": ["cat sat", "dog ran"], "logprobs": 0}
    constrained = served.post("/v1/completions", json=body).json()["choices"][0]
    ids = [model.tokenizer.encode(t)[0] for t in constrained["logprobs"]["tokens"]]
    assert constrained["text"] in ("cat sat", "dog ran") and len(ids) == 7
    expected, _ = _teacher_forced(model, model.prompt_ids("the "), ids)
    assert constrained["logprobs"]["token_logprobs"] == pytest.approx(expected, abs=1e-5)


def test_chat_and_streamed_logprobs_cover_exactly_the_returned_text(served: TestClient) -> None:
    chat = {"model": "small", "messages": [{"role": "user", "content": "the bird"}], "max_tokens": 8, "seed": 2,
            "logprobs": True, "top_logprobs": 2}
    whole = served.post("/v1/chat/completions", json=chat).json()["choices"][0]
    content = whole["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == whole["message"]["content"]
    assert all(c["bytes"] == list(c["token"].encode()) and len(c["top_logprobs"]) == 2 for c in content)
    streamed = _events(served.post("/v1/chat/completions", json={**chat, "stream": True}))
    assert [c for chunk in streamed for choice in chunk["choices"] if choice["logprobs"]
            for c in choice["logprobs"]["content"]] == content
    plain = served.post("/v1/chat/completions", json={**chat, "logprobs": False, "top_logprobs": None}).json()
    assert plain["choices"][0]["logprobs"] is None
    assert "logprobs: true" in _error(served.post("/v1/chat/completions", json={**chat, "logprobs": False}),
                                      400)["message"]
    # a stop string: the tokens of the stop string (held back, then cut) are not listed
    body = {"model": "small", "prompt": "the dog", "max_tokens": 10, "seed": 1, "logprobs": 0}
    free = served.post("/v1/completions", json=body).json()["choices"][0]
    stopped = served.post("/v1/completions", json={**body, "stop": free["text"][3:5]}).json()["choices"][0]
    assert stopped["text"] == free["text"][:3] and stopped["logprobs"]["tokens"] == free["logprobs"]["tokens"][:3]
    assert stopped["logprobs"]["token_logprobs"] == free["logprobs"]["token_logprobs"][:3]
    assert stopped["logprobs"]["top_logprobs"] == [{}] * 3
    chunks = _events(served.post("/v1/completions", json={**body, "stream": True, "echo": False}))
    joined = {k: [v for chunk in chunks for c in chunk["choices"] if c["logprobs"] for v in c["logprobs"][k]]
              for k in ("tokens", "token_logprobs", "text_offset")}
    assert joined == {k: free["logprobs"][k] for k in joined}


def test_token_logprobs_of_hand_made_logits() -> None:
    from genzoo.generation import token_logprobs

    logits = torch.tensor([[0.0, math.log(3.0), float("-inf")]])  # p = (1/4, 3/4, 0)
    (record,) = token_logprobs(logits, torch.tensor([0]), top=2)
    assert record.token == 0 and record.logprob == pytest.approx(math.log(0.25))
    assert record.entropy == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert [t for t, _ in record.top] == [1, 0] and record.top[0][1] == pytest.approx(math.log(0.75))


# ----- timeouts -----------------------------------------------------------------------------------------------------
def test_a_request_past_its_deadline_gets_504_is_stored_and_the_server_stays_up(served: TestClient) -> None:
    body = {"model": "small", "prompt": "the", "max_tokens": 200, "timeout": 1e-6}
    answer = served.post("/v1/completions", json=body)
    assert _error(answer, 504)["code"] == "timeout"
    events = _events(served.post("/v1/completions", json={**body, "stream": True}))
    assert events[-1]["error"]["code"] == "timeout"  # an error event, then [DONE] (checked by _events)
    assert _error(served.post("/v1/images/generations", json={"model": "vae", "timeout": 1e-6}), 504)
    statuses = [(r["endpoint"], r["status"]) for r in served.app.state.store.recent(3)]
    assert statuses == [("images", 504), ("completions", 504), ("completions", 504)]
    assert served.post("/v1/completions", json={**body, "timeout": 60}).status_code == 200  # lock released


def test_the_server_timeout_caps_a_request_s_own(runs: Path) -> None:  # noqa: F811
    client = TestClient(create_app(ModelRegistry.from_sources([str(runs / "vae")]),
                                   ServeSettings(request_timeout=1e-6)), raise_server_exceptions=False)
    assert "1e-06 s" in _error(client.post("/v1/images/generations", json={"model": "vae", "timeout": 100}),
                               504)["message"]


def test_generation_stops_at_the_first_token_past_the_deadline(served: TestClient) -> None:
    from genzoo.serve.text import TextJob

    clock = iter(range(100))  # one second passes per look at the clock
    deadline = Deadline(5.5, clock=lambda: next(clock))  # created at 0: the token checked at 6 is too late
    entry = served.app.state.registry.models["small"]
    model = entry.get()
    job = TextJob({"max_new_tokens": 50}, None, None, deadline, model.prompt_ids)
    steps = job.steps(entry, model, model.prompt_ids("the"))
    done = []
    with pytest.raises(RequestTimeoutError):
        for step in steps:
            done.append(step)
    assert len(done) == 5 and done[-1].tokens == [5]
    assert entry.lock.acquire(blocking=False)  # the model is free for the next request
    entry.lock.release()


def test_sampling_checks_the_deadline_before_every_network_call() -> None:
    calls = []
    net = torch.nn.Sequential(torch.nn.Linear(2, 2))
    net.register_forward_hook(lambda *_: calls.append(1))
    clock = iter(range(100))
    deadline = Deadline(3.5, clock=lambda: next(clock))
    with pytest.raises(RequestTimeoutError), deadline.watching(net):
        for _ in range(10):
            net(torch.zeros(1, 2))
    # the clock reads 1 on entering, 2 and 3 before the model and its one layer run (the first call), 4 > 3.5 before
    # the second call: it never runs
    assert len(calls) == 1
    assert not net._forward_pre_hooks  # hooks removed


# ----- cascades -----------------------------------------------------------------------------------------------------
def test_calibration_escalates_the_target_fraction_of_held_out_values() -> None:
    values = [float(v) for v in range(100)]
    for rate in (0.1, 0.3, 0.5):
        threshold = calibrate(values, rate)
        assert sum(v < threshold for v in values) == round(100 * rate)
    with pytest.raises(ConfigError, match="fraction"):
        calibrate(values, 1.0)


def test_text_signals_of_hand_made_records() -> None:
    records = [TokenLogprob(0, -0.5, 1.0), TokenLogprob(1, -2.0, 0.2), TokenLogprob(2, -0.5, 0.3)]
    assert text_confidence("mean_logprob", records) == pytest.approx(-1.0)
    assert text_confidence("min_logprob", records) == -2.0
    assert text_confidence("neg_entropy", records) == pytest.approx(-0.5)
    assert text_confidence("mean_logprob", []) == 0.0


def test_a_confident_small_model_answers_and_an_unsure_one_escalates(served: TestClient) -> None:
    body = {"prompt": "the cat", "max_tokens": 6, "seed": 0}
    small, big = _model(served, "small"), _model(served, "big")
    sure = served.post("/v1/completions", json={"model": "sure", **body}).json()
    expected = small.generate("the cat", max_new_tokens=6, seed=0, return_details=True)
    assert sure["model"] == "sure" and sure["answered_by"] == "small"
    assert sure["choices"][0]["text"] == expected.text
    (only,) = sure["escalations"]
    assert only["escalated"] is False and only["value"] == pytest.approx(expected.mean_logprob, abs=1e-5)
    prompt_tokens = len(small.prompt_ids("the cat"))
    assert only["flops"] == 2 * sum(p.numel() for p in small.parameters()) * (prompt_tokens + 6)
    assert sure["cost"]["last_model_flops"] == request_flops(big, prompt_tokens + 6)
    assert sure["cost"]["flops_saved"] == pytest.approx(sure["cost"]["last_model_flops"] - only["flops"])
    unsure = served.post("/v1/completions", json={"model": "unsure", **body}).json()
    assert unsure["answered_by"] == "big" and unsure["choices"][0]["text"] == big.generate("the cat",
                                                                                          max_new_tokens=6, seed=0)
    assert [(e["model"], e["escalated"], e["reason"]) for e in unsure["escalations"]] == [
        ("small", True, "low_confidence"), ("big", False, None)]
    assert unsure["cost"]["flops"] == pytest.approx(sum(e["flops"] for e in unsure["escalations"]))
    assert unsure["cost"]["flops_saved"] < 0  # the small attempt was wasted
    streamed = _events(served.post("/v1/completions", json={"model": "unsure", **body, "stream": True}))
    assert "".join(c["text"] for chunk in streamed for c in chunk["choices"]) == unsure["choices"][0]["text"]
    assert streamed[0]["escalations"] == unsure["escalations"]
    assert all(chunk["answered_by"] == "big" and chunk["model"] == "unsure" for chunk in streamed)
    chat = served.post("/v1/chat/completions", json={"model": "unsure", "max_tokens": 3,
                                                     "messages": [{"role": "user", "content": "hi"}]}).json()
    assert chat["answered_by"] == "big" and chat["model"] == "unsure"


def test_calibrated_threshold_escalates_half_the_held_out_prompts(served: TestClient) -> None:
    small = _model(served, "small")
    values = [min(r.logprob for r in small.generate(p, max_new_tokens=6, seed=0, return_details=True).logprobs)
              for p in PROMPTS]
    answered = [served.post("/v1/completions", json={"model": "half", "prompt": p, "max_tokens": 6}).json()
                for p in PROMPTS]
    threshold = answered[0]["escalations"][0]["threshold"]
    assert threshold == pytest.approx(calibrate(values, 0.5), abs=1e-5)
    assert sorted(a["answered_by"] for a in answered) == ["big", "big", "small", "small"]
    assert [a["answered_by"] == "big" for a in answered] == [v < threshold for v in values]


def test_constraint_and_verifier_failures_escalate(served: TestClient) -> None:
    checked = served.post("/v1/completions", json={"model": "checked", "prompt": "the ", "max_tokens": 12,
                                                   "choice": ["cat sat", "dog ran"]}).json()  # not Python
    assert checked["answered_by"] == "big" and checked["choices"][0]["text"] in ("cat sat", "dog ran")
    assert [(e["escalated"], e["reason"]) for e in checked["escalations"]] == [(True, "verify"), (False, None)]
    unfinished = served.post("/v1/completions", json={"model": "sure", "prompt": "the ", "max_tokens": 2,
                                                      "regex": "(cat|dog) (sat|ran)"}).json()
    assert unfinished["answered_by"] == "big"
    assert [e["reason"] for e in unfinished["escalations"]] == ["constraint", "constraint"]
    finished = served.post("/v1/completions", json={"model": "sure", "prompt": "the ", "max_tokens": 12,
                                                    "regex": "(cat|dog) (sat|ran)"}).json()
    assert finished["answered_by"] == "small"
    assert "one completion" in _error(served.post("/v1/completions", json={"model": "sure", "prompt": "x",
                                                                           "n": 2}), 400)["message"]


def test_image_cascades_redraw_the_unlikely_images_with_the_next_model(served: TestClient) -> None:
    answer = served.post("/v1/images/generations", json={"model": "pictures", "n": 6, "seed": 4})
    assert answer.status_code == 200, answer.text
    about = answer.json()["genzoo"]
    made, vae = _model(served, "made"), _model(served, "vae")
    threshold = about["escalations"][0]["threshold"]  # the median log p(x) of 8 of made's own samples
    assert threshold == pytest.approx(calibrate((-made.score(made.sample(8, seed=0))).tolist(), 0.5), rel=1e-6)
    first = made.sample(6, seed=4)
    low = (-made.score(first) < threshold).tolist()
    assert 0 < sum(low) < 6  # some images kept, some redrawn
    assert about["model"] == "pictures" and about["answered_by"] == ["vae" if b else "made" for b in low]
    assert about["escalations"][0]["values"] == pytest.approx((-made.score(first)).tolist(), rel=1e-5)
    assert about["escalations"][0]["escalated"] == sum(low)
    redrawn = vae.sample(sum(low), seed=4)
    import base64
    import io

    import numpy as np
    from PIL import Image

    pixels = [np.asarray(Image.open(io.BytesIO(base64.b64decode(d["b64_json"])))) for d in answer.json()["data"]]
    expected = iter(redrawn)
    for got, escalated, original in zip(pixels, low, first, strict=True):
        image = next(expected) if escalated else original
        assert np.array_equal(got, (image[0].numpy() * 255).round().astype(np.uint8))


def test_the_discriminator_signal_is_the_critic_s_logit(served: TestClient) -> None:
    dcgan = _model(served, "dcgan")
    x = dcgan.sample(3, seed=0)
    with torch.no_grad():
        expected = dcgan.eval().discriminator(dcgan.preprocess(x)).reshape(3, -1).mean(1)
    assert image_confidence("discriminator", dcgan, x).tolist() == pytest.approx(expected.tolist(), abs=1e-6)
    with pytest.raises(ConfigError, match="no discriminator"):
        image_confidence("discriminator", _model(served, "vae"), x)


def test_cascades_are_listed_and_misconfigured_ones_refused(served: TestClient, runs: Path) -> None:  # noqa: F811
    listed = {m["id"]: m for m in served.get("/v1/models").json()["data"]}
    assert listed["sure"]["cascade"] == [{"model": "small", "signal": "mean_logprob"},
                                         {"model": "big", "signal": "mean_logprob"}]
    assert "generate_text" in listed["sure"]["capabilities"]
    registry = ModelRegistry.from_sources([str(runs / "gpt")])
    with pytest.raises(ConfigError, match="not served: ghost"):
        registry.add_cascade(CascadeConfig(name="c", steps=[{"model": "gpt", "threshold": 0}, {"model": "ghost"}]))
    with pytest.raises(ConfigError, match="name of another"):
        registry.add_cascade(CascadeConfig(name="gpt", steps=[{"model": "gpt", "threshold": 0}, {"model": "gpt"}]))
    with pytest.raises(ValueError, match="needs a threshold"):
        CascadeConfig(name="c", steps=[{"model": "gpt"}, {"model": "gpt"}])
    with pytest.raises(ValueError, match="finite"):
        CascadeConfig(name="c", steps=[{"model": "gpt", "threshold": math.inf}, {"model": "gpt"}])
    with pytest.raises(ValueError, match="unknown signal"):
        CascadeConfig(name="c", steps=[{"model": "gpt", "signal": "vibes", "threshold": 0}, {"model": "gpt"}])


def test_serve_calibrate_prints_the_thresholds_of_a_config(runs: Path, tmp_path: Path) -> None:  # noqa: F811
    from typer.testing import CliRunner

    from genzoo.cli.app import app

    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS))
    config = {"models": [f"small={runs / 'gpt'}", f"large={runs / 'gpt'}"],
              "cascades": [{"name": "c", "calibration_prompts": str(tmp_path / "prompts.txt"),
                            "calibration_options": {"max_new_tokens": 6, "seed": 0},
                            "steps": [{"model": "small", "target_escalation": 0.5}, {"model": "large"}]}]}
    (tmp_path / "serve.yaml").write_text(json.dumps(config))
    done = CliRunner().invoke(app, ["serve-calibrate", str(tmp_path / "serve.yaml")])
    assert done.exit_code == 0, done.output
    small = genzoo.load(runs / "gpt")
    values = [small.generate(p, max_new_tokens=6, seed=0, return_details=True).mean_logprob for p in PROMPTS]
    printed = float(done.stdout.split("threshold: ")[1].split()[0])
    assert printed == pytest.approx(calibrate(values, 0.5), rel=1e-5)


def test_concurrent_cascade_requests_calibrate_once(served: TestClient) -> None:
    cascade = served.app.state.registry.cascades["half"]
    thresholds = []
    threads = [threading.Thread(target=lambda: thresholds.append(cascade.thresholds(served.app.state.registry)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(t is thresholds[0] for t in thresholds)
