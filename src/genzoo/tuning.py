"""Hyperparameter search on Optuna: ``genzoo.tuning.tune`` and ``genzoo tune``.

A study searches a model's ``search_space`` (declared next to its Config, :mod:`genzoo.searchspace`). Each trial
draws hyperparameters from Optuna's TPE sampler and trains a normal run directory ``OUT/trial-NNNN`` through the
trainer, whose ``on_validation`` hook reports the validation metric at every evaluation (``trial.report``); the
pruner (median of the other trials at the same step, or successive halving) stops a trial that falls behind, and the
run still ends with its checkpoints. A finished trial is scored on the **validation** split -- never the test split,
which stays for the final comparison:

* ``val_loss``: the best value of the model's validation metric (the trainer's, which picks ``best/``);
* ``fd``: Frechet distance, in the dataset's feature space of ``genzoo eval``, between samples of ``best/`` and the
  validation examples (as many samples as examples, drawn with the study's seed);
* ``bits_per_dim``: negative log-likelihood (or its bound) of the validation examples, as ``genzoo eval`` computes it.

All three are minimised. The study lives in an Optuna RDB storage (SQLite by default, ``OUT/study.db``): running the
same command again continues it up to ``trials`` finished trials, and ``workers`` processes share it (each draws its
trials from the storage; SQLite writers wait on a lock with a timeout). The best trial's run is linked as
``OUT/best`` (a relative symlink: a normal run directory for ``genzoo sample``/``eval``), and ``OUT/tune.json`` and
``OUT/study.html`` (optimisation history, intermediate values, parallel coordinates, parameter importances) report the
study.
"""

from __future__ import annotations

import html
import math
import multiprocessing
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from genzoo.contract import Capability, DataKind, GenerativeModel
from genzoo.data.base import Dataset
from genzoo.data.specs import load_dataset
from genzoo.errors import ConfigError, GenzooError, NonFiniteError
from genzoo.eval.features import feature_space
from genzoo.eval.protocol import PROTOCOL
from genzoo.eval.runner import draw_samples, model_likelihood
from genzoo.io import atomic_path, atomic_write_text, write_json
from genzoo.metrics import frechet_distance
from genzoo.registry import make_config, model_class
from genzoo.runs import RunDir, load
from genzoo.searchspace import Param, check_space
from genzoo.training import parse_budget, split_overrides, train, trainer_config

__all__ = ["METRICS", "TuneResult", "split_metric", "trial_train_settings", "tune"]

METRICS: tuple[str, ...] = ("fd", "bits_per_dim", "val_loss")
PRUNERS: tuple[str, ...] = ("median", "halving", "none")

#: trainer settings of a trial unless the user sets them: no intermediate previews or ``last/`` checkpoints (the run
#: ends with both), no progress bar
TRIAL_TRAIN_DEFAULTS: dict[str, Any] = {"sample_every": 10**9, "checkpoint_every": 10**9, "progress": False}
#: validations per trial when the trial's steps are known (the points where a trial can be pruned)
REPORTS_PER_TRIAL = 5
#: seconds a SQLite writer waits for another process's lock before failing
SQLITE_TIMEOUT = 60.0


@dataclass
class TunePlan:
    """Everything a worker process needs to run trials (checked once, picklable)."""

    model: str
    data: str
    metric: str
    trials: int
    steps: int | None
    budget: float | None
    storage: str
    study_name: str
    out: Path
    seed: int
    overrides: dict[str, Any]
    space: dict[str, Param]
    pruner: str
    threads: int
    enqueue: list[dict[str, Any]] = field(default_factory=list)
    tracker: str | None = None


@dataclass
class TuneResult:
    """What a study found: the best trial (None when no trial completed) and where everything is."""

    study_name: str
    storage: str
    out: Path
    metric: str
    best_trial: int | None
    best_value: float | None
    best_params: dict[str, Any]
    best_run: Path | None
    trials: list[dict[str, Any]] = field(default_factory=list)
    report: Path | None = None


# ----- measuring a trial ---------------------------------------------------------------------------------------------
def split_metric(run: str | Path | GenerativeModel, dataset: Dataset, metric: str, split: str = "val",
                 seed: int = 0) -> float:
    """``metric`` of a run's ``best/`` weights (or of a model) on ``split`` of ``dataset`` (lower is better).

    ``val_loss`` is read from the run (the best validation value the trainer recorded) and exists for ``val`` only;
    ``fd`` compares as many samples as the split has examples with them in the dataset's feature space;
    ``bits_per_dim`` scores (at most ``PROTOCOL.likelihood_max`` of) the split's examples."""
    check_metric(metric)
    if metric == "val_loss":
        if split != "val" or isinstance(run, GenerativeModel):
            raise ConfigError("metric val_loss is the trainer's validation value of a run; use fd or bits_per_dim "
                              "for other splits or for a model")
        best = RunDir(run).trainer_state("best").get("best")
        return math.inf if best is None else float(best)
    model = run if isinstance(run, GenerativeModel) else load(run)
    examples = dataset.examples(split)
    if metric == "bits_per_dim":
        summary = model_likelihood(model, examples[: PROTOCOL.likelihood_max], seed)
        if summary is None:
            raise ConfigError(f"model '{model.name}' has no likelihood; use --metric fd or val_loss")
        return float(summary["bits_per_dim"])
    space = feature_space(dataset)
    samples, _ = draw_samples(model, len(examples), seed, PROTOCOL.sample_batch, None)
    finite = torch.isfinite(samples.flatten(1)).all(1)
    if int(finite.sum()) < PROTOCOL.min_examples:  # a diverged model: as bad as it gets
        return math.inf
    return frechet_distance(space.features(examples.x), space.features(samples[finite]))


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ConfigError(f"unknown tuning metric '{metric}'; choose one of {', '.join(METRICS)}")


def _check_metric_fits(metric: str, cls: type[GenerativeModel], dataset: Dataset) -> None:
    if metric == "fd" and (Capability.SAMPLE not in cls.base_capabilities
                           or dataset.info.kind not in (DataKind.IMAGE, DataKind.VECTOR)):
        raise ConfigError(f"metric fd needs a model that samples images or vectors; '{cls.name}' on "
                          f"{dataset.info.kind.value} data does not (use val_loss)")
    if metric == "bits_per_dim" and not {Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND} & set(
            cls.base_capabilities):
        raise ConfigError(f"metric bits_per_dim needs a likelihood; model '{cls.name}' has none (use fd or val_loss)")


# ----- the study -------------------------------------------------------------------------------------------------
def _optuna() -> Any:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str) -> Any:
    """An Optuna RDB storage; SQLite connections wait up to ``SQLITE_TIMEOUT`` s for another writer's lock."""
    optuna = _optuna()
    engine_kwargs = {"connect_args": {"timeout": SQLITE_TIMEOUT}} if url.startswith("sqlite") else {}
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
    except Exception as err:  # SQLAlchemy reports unknown drivers and unreachable databases in many types
        raise ConfigError(f"cannot open storage '{url}': {err}") from None


def _pruner(name: str) -> Any:
    optuna = _optuna()
    if name == "median":  # prune below the median of earlier trials at the same step, once two trials finished
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def _sampler(plan: TunePlan, worker: int, finished: int) -> Any:
    """TPE seeded by the study seed, the worker and the trials so far: a resumed study or a second worker does not
    replay the first one's random start-up draws."""
    optuna = _optuna()
    seed = plan.seed + 7919 * finished + 104729 * worker
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, plan.trials // 3)),
                                      constant_liar=True)


STUDY_KEYS = ("model", "data", "metric")


def _open_study(plan: TunePlan, storage: Any) -> Any:
    """Create the study or continue it; a study started for another model, data or metric is an error."""
    optuna = _optuna()
    study = optuna.create_study(storage=storage, study_name=plan.study_name, direction="minimize",
                                load_if_exists=True)
    attrs = study.user_attrs
    if not attrs:
        taken = sorted(p.name for p in plan.out.glob("trial-*"))
        if study.trials or taken:
            raise ConfigError(f"{plan.out} already holds trials ({', '.join(taken[:3])}...) of another study; "
                              "choose another --out or the study's --storage/--study-name")
        for key in STUDY_KEYS:
            study.set_user_attr(key, getattr(plan, key))
        for params in plan.enqueue:  # known configurations first (e.g. the defaults), before the sampler's own
            study.enqueue_trial(params)
        return study
    differ = [f"{key}={attrs.get(key)!r}" for key in STUDY_KEYS if attrs.get(key) != getattr(plan, key)]
    if differ:
        raise ConfigError(f"study '{plan.study_name}' in {plan.storage} was started with {', '.join(differ)}; "
                          "continue it with the same model, data and metric, or name a new study (--study-name)")
    return study


def _finished(study: Any) -> list[Any]:
    states = {"COMPLETE", "PRUNED", "FAIL"}
    return [t for t in study.trials if t.state.name in states]


@dataclass
class PruningReporter:
    """The trainer's ``on_validation`` hook for one trial: reports ``key`` at each validation and asks the pruner
    from the second report on (a first validation says little: every run starts badly); True = stop."""

    trial: Any
    key: str
    reports: int = 0
    pruned: bool = False

    def __call__(self, step: int, metrics: dict[str, float]) -> bool:
        value = metrics.get(self.key)
        if value is None or not math.isfinite(value):
            return False
        self.trial.report(float(value), step)
        self.reports += 1
        self.pruned = self.reports > 1 and self.trial.should_prune()
        return self.pruned


def _objective(trial: Any, plan: TunePlan, dataset: Dataset) -> float:
    optuna = _optuna()
    params = {name: param.suggest(trial, name) for name, param in plan.space.items()}
    run = plan.out / f"trial-{trial.number:04d}"
    trial.set_user_attr("run", run.name)
    trial.set_user_attr("process", os.getpid())
    reporter = PruningReporter(trial, model_class(plan.model).validation_metric)
    tracking = {"tracker": plan.tracker, "experiment": plan.study_name} if plan.tracker else {}
    settings = {**trial_train_settings(plan.steps), **tracking, **plan.overrides, **params}
    train(plan.model, dataset, steps=plan.steps, budget=plan.budget, out=run, seed=plan.seed, overrides=settings,
          on_validation=reporter)
    trial.set_user_attr("steps", RunDir(run).trainer_state("last")["step"])
    if reporter.pruned:
        raise optuna.TrialPruned()
    return split_metric(run, dataset, plan.metric, "val", plan.seed)


def trial_train_settings(steps: int | None) -> dict[str, Any]:
    """Trainer settings of every trial (before the user's ``--set``): :data:`TRIAL_TRAIN_DEFAULTS`, validating
    ``REPORTS_PER_TRIAL`` times when the steps are known (else at the trainer's default interval). A baseline
    trained with them is trained as a trial is."""
    every = {"eval_every": max(1, steps // REPORTS_PER_TRIAL)} if steps else {}
    return {**TRIAL_TRAIN_DEFAULTS, **every}


def run_worker(plan: TunePlan, worker: int, n_trials: int, dataset: Dataset | None = None,
               storage: Any = None) -> None:
    """Run ``n_trials`` trials of the study in this process (a worker process's entry point; worker 0 runs in the
    calling process on the data and storage it already opened)."""
    if n_trials < 1:
        return
    torch.set_num_threads(plan.threads)
    optuna = _optuna()
    storage = storage if storage is not None else open_storage(plan.storage)
    finished = len(_finished(optuna.load_study(study_name=plan.study_name, storage=storage)))
    study = optuna.load_study(study_name=plan.study_name, storage=storage, pruner=_pruner(plan.pruner),
                              sampler=_sampler(plan, worker, finished))
    dataset = dataset if dataset is not None else load_dataset(plan.data)
    study.optimize(lambda trial: _objective(trial, plan, dataset), n_trials=n_trials, catch=(NonFiniteError,))


def _shares(remaining: int, workers: int) -> list[int]:
    """``remaining`` trials split over ``workers`` as evenly as possible (the total is exact)."""
    return [remaining // workers + (i < remaining % workers) for i in range(workers)]


def _slug(text: str) -> str:
    path = text.split("#", 1)[0]
    return re.sub(r"[^A-Za-z0-9]+", "-", Path(path).name if "/" in path else path).strip("-")[:40] or "data"


def plan_study(model: str, data: str, *, trials: int, budget_per_trial: str | float | None = None,
               steps_per_trial: int | None = None, metric: str = "val_loss", storage: str | None = None,
               study_name: str | None = None, out: str | Path | None = None, seed: int = 0,
               overrides: dict[str, Any] | None = None, space: dict[str, Param] | None = None,
               pruner: str = "median", enqueue: list[dict[str, Any]] | None = None,
               tracker: str | None = None) -> tuple[TunePlan, Dataset]:
    """Check every argument (before any trial runs) and load the data once."""
    check_metric(metric)
    if storage is not None and not re.match(r"^[a-z][a-z0-9+]*://", storage):
        raise ConfigError(f"storage '{storage}' is not a database URL such as sqlite:///tune.db or "
                          "postgresql://user@host/db")
    if pruner not in PRUNERS:
        raise ConfigError(f"unknown pruner '{pruner}'; choose one of {', '.join(PRUNERS)}")
    cls = model_class(model)
    if trials < 1:
        raise ConfigError(f"the number of trials must be at least 1, got {trials}")
    if budget_per_trial is None and steps_per_trial is None:
        raise ConfigError("give each trial a budget: --budget-per-trial (time, e.g. 60s) and/or --steps-per-trial")
    if steps_per_trial is not None and steps_per_trial < 1:
        raise ConfigError(f"steps per trial must be at least 1, got {steps_per_trial}")
    fixed = dict(overrides or {})
    search = cls.tuning_space() if space is None else space
    if space is not None:
        check_space(space, cls.Config, cls.name)
    hparams, settings = split_overrides(model, fixed)  # a typo in --set fails now, not in every trial
    make_config(model, hparams)
    trainer_config({**settings, **({"tracker": tracker} if tracker else {}), "steps": steps_per_trial,
                    "budget": budget_per_trial})
    search = {name: param for name, param in search.items() if name not in fixed}  # a fixed value is not searched
    if not search:
        raise ConfigError(f"nothing to search for '{model}': its search space is empty (or every name is fixed by "
                          "--set)")
    dataset = load_dataset(data)
    _check_metric_fits(metric, cls, dataset)
    name = study_name or f"{model}-{_slug(data)}-{metric}"
    folder = Path(out) if out is not None else Path("tune") / name
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"--out {folder} is a file, not a folder")
    url = storage or f"sqlite:///{(folder / 'study.db').resolve()}"
    plan = TunePlan(model=model, data=data, metric=metric, trials=trials, steps=steps_per_trial,
                    budget=parse_budget(budget_per_trial), storage=url, study_name=name, out=folder, seed=seed,
                    overrides=fixed, space=search, pruner=pruner, threads=torch.get_num_threads(),
                    enqueue=[dict(p) for p in enqueue or []], tracker=tracker)
    return plan, dataset


def tune(model: str, data: str, *, trials: int = 20, budget_per_trial: str | float | None = None,
         steps_per_trial: int | None = None, metric: str = "val_loss", storage: str | None = None,
         study_name: str | None = None, out: str | Path | None = None, seed: int = 0, workers: int = 1,
         overrides: dict[str, Any] | None = None, space: dict[str, Param] | None = None,
         pruner: str = "median", enqueue: list[dict[str, Any]] | None = None,
         tracker: str | None = None, report: bool = True) -> TuneResult:
    """Search ``model``'s hyperparameters on ``data`` until the study has ``trials`` finished trials.

    Each trial trains for ``steps_per_trial`` steps and/or ``budget_per_trial`` (a duration, e.g. ``"60s"``) and is
    scored by ``metric`` on the validation split. ``storage`` is an Optuna database URL (default
    ``sqlite:///OUT/study.db``); the same storage and ``study_name`` continue a study. ``workers`` processes share
    the storage. ``overrides`` fix hyperparameters or trainer settings (``--set``) for every trial; ``space``
    replaces the model's declared search space. ``enqueue`` lists parameter sets a new study tries first (the
    defaults, a known good configuration). ``tracker`` (``"mlflow"``) logs each trial as a run of the experiment
    named after the study. ``report=False`` skips the plots of ``study.html``. Returns the best trial; ``OUT/best``
    links its run directory."""
    if workers < 1:
        raise ConfigError(f"the number of workers must be at least 1, got {workers}")
    plan, dataset = plan_study(model, data, trials=trials, budget_per_trial=budget_per_trial,
                               steps_per_trial=steps_per_trial, metric=metric, storage=storage,
                               study_name=study_name, out=out, seed=seed, overrides=overrides, space=space,
                               pruner=pruner, enqueue=enqueue, tracker=tracker)
    plan.out.mkdir(parents=True, exist_ok=True)
    storage = open_storage(plan.storage)
    study = _open_study(plan, storage)
    shares = _shares(max(0, plan.trials - len(_finished(study))), workers)
    _run_workers(plan, shares, dataset, storage)
    return finish(plan, storage, report)


def _run_workers(plan: TunePlan, shares: list[int], dataset: Dataset, storage: Any) -> None:
    """Start a process per extra worker (spawned: a fresh interpreter, no forked threads), run worker 0 here, and
    wait for all; a worker that fails is one error naming its exit code."""
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=run_worker, args=(plan, i, n), name=f"genzoo-tune-{i}")
             for i, n in enumerate(shares) if i > 0 and n > 0]
    for proc in procs:
        proc.start()
    try:
        run_worker(plan, 0, shares[0], dataset, storage)
    finally:
        for proc in procs:
            proc.join()
    failed = [f"{p.name} (exit code {p.exitcode})" for p in procs if p.exitcode != 0]
    if failed:
        raise GenzooError(f"tuning worker(s) failed: {', '.join(failed)}; the study keeps their finished trials")


# ----- results -----------------------------------------------------------------------------------------------------
def _trial_rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial; ``value`` is the objective of a completed trial (a pruned trial has only the validation
    metric it last reported, in ``reported``)."""
    return [{"number": t.number, "state": t.state.name.lower(),
             "value": t.value if t.state.name == "COMPLETE" else None, "params": t.params,
             "reported": t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None,
             "run": t.user_attrs.get("run"), "steps": t.user_attrs.get("steps"),
             "seconds": t.duration.total_seconds() if t.duration is not None else None}
            for t in study.trials]


def link_best(out: Path, run_name: str) -> Path:
    """``out/best`` -> ``run_name`` as a relative symlink, replaced atomically."""
    link, tmp = out / "best", out / f".best.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_name, target_is_directory=True)
    os.replace(tmp, link)
    return link


def finish(plan: TunePlan, storage: Any, report: bool = True) -> TuneResult:
    """Link the best run as ``OUT/best`` and write ``tune.json`` and ``study.html`` (with plots when ``report``)."""
    optuna = _optuna()
    study = optuna.load_study(study_name=plan.study_name, storage=storage)
    rows = _trial_rows(study)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    best = min(complete, key=lambda t: (t.value, t.number)) if complete else None
    best_run = link_best(plan.out, best.user_attrs["run"]) if best is not None else None
    result = TuneResult(study_name=plan.study_name, storage=plan.storage, out=plan.out, metric=plan.metric,
                        best_trial=None if best is None else best.number,
                        best_value=None if best is None else best.value,
                        best_params={} if best is None else best.params, best_run=best_run, trials=rows)
    record = {"study": plan.study_name, "storage": plan.storage, "model": plan.model, "data": plan.data,
              "metric": plan.metric, "direction": "minimize", "split": "val", "seed": plan.seed,
              "steps_per_trial": plan.steps, "budget_per_trial": plan.budget, "fixed": plan.overrides,
              "space": {k: repr(v) for k, v in plan.space.items()}, "pruner": plan.pruner,
              "best": {"trial": result.best_trial, "value": result.best_value, "params": result.best_params,
                       "run": None if best is None else best.user_attrs["run"]},
              "trials": rows}
    write_json(plan.out / "tune.json", record)
    result.report = write_study_report(plan.out, study, record, plots=report)
    return result


def _figures(out: Path, study: Any) -> list[tuple[str, str]]:
    """PNGs of the study (Optuna's matplotlib plots) and their captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as plots

    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    wanted: list[tuple[str, str, Callable[[], Any]]] = [
        ("history.png", "Objective of each trial and the best so far", lambda: plots.plot_optimization_history(study)),
        ("intermediate.png", "Validation metric reported during each trial (pruned trials stop early)",
         lambda: plots.plot_intermediate_values(study)),
    ]
    if len(complete) >= 2:
        wanted.append(("parallel.png", "Parameters of the completed trials, coloured by objective",
                       lambda: plots.plot_parallel_coordinate(study)))
    if len(complete) >= 3 and len(complete[0].params) >= 2:
        wanted.append(("importance.png", "Parameter importances (fANOVA over the completed trials)",
                       lambda: plots.plot_param_importances(study)))
    figures = []
    for name, caption, draw in wanted:
        ax = draw()
        fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
        with atomic_path(out / name) as tmp:
            fig.savefig(tmp, bbox_inches="tight", format="png", dpi=90)
        plt.close(fig)
        figures.append((name, caption))
    return figures


def write_study_report(out: Path, study: Any, record: dict[str, Any], plots: bool = True) -> Path:
    """``out/study.html``: the best trial, a table of all trials and (``plots``) the study's plots."""
    figures = _figures(out, study) if plots else []
    best = record["best"]
    head = ("<tr><th>trial</th><th>state</th><th>" + html.escape(record["metric"]) +
            " ↓</th><th>steps</th><th>seconds</th><th>parameters</th></tr>")
    body = "".join(
        f"<tr><td>{r['number']}</td><td>{r['state']}</td><td>{_fmt(r['value'])}</td><td>{r['steps'] or '–'}</td>"
        f"<td>{_fmt(r['seconds'], '.1f')}</td><td style='text-align:left'>"
        f"{html.escape(', '.join(f'{k}={_fmt(v)}' for k, v in r['params'].items()))}</td></tr>"
        for r in record["trials"])
    imgs = "".join(f"<figure><img src='{name}' style='max-width:760px'><figcaption>{html.escape(text)}"
                   f"</figcaption></figure>" for name, text in figures)
    summary = (f"best: trial {best['trial']}, {record['metric']} = {_fmt(best['value'])} on the validation split, "
               f"run <code>{html.escape(str(best['run']))}</code>" if best["trial"] is not None
               else "no trial completed")
    title = html.escape(f"genzoo tune: {record['model']} on {record['data']}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>body{{font-family:"
            "sans-serif;margin:2em}td,th{padding:2px 10px;text-align:right}th:first-child{text-align:left}"
            f"</style></head><body><h1>{title}</h1><p>study <code>{html.escape(record['study'])}</code>, "
            f"{len(record['trials'])} trials, pruner {record['pruner']}. {summary}</p>"
            f"<table>{head}{body}</table>{imgs}</body></html>")
    path = out / "study.html"
    atomic_write_text(path, page)
    return path


def _fmt(value: Any, spec: str = ".4g") -> str:
    if value is None:
        return "–"
    return format(value, spec) if isinstance(value, float) else str(value)
