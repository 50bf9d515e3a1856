"""``genzoo.arena``: train every applicable model on one dataset under one budget, score each with the evaluation
protocol, and say which is best for what -- only where the numbers separate them.

Fairness: every model gets the same training budget (wall-clock seconds; a quick arena trains each model for its
calibrated ``quick_steps`` with the budget as a cap), the same data object (so the same splits), the same seeds,
the same device and thread count, and the same evaluation (``genzoo.evaluate`` with one sample count ``n``, one
feature network, whose hash is recorded). The classical baselines (models that declare ``fits_whole_data``) run
in every arena on image and vector data.

Noise: with ``seeds`` > 1 every model is trained and evaluated once per seed and each metric is reported as mean ±
standard error over seeds; with one seed a metric's own spread is used where evaluation gives one (KID's spread
over subsets), otherwise the result says "single seed". Two models are *distinct* on a metric when their
difference exceeds twice the standard error of the difference, sqrt(se_a^2 + se_b^2); timings also need to differ
by more than :data:`TIMING_TOLERANCE`. A ranking or recommendation names a single winner only when the winner is
distinct from every other model; otherwise the tied models are named together.

Resume: ``results.json`` is rewritten after every step of every model (trained, evaluated), so ``resume=True``
skips finished models, evaluates a trained one, and continues an interrupted training run from its last
checkpoint with the budget it has left.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import torch
from rich.table import Table

from genzoo._version import __version__
from genzoo.contract import DataKind
from genzoo.data import Dataset, load_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.eval import PROTOCOL, check_comparable, evaluate
from genzoo.eval.report import NLL_MARK
from genzoo.io import read_json, write_json
from genzoo.registry import model_class
from genzoo.runs import RunDir, load
from genzoo.selection.advise import applicable_models, not_applicable
from genzoo.training import parse_budget, train
from genzoo.training.trainer import select_device

#: relative difference below which two timings (samples/s) count as equal: timing jitters on a shared machine
TIMING_TOLERANCE = 0.25
#: standard errors of a difference that make two models distinct
Z = 2.0
#: training seconds of a quick arena for a model without calibrated ``quick_steps`` (their calibration target)
QUICK_SECONDS = 20.0


# ----- what is measured -----------------------------------------------------------------------------------------
def _get(result: dict[str, Any], *path: str) -> Any:
    row: Any = result["rows"]["model"]
    for key in path:
        if not isinstance(row, dict) or row.get(key) is None:
            return None
        row = row[key]
    return row


@dataclass(frozen=True)
class Metric:
    """One leaderboard column: how to read it from an evaluation result, which way is better, and its own spread
    from one evaluation where the protocol gives one."""

    key: str
    label: str
    path: tuple[str, ...]
    better: Literal["lower", "higher", "half", "none"]
    fmt: str = ".3f"
    spread: tuple[str, ...] | None = None
    scale: float = 1.0
    timing: bool = False

    def read(self, result: dict[str, Any]) -> float | None:
        value = _get(result, *self.path)
        return None if value is None else float(value) * self.scale

    def own_spread(self, result: dict[str, Any]) -> float | None:
        value = None if self.spread is None else _get(result, *self.spread)
        return None if value is None else float(value) * self.scale


#: every metric an arena summarises (the report's bar charts show those with a direction)
METRICS: tuple[Metric, ...] = (
    Metric("fd", "FD ↓", ("fd",), "lower"),
    Metric("kid", "KID×10³ ↓", ("kid",), "lower", ".2f", spread=("kid_std",), scale=1e3),
    Metric("mmd2", "MMD²×10³ ↓", ("mmd2",), "lower", ".2f", scale=1e3),
    Metric("precision", "precision ↑", ("precision",), "higher"),
    Metric("recall", "recall ↑", ("recall",), "higher"),
    Metric("coverage", "coverage ↑", ("coverage",), "higher"),
    Metric("c2st", "C2ST (0.5 best)", ("c2st_accuracy",), "half"),
    Metric("bits_per_dim", "bits/dim ↓", ("likelihood", "bits_per_dim"), "lower", ".4f"),
    Metric("nll", "NLL nats ↓", ("likelihood", "nll_nats"), "lower", ".3f"),
    Metric("bits_per_char", "bits/char ↓", ("text", "bits_per_char"), "lower", ".4f"),
    Metric("bits_per_token", "bits/token ↓", ("text", "bits_per_token"), "lower", ".4f"),
    Metric("copy_z", "copy z (<-3 copies)", ("memorization", "copy_z"), "none", ".2f"),
    Metric("samples_per_s", "samples/s ↑", ("cost", "samples_per_s"), "higher", ",.0f", timing=True),
    Metric("tokens_per_s", "tokens/s ↑", ("text", "gen_tokens_per_s_cache"), "higher", ",.0f", timing=True),
    Metric("parameters", "parameters", ("cost", "parameters"), "none", ",.0f"),
)
METRIC = {m.key: m for m in METRICS}

#: the terminal leaderboard's metric columns per data kind (a column shows when some model has a value)
LEADERBOARD: dict[DataKind, tuple[str, ...]] = {
    DataKind.IMAGE: ("fd", "kid", "precision", "recall", "coverage", "c2st", "bits_per_dim", "copy_z",
                     "samples_per_s", "parameters"),
    DataKind.VECTOR: ("mmd2", "fd", "precision", "recall", "coverage", "c2st", "nll", "copy_z", "samples_per_s",
                      "parameters"),
    DataKind.TOKENS: ("bits_per_char", "bits_per_token", "tokens_per_s", "samples_per_s", "parameters"),
}

#: per data kind: the metric that ranks overall quality, the one that ranks diversity, and the speed metric
GOAL_METRICS: dict[DataKind, dict[str, str]] = {
    DataKind.IMAGE: {"quality": "fd", "diversity": "recall", "likelihood": "bits_per_dim", "speed": "samples_per_s"},
    DataKind.VECTOR: {"quality": "mmd2", "diversity": "coverage", "likelihood": "nll", "speed": "samples_per_s"},
    DataKind.TOKENS: {"quality": "bits_per_char", "likelihood": "bits_per_char", "speed": "tokens_per_s"},
}


#: per data kind, a quality metric with a spread of its own, which checks the quality ranking when one seed gives
#: the main metric none
NOISE_CHECK: dict[DataKind, str] = {DataKind.IMAGE: "kid"}
#: copy z below this: samples are nearer the training set than new data is (memorization, docs/evaluation.md)
COPY_Z = -3.0


# ----- statistics over seeds -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stat:
    """A metric of one model: mean over seeds, its spread and where the spread comes from."""

    mean: float
    se: float | None
    n: int
    spread_kind: str  # "standard error over N seeds", "KID spread over subsets" or "single seed"

    def to_json(self) -> dict[str, Any]:
        return {"mean": self.mean, "se": self.se, "n": self.n, "spread": self.spread_kind}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Stat:
        return cls(raw["mean"], raw["se"], raw["n"], raw["spread"])


def summarize(values: list[float], own_spreads: list[float | None]) -> Stat:
    """Mean ± standard error over seeds (ddof 1); one seed keeps the metric's own spread, or none."""
    n = len(values)
    mean = sum(values) / n
    if n > 1:
        var = sum((v - mean) ** 2 for v in values) / (n - 1)
        return Stat(mean, math.sqrt(var / n), n, f"standard error over {n} seeds")
    if own_spreads and own_spreads[0] is not None:
        return Stat(mean, own_spreads[0], 1, "the metric's own spread (single seed)")
    return Stat(mean, None, 1, "single seed")


def distinct(a: Stat, b: Stat, timing: bool = False) -> bool | None:
    """Whether a and b differ beyond noise: True/False, or None when there is no spread to judge by."""
    if timing and abs(a.mean - b.mean) <= TIMING_TOLERANCE * max(abs(a.mean), abs(b.mean)):
        return False
    if a.se is None or b.se is None:
        return None if not timing else True
    return abs(a.mean - b.mean) > Z * math.sqrt(a.se**2 + b.se**2)


def _badness(metric: Metric, value: float) -> float:
    return {"lower": value, "higher": -value, "half": abs(value - 0.5)}[metric.better]


def leaders(stats: dict[str, Stat], metric: Metric) -> dict[str, Any] | None:
    """The best model on ``metric`` and every model within noise of it: ``{"best", "tied", "tested"}``.

    ``tested`` is False when some comparison had no spread (single seed without the metric's own spread): the
    order is then the measured one, not checked against noise."""
    if metric.better == "none" or not stats:
        return None
    order = sorted(stats, key=lambda name: (_badness(metric, stats[name].mean), name))
    best = order[0]
    verdicts = {name: distinct(stats[best], stats[name], metric.timing) for name in order[1:]}
    tied = [name for name, verdict in verdicts.items() if verdict is False]
    return {"metric": metric.key, "best": best, "order": order, "tied": tied,
            "tested": all(v is not None for v in verdicts.values())}


# ----- recommendations ---------------------------------------------------------------------------------------------
def _fmt(metric: Metric, stat: Stat) -> str:
    text = format(stat.mean, metric.fmt)
    return text + (f" ± {format(stat.se, metric.fmt)}" if stat.se is not None else "")


def recommend(summary: dict[str, dict[str, Stat]], kind: DataKind, baselines: set[str]
              ) -> tuple[list[dict[str, Any]], list[str]]:
    """One recommendation per goal, with reasons drawn from the numbers, and the notes on noise and baselines."""
    recs, notes = [], []
    for goal, key in GOAL_METRICS[kind].items():
        metric = METRIC[key]
        stats = {name: s[key] for name, s in summary.items() if key in s}
        lead = leaders(stats, metric)
        if lead is None:
            continue
        best, tied = lead["best"], lead["tied"]
        reason = f"{metric.label.split(' ')[0]} {_fmt(metric, stats[best])} ({stats[best].spread_kind})"
        if tied:
            text = f"{', '.join([best, *tied])} (within noise of each other)"
            reason += "; within noise: " + ", ".join(f"{t} {_fmt(metric, stats[t])}" for t in tied)
            notes.append(f"{goal}: {', '.join([best, *tied])} are within noise of each other on {metric.label}")
        else:
            text = best
            if len(stats) > 1:
                runner = next(name for name in lead["order"] if name != best)
                reason += f"; next: {runner} {_fmt(metric, stats[runner])}"
        if not lead["tested"]:
            reason += "; single seed: the order is not tested against noise (use --seeds 3)"
            if goal == "quality" and kind in NOISE_CHECK:
                reason += _noise_check(summary, best, METRIC[NOISE_CHECK[kind]], notes)
        copy_z = summary[best].get("copy_z")
        if goal != "speed" and copy_z is not None and copy_z.mean < COPY_Z:
            reason += f"; but its samples copy training examples (copy z {copy_z.mean:.1f} < {COPY_Z:g})"
        winners = {best, *tied}
        if winners & baselines and goal != "speed":  # a baseline is always fast: news only on quality
            verdict = "wins" if best in baselines and not tied else "ties for best"
            untested = "" if lead["tested"] else " (single seed, not tested against noise)"
            notes.append(f"{goal}: the baseline {', '.join(sorted(winners & baselines))} {verdict} on "
                         f"{metric.label}{untested}: on this data and budget a simple model is as good as the deep "
                         "ones")
        recs.append({"goal": goal, "metric": key, "recommend": text, "models": sorted(winners), "reason": reason})
    trade = pareto(summary, GOAL_METRICS[kind]["quality"], GOAL_METRICS[kind]["speed"])
    if trade:
        recs.append({"goal": "trade-off", "metric": None, "recommend": ", ".join(trade), "models": trade,
                     "reason": "no other model is both better and faster (the Pareto front of quality vs speed)"})
    return recs, notes


def _noise_check(summary: dict[str, dict[str, Stat]], best: str, check: Metric, notes: list[str]) -> str:
    """What a metric with its own spread says about ``best``: the models within its noise (a note too)."""
    lead = leaders({name: s[check.key] for name, s in summary.items() if check.key in s}, check)
    if lead is None or best not in lead["order"]:
        return ""
    group = [lead["best"], *lead["tied"]]
    if best not in group:
        return f"; on {check.label} (its own spread) {lead['best']} is ahead beyond noise"
    if len(group) == 1:
        return f"; on {check.label} (its own spread) it is ahead of every other model beyond noise"
    notes.append(f"quality: {', '.join(group)} are within noise of each other on {check.label} (its spread over "
                 "subsets)")
    return f"; on {check.label} (its own spread) it is within noise of {', '.join(g for g in group if g != best)}"


def pareto(summary: dict[str, dict[str, Stat]], quality: str, speed: str) -> list[str]:
    """Models no other model beats on both quality and sampling speed (by mean), fastest first."""
    points = {name: (_badness(METRIC[quality], m[quality].mean), _badness(METRIC[speed], m[speed].mean))
              for name, m in summary.items() if quality in m and speed in m}
    front = [a for a, pa in points.items()
             if not any(pb[0] <= pa[0] and pb[1] <= pa[1] and pb != pa for pb in points.values())]
    return sorted(front, key=lambda name: points[name][1])


# ----- the arena ---------------------------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """Where the numbers were measured."""
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available()}


def candidates(info: Any, models: list[str] | None) -> list[str]:
    """The models of an arena: the named ones (each checked to apply) or every applicable registered model; plus
    the baselines (models fitted in one call) on image and vector data."""
    if models:
        for name in models:
            why = not_applicable(info, name)
            if why:
                raise ConfigError(f"model '{name}' cannot join an arena on {info.kind.value} data: it {why}")
        chosen = list(dict.fromkeys(models))
    else:
        chosen = applicable_models(info)
    baselines = [name for name in applicable_models(info) if model_class(name).fits_whole_data]
    if info.kind is not DataKind.TOKENS:
        chosen += [name for name in baselines if name not in chosen]
    if not chosen:
        raise ConfigError(f"no registered model applies to {info.kind.value} data")
    return chosen


def trained_seconds(run: RunDir) -> float:
    """Training time a run has had, summed over its invocations (each restarts the metrics' clock and, when it
    resumes a run, starts with a ``resume`` record)."""
    total, segment, last = 0.0, 0.0, -1.0
    for record in run.metrics():
        t = float(record.get("time", 0.0))
        if record.get("split") == "resume" or t < last:  # a new invocation
            total += segment
        segment, last = t, t
    return total + segment


class Arena:
    """One arena folder: ``results.json`` (rewritten after each step), ``runs/MODEL-seedS/``, ``samples/``."""

    def __init__(self, out: Path, dataset: Dataset, log: Callable[[str], None]) -> None:
        self.out, self.dataset, self.log = out, dataset, log
        self.path = out / "results.json"
        self.results: dict[str, Any] = {}

    def save(self) -> None:
        write_json(self.path, self.results)

    def entry(self, name: str, seed: int) -> dict[str, Any]:
        return self.results["models"][name]["entries"].setdefault(str(seed), {"status": "pending"})

    def run_dir(self, name: str, seed: int) -> Path:
        return self.out / "runs" / f"{name.replace(':', '-').replace('/', '-')}-seed{seed}"

    def train(self, name: str, seed: int, progress: bool) -> None:
        """Train (or continue training) one model with the arena's budget."""
        protocol = self.results["protocol"]
        run, budget = self.run_dir(name, seed), protocol["budget_seconds"]
        steps = protocol["quick_steps"].get(name) if protocol["quick"] else None
        if protocol["quick"] and steps is None:
            budget = min(budget, QUICK_SECONDS)
        settings = {"progress": progress, "device": protocol["device"]}
        if RunDir(run).exists() and RunDir(run).has_checkpoint("last"):
            left = budget - trained_seconds(RunDir(run))
            done = RunDir(run).trainer_state("last")["step"]
            if left > 1.0 and (steps is None or done < steps):
                self.log(f"  continuing {run.name} from step {done} ({left:.0f} s of budget left)")
                train(None, self.dataset, out=run, resume=True, steps=steps, budget=left, **settings)
        else:
            if run.exists():  # interrupted before its first checkpoint: start it again
                shutil.rmtree(run)
            train(name, self.dataset, out=run, seed=seed, steps=steps, budget=budget, **settings)
        done = RunDir(run).trainer_state("last")["step"]
        if steps is not None and done < steps:
            self.log(f"  warning: {run.name} hit the {budget:g} s cap after {done} of its {steps} calibrated steps "
                     "(a busy machine?): its numbers are not the calibrated ones; raise --budget")

    def evaluate(self, name: str, seed: int, progress: bool) -> dict[str, Any]:
        """Score one trained model with the arena's protocol; draw its picture for the report."""
        run = RunDir(self.run_dir(name, seed))
        result = evaluate(run.path, n=self.results["protocol"]["n"], seed=seed, data=self.dataset, report=False,
                          progress=progress)
        model = load(run.path)
        handler = model.data.handler
        folder = self.out / "samples"
        folder.mkdir(parents=True, exist_ok=True)
        reference = next(self.dataset.batches("val", 1000)).x
        written = handler.preview(model, reference, folder / f"{run.path.name}{handler.preview_suffix}")
        return {"status": "done", "run": str(run.path.relative_to(self.out)), "eval": result,
                "steps": run.trainer_state("last")["step"], "train_seconds": round(trained_seconds(run), 2),
                "samples_file": str(written.relative_to(self.out))}


def _plan(dataset: Dataset, names: list[str], budget_s: float, quick: bool, seeds: list[int], n: int,
          device: str) -> dict[str, Any]:
    info = dataset.info
    return {
        "genzoo_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": {"spec": info.spec, "kind": info.kind.value, "shape": list(info.shape), "levels": info.levels,
                 "num_classes": info.num_classes, "n_train": dataset.size("train"), "n_val": dataset.size("val"),
                 "n_test": dataset.size("test")},
        "protocol": {"budget_seconds": budget_s, "quick": quick,
                     "quick_steps": {name: model_class(name).quick_steps for name in names}, "seeds": seeds,
                     "n": n, "device": str(select_device(device)), "threads": torch.get_num_threads(),
                     "sample_options": {},
                     "eval": PROTOCOL.to_json(), "feature_space": None},
        "machine": machine(),
        "models": {name: {"family": model_class(name).family, "baseline": model_class(name).fits_whole_data,
                          "entries": {}} for name in names},
        "finished": False,
    }


_RESUME_KEYS = ("budget_seconds", "quick", "seeds", "n", "device")


def _check_resume(saved: dict[str, Any], plan: dict[str, Any], path: Path) -> None:
    if saved["data"]["spec"] != plan["data"]["spec"]:
        raise ConfigError(f"{path}: the arena there is on data '{saved['data']['spec']}', not "
                          f"'{plan['data']['spec']}'")
    for key in _RESUME_KEYS:
        if saved["protocol"][key] != plan["protocol"][key]:
            raise ConfigError(f"{path}: --resume with {key} = {plan['protocol'][key]!r}, but the arena was started "
                              f"with {saved['protocol'][key]!r}; give the same settings or another --out")
    if list(saved["models"]) != list(plan["models"]):
        raise ConfigError(f"{path}: --resume with models {', '.join(plan['models'])}, but the arena was started "
                          f"with {', '.join(saved['models'])}")


def arena(data: str | Dataset, *, budget: str | float, models: list[str] | None = None,
          out: str | Path = "arena", seed: int = 0, seeds: int = 1, resume: bool = False, quick: bool = False,
          n: int | None = None, device: str = "auto", progress: bool = False, report: bool = True,
          log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train and evaluate every applicable model (or ``models``, plus the baselines) on ``data`` and return the
    results (also written to ``out/results.json``, with ``out/report.html``).

    ``budget`` is each model's training time; with ``quick`` a model trains for its calibrated ``quick_steps``
    and the budget is only a cap. ``seeds`` repeats each model with seeds ``seed .. seed + seeds - 1``.
    ``resume`` continues an interrupted arena in ``out``. ``n`` is the evaluation's sample count (default: the
    protocol's, the same for every model). ``log`` receives one line per step (progress per model and overall).
    """
    budget_s = parse_budget(budget)
    if budget_s is None:
        raise ConfigError("an arena needs a training budget per model, e.g. budget='60s'")
    if seeds < 1:
        raise ConfigError(f"seeds must be at least 1, got {seeds}")
    if n is not None and n < PROTOCOL.min_examples:
        raise ConfigError(f"n must be at least {PROTOCOL.min_examples} (the metrics' minimum), got {n}")
    log = log or (lambda _: None)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    names = candidates(dataset.info, models)
    n = n or min(PROTOCOL.n_max, dataset.size("val") + dataset.size("test"))
    plan = _plan(dataset, names, budget_s, quick, list(range(seed, seed + seeds)), n, device)
    out = Path(out)
    state = Arena(out, dataset, log)
    if state.path.exists():
        if not resume:
            raise ConfigError(f"{out} already holds an arena; pass --resume to continue it or choose another --out")
        state.results = read_json(state.path)
        _check_resume(state.results, plan, state.path)
    else:
        out.mkdir(parents=True, exist_ok=True)
        state.results = plan
        state.save()
    _run_all(state, names, plan["protocol"]["seeds"], progress)
    finish(state.results)
    state.save()
    if report:
        from genzoo.selection.report import write_report  # the report reads this module's tables

        write_report(out, state.results, dataset)
    return state.results


def _run_all(state: Arena, names: list[str], seeds: list[int], progress: bool) -> None:
    jobs = [(name, s) for name in names for s in seeds]
    started, worked = time.perf_counter(), 0
    for i, (name, s) in enumerate(jobs, 1):
        entry = state.entry(name, s)
        where = f"[{i}/{len(jobs)}] {name} (seed {s})"
        if entry["status"] == "done":
            state.log(f"{where}: done earlier, skipped")
            continue
        elapsed = time.perf_counter() - started
        left = f", ≈{elapsed / worked * (len(jobs) - i + 1):.0f} s left" if worked else ""
        state.log(f"{where}: {'evaluating' if entry['status'] == 'trained' else 'training'} · arena "
                  f"{elapsed:.0f} s{left}")
        if entry["status"] != "trained":
            state.train(name, s, progress)
            entry.update(status="trained", run=str(state.run_dir(name, s).relative_to(state.out)))
            state.save()
            state.log(f"{where}: evaluating")
        entry.update(state.evaluate(name, s, progress))
        state.results["protocol"]["feature_space"] = entry["eval"]["protocol"]["feature_space"]
        state.save()
        worked += 1
    state.log(f"all {len(jobs)} runs done; this session took {time.perf_counter() - started:.0f} s")


def finish(results: dict[str, Any]) -> None:
    """Add the summary over seeds, the rankings per metric, the recommendations and the notes to ``results``."""
    done = {name: [e["eval"] for e in m["entries"].values() if e.get("status") == "done"]
            for name, m in results["models"].items()}
    evals = [e for es in done.values() for e in es]
    if evals:
        check_comparable(evals)
    summary: dict[str, dict[str, Stat]] = {}
    for name, es in done.items():
        if not es:
            continue
        summary[name] = {}
        for metric in METRICS:
            values = [metric.read(e) for e in es]
            if all(v is not None and math.isfinite(v) for v in values):
                summary[name][metric.key] = summarize(values, [metric.own_spread(e) for e in es])
    kind = DataKind(results["data"]["kind"])
    baselines = {name for name, m in results["models"].items() if m["baseline"]}
    recs, notes = recommend(summary, kind, baselines)
    rankings = {}
    for metric in METRICS:
        lead = leaders({k: v[metric.key] for k, v in summary.items() if metric.key in v}, metric)
        if lead is not None:
            rankings[metric.key] = lead
    results.update(summary={name: {k: s.to_json() for k, s in stats.items()} for name, stats in summary.items()},
                   rankings=rankings, recommendations=recs, notes=notes,
                   finished=all(len(es) == len(results["protocol"]["seeds"]) for es in done.values()))


# ----- the terminal leaderboard --------------------------------------------------------------------------------------
def _cell(metric: Metric, stats: dict[str, Any], marks: dict[str, str]) -> str:
    raw = stats.get(metric.key)
    if raw is None:
        return "–"
    stat = Stat.from_json(raw)
    return marks.get(metric.key, "") + _fmt(metric, stat)


def _likelihood_marks(results: dict[str, Any], name: str) -> dict[str, str]:
    """≤/≥/≈ in front of a likelihood that is a bound or an estimate (from the first finished evaluation)."""
    for entry in results["models"][name]["entries"].values():
        kind = _get(entry["eval"], "likelihood", "kind") if entry.get("eval") else None
        if kind:
            return {"bits_per_dim": NLL_MARK[kind], "nll": NLL_MARK[kind]}
    return {}


def _steps(model: dict[str, Any]) -> str:
    steps = [e["steps"] for e in model["entries"].values() if e.get("status") == "done"]
    return "–" if not steps else f"{min(steps):,}" if min(steps) == max(steps) else f"{min(steps):,}–{max(steps):,}"


def leaderboard(results: dict[str, Any], *, by_metric: bool = False, compact: bool = False) -> Table:
    """The terminal leaderboard: one row per model (quality order) after the real-data reference row, or with
    ``by_metric`` one row per metric and one column per model (narrow terminals, few models). ``compact`` keeps
    only the goals' metrics (narrow terminals, many models: report.html has them all)."""
    summary = results.get("summary") or {}
    kind = DataKind(results["data"]["kind"])
    ranked = (results.get("rankings", {}).get(GOAL_METRICS[kind]["quality"]) or {}).get("order") or []
    order = [*ranked, *(name for name in summary if name not in ranked)]
    keys = [k for k in LEADERBOARD[kind] if not compact or k in GOAL_METRICS[kind].values()]
    shown = [METRIC[k] for k in keys if any(k in s for s in summary.values())]
    reference = _reference_row(results)
    rows = [("real data (reference)", "–", [reference.get(m.key, "–") for m in shown], "–")] if reference else []
    for name in order:
        model = results["models"][name]
        marks = _likelihood_marks(results, name)
        rows.append((name + (" (baseline)" if model["baseline"] else ""), model["family"],
                     [_cell(m, summary[name], marks) for m in shown], _steps(model)))
    seeds = results["protocol"]["seeds"]
    spread = (f"mean ± standard error over {len(seeds)} seeds" if len(seeds) > 1 else
              "single seed: ± only where the metric has its own spread (KID over subsets)")
    table = Table(title=f"genzoo arena: {results['data']['spec']}",
                  caption=f"{spread} · {_budget_text(results)} · n = {results['protocol']['n']} samples · "
                          + "; ".join(results.get("notes") or []))
    labels = ["family", *[m.label for m in shown], "steps"]
    if by_metric:
        table.add_column("metric", no_wrap=True)
        for name, *_ in rows:
            table.add_column(name, justify="right")
        for i, label in enumerate(labels):
            table.add_row(label, *[[family, *cells, steps][i] for _, family, cells, steps in rows])
        return table
    table.add_column("model", no_wrap=True)
    for label in labels:
        table.add_column(label, justify="left" if label == "family" else "right")
    for name, family, cells, steps in rows:
        table.add_row(name, family, *cells, steps)
    return table


def _budget_text(results: dict[str, Any]) -> str:
    p = results["protocol"]
    if p["quick"]:
        return f"each model trained for its quick_steps, at most {p['budget_seconds']:g} s"
    return f"{p['budget_seconds']:g} s of training per model"


def _reference_row(results: dict[str, Any]) -> dict[str, str]:
    """The real held-out examples scored like a model (what a perfect model would get), from the first evaluation."""
    for model in results["models"].values():
        for entry in model["entries"].values():
            if entry.get("eval"):
                row = {"rows": {"model": entry["eval"]["rows"]["reference"]}}
                return {m.key: format(v, m.fmt) for m in METRICS if (v := m.read(row)) is not None}
    return {}


def load_results(out: str | Path) -> dict[str, Any]:
    """The ``results.json`` of an arena folder."""
    path = Path(out) / "results.json"
    if not path.is_file():
        raise GenzooError(f"{out}: no arena results (results.json) there")
    return read_json(path)
