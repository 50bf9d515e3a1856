"""Sampling options on the command line: flags generated from each model's ``SampleOptions``, checked before any
work; the non-finite refusal of ``genzoo sample``."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest
import torch
import typer
from pydantic import Field, field_validator
from typer.testing import CliRunner, Result

import genzoo
import genzoo.cli
from conftest import FAST, tiny_dataset
from genzoo.cli import options as options_module
from genzoo.cli import sample as sample_module
from genzoo.cli.app import app
from genzoo.cli.options import ModelOptionsCommand, model_options
from genzoo.contract import DataKind, GenerativeModel, SampleOptions
from genzoo.errors import RunDirError
from genzoo.registry import model_class

SMOKE = {"vae": {"latent_dim": 4, "width": 8},
         "ddpm": {"timesteps": 50, "width": 8, "channel_mult": [1, 2], "mlp_width": 32, "mlp_depth": 1,
                  "bound_steps": 5}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    data = tiny_dataset(DataKind.IMAGE)
    return {name: genzoo.train(name, data, steps=2, out=root / name, overrides=hparams, **FAST)
            for name, hparams in SMOKE.items()}


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, ["sample", *map(str, args)], env={"COLUMNS": "200"})  # wide: no cut flag names


def listed(result: Result) -> set[str]:
    """The flags in the option tables of a ``--help`` page."""
    return set(re.findall(r"^│\s+(--[a-z][\w-]*)", result.output, flags=re.MULTILINE))


def message(result: Result) -> str:
    """What the user sees of a failure (click's error box, or the GenzooError the console script prints as one
    line), with the box and its line wrapping undone."""
    text = result.output + ("" if result.exception is None else str(result.exception))
    return " ".join(text.replace("│", " ").split())


def boom(*_: Any, **__: Any) -> None:
    raise AssertionError("work started although an option was bad")


def forbid_work(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Make loading weights, and sampling by models ``names``, fail loudly: a bad option is refused before."""
    monkeypatch.setattr(sample_module, "load", boom)
    for name in names:
        monkeypatch.setattr(model_class(name), "_sample", boom)


def test_help_lists_the_runs_own_options(runs: dict[str, Path]) -> None:
    vae = cli(runs["vae"], "--help")
    assert vae.exit_code == 0, vae.output
    assert "--mode" in listed(vae) and "<mean|sample>" in vae.output and "[default: mean]" in vae.output
    assert "smooth" in vae.output  # the field's description is the flag's help
    assert not {"--sampler", "--steps", "--temperature"} & listed(vae)
    assert {"--num", "--seed", "--out", "--checkpoint", "--opt", "--prompt"} <= listed(vae)  # the fixed flags
    ddpm = cli(runs["ddpm"], "--help")
    assert ddpm.exit_code == 0, ddpm.output
    assert {"--sampler", "--steps", "--guidance", "--eta"} <= listed(ddpm) and "--mode" not in listed(ddpm)
    assert "[x>=1]" in ddpm.output  # the range of --steps
    general = cli("--help")
    assert general.exit_code == 0, general.output
    assert "genzoo sample RUN --help" in " ".join(general.output.split())
    assert not {"--steps", "--mode", "--temperature"} & listed(general)


def test_bad_values_fail_in_one_line_before_any_sampling(runs: dict[str, Path],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    forbid_work(monkeypatch, "ddpm", "vae")
    out = runs["vae"] / "never.png"
    for args, words in [((runs["ddpm"], "--steps", "0"), ["--steps"]),
                        ((runs["ddpm"], "--sampler", "euler"), ["--sampler"]),
                        ((runs["ddpm"], "--opt", "steps=0"), ["steps"]),
                        ((runs["ddpm"], "--opt", "steps"), ["key=value"]),
                        ((runs["vae"], "--mode", "bogus"), ["--mode", "bogus"]),
                        ((runs["vae"], "-n", "0"), ["-n"]),
                        ((runs["vae"], "--checkpoint", "nope"), ["--checkpoint", "nope"]),
                        ((runs["vae"], "--bogus", "1"), ["--bogus", "--mode"]),
                        ((runs["vae"], "--steps", "3"), ["--steps"]),  # another model's option
                        ((runs["vae"], "--opt", "mode=bogus"), ["mode"]),
                        ((runs["vae"], "--mode", "sample", "--opt", "mode=mean"), ["twice"])]:
        result = cli(*args, "--out", out)
        text = message(result)
        assert result.exit_code != 0, args
        assert all(word in text for word in words), (args, text)
        assert "Traceback" not in text and not out.exists(), args


def test_a_missing_run_fails_with_the_run_error(tmp_path: Path) -> None:
    for args in [(tmp_path / "nope",), (tmp_path / "nope", "--steps", "3"), ("--steps", "3", tmp_path / "nope")]:
        result = cli(*args)
        assert result.exit_code != 0 and "no such run directory" in message(result), message(result)
    result = cli("--steps", "3")
    assert result.exit_code != 0 and "RUN --help" in message(result), message(result)


def test_valid_options_reach_the_model(runs: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    cls = model_class("vae")
    seen: list[Any] = []
    original = cls._sample

    def spy(self: Any, n: int, generator: torch.Generator, labels: Any, options: Any) -> Any:
        seen.append(options)
        return original(self, n, generator, labels, options)

    monkeypatch.setattr(cls, "_sample", spy)
    out = tmp_path / "s.npy"
    result = cli(runs["vae"], "-n", "3", "--mode", "sample", "--seed", "1", "--out", out)
    assert result.exit_code == 0, message(result)
    assert np.load(out).shape[0] == 3 and seen[-1].mode == "sample"
    result = cli(runs["vae"], "-n", "2")  # no flag: the model's default, to the run's samples folder
    assert result.exit_code == 0, message(result)
    assert seen[-1].mode == "mean" and (runs["vae"] / "samples" / "sample-seed0.png").exists()


def test_ddpm_options_and_the_opt_escape_hatch(runs: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "d.npy"
    result = cli(runs["ddpm"], "-n", "2", "--sampler", "ddim", "--steps", "3", "--opt", "eta=0.5", "--out", out)
    assert result.exit_code == 0, message(result)
    expected = genzoo.load(runs["ddpm"]).sample(2, seed=0, sampler="ddim", steps=3, eta=0.5)
    assert np.allclose(np.load(out), expected.numpy(), atol=1e-6)
    result = cli("--steps", "2", "--sampler", "ddpm", runs["ddpm"], "-n", "1", "--out", out)  # flags before RUN
    assert result.exit_code == 0, message(result)


def test_the_options_schema_is_exported() -> None:
    schema = model_class("ddpm").sample_options_schema()
    assert {"sampler", "steps", "eta", "guidance"} <= set(schema["properties"])
    assert "mode" in model_class("vae").sample_options_schema()["properties"]


def test_non_finite_samples_are_refused(runs: dict[str, Path], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    def nan(self: Any, n: int, *_: Any) -> torch.Tensor:
        return torch.full((n, *self.data.shape), float("nan"))

    monkeypatch.setattr(model_class("vae"), "_sample", nan)
    out = tmp_path / "nan.png"
    result = cli(runs["vae"], "-n", "4", "--out", out)
    assert result.exit_code != 0 and "NaN" in message(result)
    assert "checkpoint 'best'" in message(result) or "checkpoint 'last'" in message(result)
    assert not out.exists()


def test_text_options_reach_generation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = genzoo.train("gpt", tiny_dataset(DataKind.TOKENS), steps=2, out=tmp_path / "gpt",
                       overrides=model_class("gpt").smoke_config, **FAST)
    page = cli(run, "--help")
    assert {"--temperature", "--top-k", "--top-p", "--min-p", "--repetition-penalty", "--use-cache"} <= listed(page)
    assert "--no-use-cache" in page.output and "--mode" not in listed(page)
    expected = genzoo.load(run).generate("the", max_new_tokens=6, temperature=0.0, seed=1)
    result = cli(run, "--prompt", "the", "--max-new-tokens", "6", "--temperature", "0", "--no-use-cache", "--seed", "1")
    assert result.exit_code == 0, message(result)
    assert result.output == "the" + expected + "\n"
    monkeypatch.setattr(sample_module, "load", boom)
    for args, word in [(("--top-p", "0"), "top_p"), (("--temperature", "-1"), "--temperature"),
                       (("--top-k", "0"), "--top-k")]:
        result = cli(run, "--prompt", "the", *args)
        assert result.exit_code != 0 and word in message(result), (args, message(result))


# ----- the machinery on a model made up here: collisions, aliases, JSON values, open bounds, flags ------------------
class MadeUpOptions(SampleOptions):
    seed: int = Field(0, description="collides with the command's --seed: no flag, --opt reaches it")
    style: Literal["a", "b"] = Field("a", description="style [a|b]; 'alpha' is an alias of 'a'")
    betas: list[float] = Field(default_factory=lambda: [0.1], description="noise levels")
    scale: float = Field(1.0, gt=0, description="how far")
    fast: bool = Field(True, description="go fast")

    @field_validator("style", mode="before")
    @classmethod
    def _alias(cls, value: Any) -> Any:
        return {"alpha": "a"}.get(value, value)


class MadeUp(GenerativeModel):
    name = "made-up"
    SampleOptions = MadeUpOptions


class StubCommand(ModelOptionsCommand):
    escape_param = "opts"


stub = typer.Typer(add_completion=False)


@stub.command(cls=StubCommand)
def _stub(run: str = typer.Argument(None), seed: int = typer.Option(0, "--seed"),
          opts: list[str] = typer.Option([], "--opt")) -> None:
    print(json.dumps(model_options(), sort_keys=True))


@pytest.fixture
def made_up(monkeypatch: pytest.MonkeyPatch) -> None:
    def resolve(source: str) -> type[GenerativeModel]:
        if source != "made-up":
            raise RunDirError(f"{source}: no such run directory")
        return MadeUp

    monkeypatch.setattr(options_module, "resolve_class", resolve)


def stub_cli(*args: str) -> Result:
    return CliRunner().invoke(stub, list(args), env={"COLUMNS": "200"})


@pytest.mark.usefixtures("made_up")
def test_generated_flags_follow_the_field_types() -> None:
    page = stub_cli("made-up", "--help")
    assert {"--style", "--betas", "--scale", "--fast", "--seed", "--opt"} <= listed(page), page.output
    assert "--no-fast" in page.output and "style [a|b]" in page.output and "> 0" in page.output
    assert "one of: a, b" in page.output
    assert page.output.count("--seed") == 1  # the command's own
    for args, given in [((), {}),  # nothing given: the model's defaults apply, nothing is passed
                        (("--style", "alpha"), {"style": "alpha"}),  # an alias the Literal does not list
                        (("--betas", "[0.2, 0.3]", "--no-fast", "--seed", "5"), {"betas": [0.2, 0.3], "fast": False}),
                        (("--opt", "seed=3", "--scale", "2"), {"scale": 2.0, "seed": 3})]:
        result = stub_cli("made-up", *args)
        assert result.exit_code == 0, message(result)
        assert json.loads(result.output) == given, args
    for args, word in [(("--scale", "0"), "scale"), (("--style", "c"), "style"), (("--betas", "x"), "betas")]:
        result = stub_cli("made-up", *args)
        assert result.exit_code != 0 and word in message(result), (args, message(result))
    result = stub_cli("elsewhere", "--scale", "1")
    assert result.exit_code != 0 and "elsewhere: no such run directory" in message(result)
