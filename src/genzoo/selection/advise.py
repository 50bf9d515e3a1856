"""``genzoo.advise``: which registered models suit a dataset and a goal, ranked from documented rules, no training.

Every registered model that accepts the data's kind and can be built for it is a candidate (models named
``base:ARG`` such as ``hf:gpt2`` need a pretrained name and are left out; two-domain models need a second
dataset). Each candidate's score for the goal is the sum of

* its **family rule** (:data:`RULES`, one row per family: a score in -2..+2 per goal, how much data the family
  wants, and its rule of thumb); a family without a row gets :data:`NEUTRAL`, so a new family is ranked, neutrally;
* its **property rules** (:data:`PROPERTY_RULES`, one row per declared capability or property: an exact
  likelihood, a latent space, a one-call fit);
* the **situation**: the sampling cost of a freshly built model (``model.cost()``: network evaluations and FLOPs)
  relative to the cheapest candidate, a latency limit, the number of training examples against the family's
  appetite for data, a short training budget against families slow to train.

Ties are broken by name, so the advice is deterministic. The same table is in docs/model-selection.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, get_args

from genzoo.contract import Capability, DataInfo, GenerativeModel
from genzoo.data import Dataset, load_dataset
from genzoo.errors import ConfigError, GenzooError
from genzoo.registry import build_model, model_class, model_names
from genzoo.training import parse_budget

Goal = Literal["quality", "speed", "likelihood", "diversity", "small-data", "interpretability"]
GOALS: tuple[str, ...] = get_args(Goal)


@dataclass(frozen=True)
class FamilyRule:
    """What a family is known for: a score per goal (-2 poor .. +2 strong), its appetite for data (+1 wants much,
    -1 does well with little), whether it needs long training, and the rule of thumb shown as the reason."""

    quality: int = 0
    speed: int = 0
    likelihood: int = 0
    diversity: int = 0
    small_data: int = 0
    interpretability: int = 0
    data_hunger: int = 0
    slow_to_train: bool = False
    note: str = "no rule for this family yet: ranked neutrally"

    def score(self, goal: str) -> int:
        return int(getattr(self, goal.replace("-", "_")))


#: the rules of thumb, one row per family (docs/model-selection.md shows the same table)
RULES: dict[str, FamilyRule] = {
    "gan": FamilyRule(quality=2, speed=2, diversity=-1, small_data=-2, interpretability=-1, data_hunger=1,
                      note="sharp samples in one network pass, but wants much data and can drop modes"),
    "vae": FamilyRule(quality=-1, speed=2, likelihood=1, diversity=1, small_data=2, interpretability=2,
                      data_hunger=-1, note="suits small data, samples in one pass, a latent space; samples blur"),
    "diffusion": FamilyRule(quality=2, speed=-2, likelihood=1, diversity=2, interpretability=-1, slow_to_train=True,
                            note="top sample quality and coverage, at many network evaluations per sample"),
    "flow": FamilyRule(quality=-1, speed=1, likelihood=2, diversity=1, interpretability=1,
                       note="exact likelihood and an invertible latent space in one pass; samples less sharp"),
    "autoregressive": FamilyRule(quality=1, speed=-1, likelihood=2, diversity=1, small_data=1,
                                 note="exact likelihood; sampling is sequential, slow for long sequences"),
    "transformer": FamilyRule(quality=1, speed=-1, likelihood=2, diversity=1, small_data=-1, data_hunger=1,
                              note="exact likelihood, long-range structure given much data; sequential sampling"),
    "energy": FamilyRule(speed=-2, likelihood=-1, interpretability=1, slow_to_train=True,
                         note="an energy score per example; samples slowly by MCMC chains"),
    "classical": FamilyRule(quality=-2, speed=2, likelihood=1, small_data=2, interpretability=2, data_hunger=-1,
                            note="a classical baseline fitted in seconds: strong on small, low-dimensional data"),
}
NEUTRAL = FamilyRule()

_LIKELIHOODS = frozenset({Capability.EXACT_LIKELIHOOD, Capability.LIKELIHOOD_BOUND})


@dataclass(frozen=True)
class Facts:
    """What the rules read about one candidate: its declarations and the cost of a freshly built instance."""

    name: str
    family: str
    capabilities: frozenset[Capability]
    fits_whole_data: bool
    parameters: int
    nfe: int | None
    flops: float | None

    @property
    def latency_ms(self) -> float:
        return estimated_latency_ms(self.nfe, self.flops, self.parameters)


@dataclass(frozen=True)
class PropertyRule:
    """A rule on a declared capability or property: score changes per goal, and the reason it gives."""

    applies: Callable[[Facts], bool]
    effects: dict[str, int]
    reason: str


#: rules on what a model declares, whatever its family
PROPERTY_RULES: tuple[PropertyRule, ...] = (
    PropertyRule(lambda f: Capability.EXACT_LIKELIHOOD in f.capabilities, {"likelihood": 2}, "exact likelihood"),
    PropertyRule(lambda f: Capability.LIKELIHOOD_BOUND in f.capabilities
                 and Capability.EXACT_LIKELIHOOD not in f.capabilities, {"likelihood": 1}, "a likelihood bound"),
    PropertyRule(lambda f: not f.capabilities & _LIKELIHOODS, {"likelihood": -4}, "no likelihood"),
    PropertyRule(lambda f: Capability.ENCODE in f.capabilities, {"interpretability": 1}, "encodes to latent codes"),
    PropertyRule(lambda f: f.fits_whole_data, {"small-data": 1}, "fitted in one call, no training steps"),
)

#: fewer training examples than this is "small data" for the families that want much
SMALL_DATA = 5_000
#: a per-model budget below this is short for families slow to train (seconds)
SHORT_BUDGET = 120.0
#: assumed compute of two CPU cores on small batches (FLOP/s) and the overhead of one network call (ms): a rough,
#: documented scale for --latency-ms; rankings use the ratios between candidates
CPU_FLOPS = 5e9
CALL_MS = 0.2


def estimated_latency_ms(nfe: int | None, flops: float | None, parameters: int) -> float:
    """Milliseconds for one sample: a call overhead per network evaluation plus the FLOPs (declared, or two per
    parameter per evaluation when the model does not declare them) at :data:`CPU_FLOPS`."""
    calls = nfe or 1
    work = flops if flops is not None else 2.0 * parameters * calls
    return calls * CALL_MS + 1e3 * work / CPU_FLOPS


class Advice(NamedTuple):
    """One ranked model: its name, its score for the goal (higher is better) and the reasons."""

    model: str
    score: float
    reasons: list[str]


def family_rule(family: str) -> FamilyRule:
    return RULES.get(family, NEUTRAL)


def not_applicable(info: DataInfo, name: str) -> str | None:
    """Why model class ``name`` cannot train on data ``info`` alone (None when it can), from its declarations."""
    cls = model_class(name)
    if info.kind not in cls.data_kinds:
        return f"takes {', '.join(sorted(k.value for k in cls.data_kinds))} data, not {info.kind.value}"
    if cls.domains != 1:
        return "trains on two datasets (--data-b)"
    return None


def applicable_models(info: DataInfo, *, named: bool = False) -> list[str]:
    """Registered models that can train on ``info`` alone, by name. Models named ``base:ARG`` (a pretrained
    source) are left out: they are only compared when named explicitly (``named`` keeps their classes)."""
    return [name for name in model_names()
            if not_applicable(info, name) is None and (named or model_class(name).name_argument is None)]


def facts(info: DataInfo, name: str, tokenizer: Any = None) -> Facts | None:
    """The facts of a freshly built model (None when it cannot be built or cannot sample for this data)."""
    try:
        model: GenerativeModel = build_model(name, info, tokenizer=tokenizer)
        if not {Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE} & model.capabilities:
            return None
        cost = model.cost()
    except GenzooError:  # the data does not fit the model (e.g. an image size a U-Net cannot halve)
        return None
    return Facts(name, model.family, model.capabilities, model.fits_whole_data, model.num_parameters(),
                 cost.nfe_per_sample, cost.flops_per_sample)


def _situation(f: Facts, goal: str, cheapest_ms: float, n_train: int, latency_ms: float | None,
               budget_s: float | None) -> tuple[float, list[str]]:
    """Score changes and reasons from the data and the user's constraints."""
    rule, score, reasons = family_rule(f.family), 0.0, []
    ratio = f.latency_ms / cheapest_ms
    if goal == "speed":  # the cheapest sampler +2, one point less per factor of ten
        score += max(-2.0, 2.0 - math.log10(ratio))
    if goal == "speed" or ratio >= 10:
        reasons.append(f"≈{f.latency_ms:.2g} ms/sample ({f.nfe or '?'} network evaluations)")
    if latency_ms is not None and f.latency_ms > latency_ms:
        score -= 5
        reasons.append(f"≈{f.latency_ms:.2g} ms/sample exceeds the {latency_ms:g} ms limit")
    if n_train < SMALL_DATA and rule.data_hunger:
        score -= rule.data_hunger
        reasons.append(f"{'only ' if rule.data_hunger > 0 else ''}{n_train:,} training examples: "
                       + ("this family wants more" if rule.data_hunger > 0 else "fine for this family"))
    if budget_s is not None and budget_s < SHORT_BUDGET and rule.slow_to_train and not f.fits_whole_data:
        score -= 1
        reasons.append(f"a {budget_s:g} s budget is short for this family")
    return score, reasons


def rank(candidates: list[Facts], goal: str, n_train: int, latency_ms: float | None = None,
         budget_s: float | None = None) -> list[Advice]:
    """Score every candidate for ``goal`` by the rules and sort best first (ties by name)."""
    if goal not in GOALS:
        raise ConfigError(f"unknown goal '{goal}'; choose one of: {', '.join(GOALS)}")
    if not candidates:
        return []
    cheapest = min(f.latency_ms for f in candidates)
    out = []
    for f in candidates:
        rule = family_rule(f.family)
        score, reasons = float(rule.score(goal)), [f"{f.family}: {rule.note}"]
        for prop in PROPERTY_RULES:
            if prop.applies(f):
                score += prop.effects.get(goal, 0)
                if goal in prop.effects:
                    reasons.append(prop.reason)
        extra, why = _situation(f, goal, cheapest, n_train, latency_ms, budget_s)
        out.append(Advice(f.name, score + extra, reasons + why))
    return sorted(out, key=lambda a: (-a.score, a.model))


def advise(data: str | Dataset, goal: str = "quality", *, latency_ms: float | None = None,
           budget: str | float | None = None) -> list[Advice]:
    """Rank the registered models that apply to ``data`` (a spec or a Dataset) for ``goal``, best first, each with
    its score and reasons; no training. ``latency_ms`` is a limit on the time of one sample; ``budget`` the
    training time each model would get."""
    if goal not in GOALS:
        raise ConfigError(f"unknown goal '{goal}'; choose one of: {', '.join(GOALS)}")
    if latency_ms is not None and not latency_ms > 0:
        raise ConfigError(f"--latency-ms must be more than 0, got {latency_ms}")
    budget_s = parse_budget(budget)
    dataset = data if isinstance(data, Dataset) else load_dataset(data)
    found = [facts(dataset.info, name, dataset.tokenizer) for name in applicable_models(dataset.info)]
    return rank([f for f in found if f is not None], goal, dataset.size("train"), latency_ms, budget_s)
