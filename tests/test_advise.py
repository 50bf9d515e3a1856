"""Advice: deterministic, only applicable models, each rule of the table doing what it says, a neutral default for an
unknown family, the table and the docs in agreement, and the command line."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import TINY_BUILDERS, tiny_dataset
from genzoo.cli.app import app
from genzoo.contract import Capability, DataKind
from genzoo.errors import ConfigError
from genzoo.registry import build_model, model_class
from genzoo.selection.advise import GOALS, NEUTRAL, RULES, SMALL_DATA, Facts, advise, estimated_latency_ms, rank

DOCS = Path(__file__).resolve().parents[1] / "docs" / "model-selection.md"


@pytest.mark.parametrize("kind", sorted(TINY_BUILDERS))
def test_advice_is_deterministic_and_names_only_applicable_models(kind: DataKind) -> None:
    data = tiny_dataset(kind)
    assert advise(data, "quality") == advise(data, "quality")
    built = {}
    for goal in GOALS:
        first = advise(data, goal)
        assert first, f"{kind} {goal}"
        assert [a.score for a in first] == sorted((a.score for a in first), reverse=True)
        for item in first:
            cls = model_class(item.model)
            assert kind in cls.data_kinds and cls.domains == 1 and cls.name_argument is None
            model = built.setdefault(item.model, build_model(item.model, data.info, tokenizer=data.tokenizer))
            assert {Capability.SAMPLE, Capability.CONDITIONAL_SAMPLE} & model.capabilities
            assert item.reasons and all(isinstance(r, str) and "\n" not in r for r in item.reasons)


def _facts(name: str, family: str, caps: set[Capability], nfe: int = 1, fits: bool = False) -> Facts:
    return Facts(name, family, frozenset(caps), fits, parameters=1000, nfe=nfe, flops=None)


SAMPLE = {Capability.SAMPLE}
EXACT = {Capability.SAMPLE, Capability.EXACT_LIKELIHOOD}
BOUND = {Capability.SAMPLE, Capability.LIKELIHOOD_BOUND}


def test_an_unknown_family_is_ranked_by_the_neutral_rule_and_its_properties() -> None:
    f = _facts("new", "a-family-nobody-wrote-a-rule-for", EXACT)
    (item,) = rank([f], "likelihood", n_train=SMALL_DATA)
    assert item.score == 2.0  # neutral family (0) + exact likelihood (+2)
    assert NEUTRAL.note in item.reasons[0] and "exact likelihood" in item.reasons
    (item,) = rank([f], "quality", n_train=SMALL_DATA)
    assert item.score == 0.0


def test_a_latent_space_and_a_one_call_fit_count_for_their_goals() -> None:
    encoder = _facts("enc", "nobody", {Capability.SAMPLE, Capability.ENCODE})
    fitted = _facts("fit", "nobody", SAMPLE, fits=True)
    scores = {goal: {a.model: a.score for a in rank([encoder, fitted], goal, n_train=SMALL_DATA)}
              for goal in ("interpretability", "small-data")}
    assert scores == {"interpretability": {"enc": 1.0, "fit": 0.0}, "small-data": {"enc": 0.0, "fit": 1.0}}


def test_likelihood_goal_orders_exact_before_bound_before_none() -> None:
    ranked = rank([_facts("a", "x", SAMPLE), _facts("b", "x", BOUND), _facts("c", "x", EXACT)], "likelihood",
                  n_train=SMALL_DATA)
    assert [(a.model, a.score) for a in ranked] == [("c", 2.0), ("b", 1.0), ("a", -4.0)]


def test_speed_follows_the_cost_of_sampling_relative_to_the_cheapest() -> None:
    ranked = rank([_facts("one", "x", SAMPLE, nfe=1), _facts("many", "x", SAMPLE, nfe=1000)], "speed",
                  n_train=SMALL_DATA)
    ratio = estimated_latency_ms(1000, None, 1000) / estimated_latency_ms(1, None, 1000)
    assert [a.model for a in ranked] == ["one", "many"]
    assert ranked[0].score == 2.0 and ranked[1].score == pytest.approx(max(-2.0, 2.0 - math.log10(ratio)))


def test_a_latency_limit_demotes_models_that_exceed_it() -> None:
    slow, fast = _facts("slow", "x", SAMPLE, nfe=1000), _facts("fast", "x", SAMPLE, nfe=1)
    limit = (slow.latency_ms + fast.latency_ms) / 2
    ranked = rank([slow, fast], "quality", n_train=SMALL_DATA, latency_ms=limit)
    assert [(a.model, a.score) for a in ranked] == [("fast", 0.0), ("slow", -5.0)]
    assert any("exceeds" in r for r in ranked[1].reasons)


def test_small_data_and_short_budgets_count_against_the_families_that_need_more() -> None:
    gan, vae, diffusion = (_facts(f, f, SAMPLE) for f in ("gan", "vae", "diffusion"))
    big = {a.model: a.score for a in rank([gan, vae, diffusion], "quality", n_train=SMALL_DATA)}
    small = {a.model: a.score for a in rank([gan, vae, diffusion], "quality", n_train=SMALL_DATA - 1)}
    assert small["gan"] == big["gan"] - 1 and small["vae"] == big["vae"] + 1 and small["diffusion"] == big["diffusion"]
    short = {a.model: a.score for a in rank([gan, vae, diffusion], "quality", n_train=SMALL_DATA, budget_s=30)}
    assert short["diffusion"] == big["diffusion"] - 1 and short["gan"] == big["gan"]


def test_the_goal_changes_the_winner_on_digits() -> None:
    data = tiny_dataset(DataKind.IMAGE)
    by_goal = {goal: advise(data, goal) for goal in ("quality", "likelihood", "speed")}
    families = {goal: model_class(items[0].model).family for goal, items in by_goal.items()}
    assert families["quality"] == "diffusion"
    assert Capability.EXACT_LIKELIHOOD in model_class(by_goal["likelihood"][0].model).base_capabilities
    nfe = {a.model: build_model(a.model, data.info).cost().nfe_per_sample for a in by_goal["speed"][:3]}
    assert all(v == 1 for v in nfe.values()), nfe


def test_bad_goal_and_latency_are_one_clear_error() -> None:
    data = tiny_dataset(DataKind.VECTOR)
    with pytest.raises(ConfigError, match="goal"):
        advise(data, "beauty")
    with pytest.raises(ConfigError, match="latency"):
        advise(data, latency_ms=0)


def test_the_docs_show_the_rules_table() -> None:
    text = DOCS.read_text()
    for family, rule in RULES.items():
        row = next((line for line in text.splitlines() if line.startswith(f"| {family} |")), None)
        assert row is not None, f"docs/model-selection.md has no row for {family}"
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert [int(c) for c in cells[1:7]] == [rule.score(g) for g in GOALS], family
        assert rule.note in row


def test_the_demo_takes_the_best_advised_model_of_every_image_family() -> None:
    from genzoo.cli.demo import representatives

    ranked = [a.model for a in advise(tiny_dataset(DataKind.IMAGE), "quality")]
    chosen = representatives(ranked)
    families = [model_class(name).family for name in chosen]
    assert len(families) == len(set(families)) == len({model_class(name).family for name in ranked})
    assert all(ranked.index(name) <= ranked.index(other) for name in chosen for other in ranked
               if model_class(other).family == model_class(name).family)


def test_the_advise_command_prints_the_ranking() -> None:
    result = CliRunner().invoke(app, ["advise", "--data", "toy:moons", "--goal", "speed", "--latency-ms", "50"])
    assert result.exit_code == 0, result.output
    assert "genzoo advise" in result.output and "gmm" in result.output
