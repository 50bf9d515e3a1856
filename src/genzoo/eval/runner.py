"""``genzoo.evaluate``: sample from a model, score it against real data, and write ``eval.json`` plus a report.

Protocol (fixed, recorded in every result): the *real* set is a fixed subset of the training split (at most
``n_real_max``); the model draws ``n`` samples (default: as many as there are held-out examples, at most ``n_max``)
with ``seed``; the *reference* row scores the held-out examples (validation + test split, the first ``n``) against
the same real set, i.e. what a perfect model would get. Memorization compares nearest-training distances of
samples with those of the held-out examples. Likelihoods are computed on the test split. Language models on
token data get loss, perplexity and bits per token/char/byte on the test split and generation speed instead of
sample-based scores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from genzoo._version import __version__
from genzoo.contract import Batch, Capability, DataKind, GenerativeModel, LogLikelihood
from genzoo.data import pair_datasets
from genzoo.data.base import Dataset
from genzoo.data.hygiene import leak_report
from genzoo.data.specs import DataOptions, load_dataset
from genzoo.errors import GenzooError
from genzoo.eval.features import feature_space
from genzoo.eval.protocol import PROTOCOL, Protocol, reference_warning, score_features, split_finite
from genzoo.io import write_json
from genzoo.metrics import dequantize, likelihood_summary, memorization, modes_hit, to_discrete
from genzoo.metrics.text import generation_speed, text_metrics
from genzoo.runs import RunDir, load, pretrained_class
from genzoo.tokenizer import is_named_tokenizer

#: seed of the fixed real subset (independent of the evaluation seed, so every run meets the same real set)
REAL_SEED = 20260303


def _resolve(run_or_model: str | Path | GenerativeModel, data: str | Dataset | None
             ) -> tuple[GenerativeModel, Path | None, dict[str, Any] | None, Dataset]:
    run, config = None, None
    if isinstance(run_or_model, GenerativeModel):
        model = run_or_model
    elif pretrained_class(run_or_model) is not None:  # a pretrained source (hf:NAME): no data of its own
        model = load(run_or_model)
    else:
        run = Path(run_or_model)
        config = RunDir(run).config
        model = load(run)
    if isinstance(data, Dataset):
        dataset = data
    else:
        own = config["data"]["spec"] if config else model.data.spec if run_or_model is model else None
        spec = data or own
        if not spec:
            raise GenzooError(f"'{model.name}' does not record the data it was trained on: name the data to score "
                              "it on (data='text:FILE', --data on the command line)")
        wanted = type(model).data_options(model.config)  # e.g. a captioner's captions as tokens, as in training
        options = (_with_model_tokenizer(model, run) if model.data.kind is DataKind.TOKENS
                   else DataOptions(**wanted) if wanted else None)
        image_size = (config or {}).get("data", {}).get("image_size")
        dataset = load_dataset(spec, image_size=image_size, options=options)
        spec_b = ((config or {}).get("data", {}).get("data_b") or {}).get("spec")
        if spec_b and not data:  # a two-domain run: its second dataset too
            dataset = pair_datasets(dataset, load_dataset(spec_b, image_size=image_size))
    if tuple(dataset.info.shape) != tuple(model.data.shape):
        raise GenzooError(f"model '{model.name}' makes examples of shape {tuple(model.data.shape)} but data "
                          f"'{dataset.info.spec}' has shape {tuple(dataset.info.shape)}")
    if model.data.kind is DataKind.TOKENS and dataset.info.levels != model.data.levels:
        raise GenzooError(f"data '{dataset.info.spec}' has a vocabulary of {dataset.info.levels} tokens but model "
                          f"'{model.name}' has {model.data.levels}: read it with the model's tokenizer")
    return model, run, config, dataset


def _with_model_tokenizer(model: GenerativeModel, run: Path | None) -> DataOptions:
    """Text is read with the model's own tokenizer and context, so that token ids mean the same: the
    :class:`~genzoo.data.specs.DataOptions` to load it with, as defaults (the spec's own ``#options`` still win).
    A run's tokenizer is its ``tokenizer.json``."""
    source = (model.data.extra.get("tokenizer") or {}).get("source", "")
    tokenizer = str(run) if run is not None else source if is_named_tokenizer(source) else None
    text = {"context": model.data.shape[0]} | ({"tokenizer": tokenizer} if tokenizer else {})
    return DataOptions(**text)


def draw_samples(model: GenerativeModel, n: int, seed: int, batch: int, labels: Tensor | None,
                 **options: Any) -> tuple[Tensor, float]:
    """``n`` samples in batches from one generator seeded with ``seed``, and the samples per second."""
    generator = torch.Generator().manual_seed(seed)
    start, parts = time.perf_counter(), []
    for i in range(0, n, batch):
        chunk = None if labels is None else labels[i : i + batch]
        parts.append(model.sample(min(batch, n - i), generator=generator, labels=chunk, **options).cpu())
    if not parts:  # a model that draws no samples
        return torch.empty(0, *model.data.shape), 0.0
    return torch.cat(parts).float(), n / max(time.perf_counter() - start, 1e-9)


def model_likelihood(model: GenerativeModel, test: Batch, seed: int, batch: int = 256) -> dict[str, Any] | None:
    """NLL on ``test`` in the one convention of :mod:`genzoo.metrics.likelihood`, or None without a likelihood."""
    if not {Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND} & model.capabilities:
        return None
    info = model.data
    generator = torch.Generator().manual_seed(seed)
    # log p(x), not log p(x | y): labels only for models that cannot do without them
    labels = test.y if Capability.SAMPLE not in model.capabilities else None
    with torch.no_grad():
        probe = model.log_likelihood(test.x[:batch].to(model.device), None if labels is None else labels[:batch])
        dequantized = not probe.discrete and info.levels is not None and info.kind is DataKind.IMAGE
        parts: list[LogLikelihood] = []
        for i in range(0, len(test), batch):
            x = test.x[i : i + batch]
            if dequantized:
                x = dequantize(x, info.levels, generator)
            elif i == 0:  # the probe already scored the first batch as it is
                parts.append(probe)
                continue
            y = None if labels is None else labels[i : i + batch].to(model.device)
            parts.append(model.log_likelihood(x.to(model.device), y))
    ll = LogLikelihood(torch.cat([p.values.cpu() for p in parts]), probe.kind, probe.discrete, probe.method)
    ll = to_discrete(ll, info.dims, info.levels if info.kind is DataKind.IMAGE else None, dequantized)
    return likelihood_summary(ll, info.dims)


def _training_throughput(run: Path | None, config: dict[str, Any] | None) -> dict[str, float | None]:
    if run is None:
        return {"train_steps_per_s": None, "train_examples_per_s": None}
    rates = [r["steps_per_s"] for r in RunDir(run).metrics() if r.get("split") == "train" and "steps_per_s" in r]
    steps_per_s = rates[-1] if rates else None
    batch = (config or {}).get("train", {}).get("batch_size")
    return {"train_steps_per_s": steps_per_s,
            "train_examples_per_s": steps_per_s * batch if steps_per_s and batch else None}


def evaluate(run_or_model: str | Path | GenerativeModel, *, n: int | None = None, seed: int = 0,
             data: str | Dataset | None = None, out: str | Path | None = None, report: bool = True,
             protocol: Protocol = PROTOCOL, sample_options: dict[str, Any] | None = None,
             progress: bool = False) -> dict[str, Any]:
    """Evaluate a run directory (or a model) and return the result; see the module docstring for the protocol.

    ``sample_options`` go to ``model.sample`` (e.g. ``{"steps": 50}`` for a diffusion sampler) and are recorded.

    For a run directory the result is written to ``<run>/eval.json`` and the report to ``<run>/eval/``; for a
    model, only when ``out`` names a folder. Samples with NaN/Inf values are dropped and counted. ``progress``
    shows the stage under way and the time spent (slow samplers and likelihood bounds take minutes).
    """
    with Stages(progress) as stage:
        return _evaluate(run_or_model, n=n, seed=seed, data=data, out=out, report=report, protocol=protocol,
                         sample_options=sample_options, stage=stage)


class Stages:
    """A transient progress line: which stage of the evaluation is under way, how many are done, elapsed time."""

    TOTAL = 5  # load, sample, score, likelihood, write

    def __init__(self, enabled: bool) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.progress = Progress(SpinnerColumn(), TextColumn("[bold]eval[/] {task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), transient=True, disable=not enabled)
        self.task = self.progress.add_task("loading", total=self.TOTAL)
        self.done = -1

    def __enter__(self) -> Stages:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, description: str) -> None:
        """Mark the previous stage done and show ``description`` as the current one."""
        self.done += 1
        self.progress.update(self.task, completed=self.done, description=description)


def _evaluate(run_or_model: str | Path | GenerativeModel, *, n: int | None, seed: int, data: str | Dataset | None,
              out: str | Path | None, report: bool, protocol: Protocol, sample_options: dict[str, Any] | None,
              stage: Stages) -> dict[str, Any]:
    started = time.perf_counter()
    stage("loading the model and data")
    if n is not None and n < 1:  # checked before loading anything; None (not 0) asks for the default
        raise GenzooError(f"the number of samples n (--n) must be at least 1, got {n}; leave it out for the default")
    model, run, config, dataset = _resolve(run_or_model, data)
    info = dataset.info
    model.eval()
    train, held, test = dataset.examples("train"), dataset.examples("val", "test"), dataset.examples("test")
    n = min(protocol.n_max, len(held)) if n is None else n
    labels = None
    if Capability.SAMPLE not in model.capabilities and Capability.CONDITIONAL_SAMPLE in model.capabilities:
        # a model that only samples given a class gets labels in the training split's proportions
        pick = torch.randint(len(train), (n,), generator=torch.Generator().manual_seed(seed))
        labels = train.y[pick]
    samples_at_all = bool({Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE} & model.capabilities)
    scored = samples_at_all and info.kind in (DataKind.IMAGE, DataKind.VECTOR)
    # token data has no sample-based metrics yet: draw a few sequences only, to time sampling; a model that only
    # maps inputs to outputs (seq2seq) draws none
    options = dict(sample_options or {})
    drawn = n if scored else min(n, 8) if samples_at_all else 0
    stage(f"drawing {drawn} samples")
    samples, samples_per_s = draw_samples(model, drawn, seed, protocol.sample_batch, labels, **options)
    samples, nonfinite = split_finite(samples)
    if scored and nonfinite and len(samples) < protocol.min_examples:
        raise GenzooError(f"{nonfinite} of {n} samples have NaN/Inf values; only {len(samples)} finite samples are "
                          f"left and the metrics need at least {protocol.min_examples}")
    cost = {"parameters": model.num_parameters(),
            "nfe_per_sample": model.cost(**options).nfe_per_sample if samples_at_all else None,
            "samples_per_s": samples_per_s if drawn else None, **_training_throughput(run, config)}

    rows: dict[str, dict[str, Any]] = {"reference": {}, "model": {}}
    space, offenders = None, None
    stage("scoring against real data")
    if scored:
        space = feature_space(dataset)
        train_f = space.features(train.x)
        perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(REAL_SEED))[: protocol.n_real_max]
        real_f, held_f = train_f[perm], space.features(held.x)
        modes = dataset.reference.modes() if dataset.reference is not None else None
        for name, x in (("reference", held.x[:n]), ("model", samples)):
            feats = held_f[:n] if name == "reference" else space.features(x)
            row = score_features(real_f, feats, space, seed=seed, protocol=protocol, class_reference=train.y,
                                 num_classes=info.num_classes)
            mem = memorization(train_f, feats, held_f)
            row["memorization"] = mem.summary()
            if modes is not None:
                row["modes"] = modes_hit(x, *modes)
            rows[name] = row
        worst = mem.worst(8)  # the model row's: samples nearest to a training example, and those examples
        offenders = (samples[worst], train.x[mem.neighbours[worst]])
    rows["model"]["nonfinite_samples"] = nonfinite
    stage("likelihood of the test split")
    rows["model"]["likelihood"] = model_likelihood(model, test[: protocol.likelihood_max], seed)
    rows["reference"]["likelihood"] = _true_likelihood(dataset, test[: protocol.likelihood_max])
    rows["model"]["cost"] = cost
    if info.kind is DataKind.TOKENS and Capability.GENERATE_TEXT in model.capabilities:
        rows["model"]["text"] = language_metrics(model, dataset, protocol)
    with torch.no_grad():
        task = model.task_metrics(test[: protocol.likelihood_max].to(model.device),
                                  torch.Generator().manual_seed(seed))
    if task:
        rows["model"]["task"] = task
    warning = reference_warning(min(n, len(held)), n) if scored else None
    leak = leak_report(dataset)  # test examples that repeat training ones inflate every test metric

    result: dict[str, Any] = {
        "genzoo_version": __version__,
        "run": None if run is None else str(run),
        "model": model.name,
        "family": model.family,
        "checkpoint": model.provenance,
        "data": {"spec": info.spec, "kind": info.kind.value, "shape": list(info.shape), "levels": info.levels,
                 "leak": leak.to_json()},
        "protocol": {**protocol.to_json(), "n": n, "seed": seed, "sample_options": options,
                     "n_real": min(len(train), protocol.n_real_max), "n_heldout": len(held),
                     "n_test": min(len(test), protocol.likelihood_max),
                     "feature_space": None if space is None else space.describe()},
        "rows": rows,
        "warnings": [w for w in (warning, leak.warning()) if w],
        "seconds": round(time.perf_counter() - started, 2),
    }
    folder = Path(out) if out is not None else run
    stage("writing eval.json and the report")
    if folder is not None:
        write_json(folder / "eval.json", result)
        if report:
            from genzoo.eval.report import write_report

            write_report(folder / "eval", result, samples if scored else samples[:0], offenders)
    return result


def language_metrics(model: GenerativeModel, dataset: Dataset, protocol: Protocol = PROTOCOL) -> dict[str, float]:
    """Held-out loss, perplexity, bits per token/char/byte on the test split (models with an exact likelihood),
    and generation tokens/s for one sequence of up to a context window with and without the KV cache (models that
    decode left to right: ``prefill``/``extend``); see :mod:`genzoo.metrics.text`."""
    exact = Capability.EXACT_LIKELIHOOD in model.capabilities
    out = text_metrics(model, dataset, "test", limit=protocol.likelihood_max) if exact else {}
    if not hasattr(model, "extend"):
        return out
    new_tokens = min(128, dataset.info.shape[0])
    for use_cache in (True, False):
        key = "gen_tokens_per_s_" + ("cache" if use_cache else "no_cache")
        out[key] = generation_speed(model, new_tokens, use_cache=use_cache, seed=0)
    return out


def _true_likelihood(dataset: Dataset, test: Batch) -> dict[str, Any] | None:
    """Exact NLL of the true density on the test split when the dataset knows it (toy densities)."""
    if dataset.reference is None:
        return None
    ll = LogLikelihood(dataset.reference.log_prob(test.x), "exact", False, "true density")
    return likelihood_summary(ll, dataset.info.dims)
