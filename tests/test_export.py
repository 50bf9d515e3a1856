"""`genzoo export`: ONNX, TorchScript and int8 artefacts match the original model; failures are clear and atomic."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import genzoo
from conftest import FAST, tiny_dataset
from genzoo.cli.app import app
from genzoo.contract import DataKind, GenerativeModel
from genzoo.errors import ConfigError, GenzooError, RunDirError
from genzoo.export import check_inputs, export, load_export, load_int8, quantize_int8
from genzoo.io import load_tensors
from genzoo.registry import build_model, model_class, model_names

KINDS = {"gpt": DataKind.TOKENS, "lstm": DataKind.TOKENS, "kde": DataKind.VECTOR}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One briefly trained (2 steps) smoke-sized run per exported family, and a model that cannot export."""
    root = tmp_path_factory.mktemp("runs")
    names = ("dcgan", "cgan", "vae", "realnvp", "gpt", "kde")
    return {name: genzoo.train(name, tiny_dataset(KINDS.get(name, DataKind.IMAGE)), steps=2, out=root / name,
                               seed=1, overrides=dict(model_class(name).smoke_config), **FAST) for name in names}


def _spec_output(model: GenerativeModel, record: dict, seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Inputs drawn with ``seed`` and the model's own output on them, at the export's batch (and context)."""
    shape = record["inputs"][0]["shape"]
    context = shape[1] if record["inputs"][0]["name"] == "ids" else None
    with torch.no_grad():
        spec = model.eval().export_module(shape[0], context)
        inputs = check_inputs(spec, seed)
        return inputs, spec.module(*inputs.values())


@pytest.mark.parametrize("name", ["dcgan", "cgan", "vae", "realnvp", "gpt"])
def test_onnx_runs_in_onnxruntime_like_torch(name: str, runs: dict[str, Path], tmp_path: Path) -> None:
    record = export(runs[name], "onnx", tmp_path / "onnx", batch=2)
    assert record["max_abs_diff"] < 1e-4
    # on other inputs than the ones checked at export: onnxruntime reproduces the torch model
    artefact = load_export(tmp_path / "onnx")
    inputs, expected = _spec_output(genzoo.load(runs[name]), record, seed=7)
    assert torch.allclose(artefact.run(**inputs), expected, atol=1e-4, rtol=0)
    assert json.loads((tmp_path / "onnx" / "export.json").read_text())["source"]["run"] == str(runs[name])


@pytest.mark.parametrize("name", ["dcgan", "vae", "gpt"])
def test_exported_sampler_draws_the_models_samples(name: str, runs: dict[str, Path], tmp_path: Path) -> None:
    """The same seed gives the same samples as ``model.sample``: same noise drawn in order (gpt: the same tokens,
    one position at a time); 5 samples at batch 2 also exercise the padded last batch."""
    export(runs[name], "onnx", tmp_path / "onnx", batch=2)
    got = load_export(tmp_path / "onnx").sample(5, seed=3)
    assert torch.allclose(got, genzoo.load(runs[name]).sample(5, seed=3), atol=1e-5, rtol=0)


def test_conditional_sampler_takes_labels(runs: dict[str, Path], tmp_path: Path) -> None:
    export(runs["cgan"], "onnx", tmp_path / "onnx", batch=4)
    labels = torch.tensor([0, 3, 3, 9])
    got = load_export(tmp_path / "onnx").sample(4, seed=2, labels=labels)
    assert torch.allclose(got, genzoo.load(runs["cgan"]).sample(4, seed=2, labels=labels), atol=1e-5, rtol=0)
    with pytest.raises(GenzooError, match="labels"):
        load_export(tmp_path / "onnx").sample(4, seed=2)


@pytest.mark.parametrize("name", ["dcgan", "gpt"])
def test_torchscript_matches_torch(name: str, runs: dict[str, Path], tmp_path: Path) -> None:
    record = export(runs[name], "torchscript", tmp_path / "ts", batch=3)
    assert record["max_abs_diff"] < 1e-5
    inputs, expected = _spec_output(genzoo.load(runs[name]), record, seed=5)
    assert torch.allclose(load_export(tmp_path / "ts").run(**inputs), expected, atol=1e-5, rtol=0)


def test_gpt_window_is_causal_and_context_is_checked(runs: dict[str, Path], tmp_path: Path) -> None:
    """Right padding does not change earlier positions' logits (how a shorter sequence is read)."""
    record = export(runs["gpt"], "onnx", tmp_path / "onnx", batch=1, context=6)
    assert record["inputs"][0]["shape"] == [1, 6]
    artefact = load_export(tmp_path / "onnx")
    ids = torch.tensor([[record["data"]["levels"], 4, 2, 7, 1, 3]])
    padded = ids.clone()
    padded[:, 3:] = 0
    assert torch.allclose(artefact.run(ids=ids)[:, :3], artefact.run(ids=padded)[:, :3], atol=1e-5)
    assert not torch.allclose(artefact.run(ids=ids)[:, 3:], artefact.run(ids=padded)[:, 3:], atol=1e-5)
    with pytest.raises(ConfigError, match="at most"):
        export(runs["gpt"], "onnx", tmp_path / "long", context=10_000)


def test_int8_gpt_is_int8_and_close_to_float(runs: dict[str, Path], tmp_path: Path) -> None:
    record = export(runs["gpt"], "int8", tmp_path / "int8", batch=2)
    tensors = load_tensors(tmp_path / "int8" / "model.int8.safetensors")
    dynamic = record["quantization"]["dynamic_int8_linear"]
    assert len(dynamic) == 4  # one block: qkv, proj and the MLP's two layers
    for prefix in dynamic:
        assert tensors[f"{prefix}.weight.int8"].dtype == torch.int8
        assert f"{prefix}.weight" not in tensors  # no float copy kept
    float_model, int8_model = genzoo.load(runs["gpt"]), load_int8(tmp_path / "int8")
    _, expected = _spec_output(float_model, record, seed=4)
    _, got = _spec_output(int8_model, record, seed=4)
    # int8 weights carry a relative error up to 1/254 of each tensor's largest weight, and dynamic quantization of
    # activations adds as much per layer: logits move by a few hundredths of their spread, not more
    assert (got - expected).abs().max() < 0.05 * expected.std()
    assert 0 < record["max_abs_diff"] < 0.05 * expected.std()
    # the file holds the quantized model exactly: reloading gives what was checked at export
    _, at_export = _spec_output(quantize_int8(float_model), record, seed=4)
    assert torch.equal(got, at_export)
    assert int8_model.provenance["weights"] == "int8"


def test_int8_weight_only_convolutions_round_to_half_a_step(runs: dict[str, Path], tmp_path: Path) -> None:
    record = export(runs["dcgan"], "int8", tmp_path / "int8", batch=2)
    float_model, int8_model = genzoo.load(runs["dcgan"]), load_int8(tmp_path / "int8")
    tensors = load_tensors(tmp_path / "int8" / "model.int8.safetensors")
    convs = record["quantization"]["weight_only_int8"]
    assert any(key.startswith("generator.") for key in convs)
    floats, rounded = dict(float_model.named_parameters()), dict(int8_model.named_parameters())
    for key in convs:
        assert tensors[f"{key}.int8"].dtype == torch.int8
        axis = 1 if isinstance(int8_model.get_submodule(key.rpartition(".")[0]), torch.nn.ConvTranspose2d) else 0
        scale = tensors[f"{key}.scale"]
        # symmetric per output channel: the largest weight of a channel is exactly +-127 steps
        assert torch.allclose(floats[key].abs().transpose(0, axis).flatten(1).amax(1), 127 * scale, rtol=1e-6)
        step = scale.view([-1 if d == axis else 1 for d in range(floats[key].dim())])
        assert ((rounded[key] - floats[key]).abs() <= step / 2 + 1e-7).all()
    images = int8_model.sample(8, seed=0)
    assert images.shape == (8, 1, 8, 8) and images.min() >= 0 and images.max() <= 1


def test_a_model_without_an_exportable_network_says_so(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(GenzooError, match="model 'kde' cannot be exported"):
        export(runs["kde"], "onnx", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_or_corrupt_runs_and_bad_options_are_clear(runs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(RunDirError, match="not a run directory"):
        export(tmp_path / "nowhere", "onnx")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text("{not json")
    with pytest.raises(RunDirError, match="not valid JSON"):
        export(tmp_path / "bad", "onnx")
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        export(runs["dcgan"], "tflite")
    with pytest.raises(ConfigError, match="context is for token models"):
        export(runs["dcgan"], "onnx", context=4)
    with pytest.raises(RunDirError, match="not an export folder"):
        load_export(tmp_path / "bad")


def test_failed_export_leaves_nothing_half_written(runs: dict[str, Path], tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    export(runs["dcgan"], "onnx", out)
    before = (out / "model.onnx").read_bytes()

    def broken(*args: object, **kwargs: object) -> None:
        Path(args[2]).write_bytes(b"half an onnx file")
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(GenzooError, match="did not export to ONNX"):
        export(runs["dcgan"], "onnx", out)
    assert (out / "model.onnx").read_bytes() == before  # the earlier export is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folder left


def test_cli_exports_and_reports(runs: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["export", str(runs["vae"]), "--format", "onnx", "--out", str(tmp_path / "o"),
                                      "--batch", "2", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["max_abs_diff"] < 1e-4
    assert (tmp_path / "o" / "model.onnx").is_file()


def test_every_model_exports_or_declares_it_cannot() -> None:
    """No model crashes with an unexpected exception: it gives a network whose output is finite data, or says it
    has none (GenzooError naming it)."""
    for name in model_names():
        cls = model_class(name)
        if cls.family == "test":
            continue
        if cls.export_module is GenerativeModel.export_module:  # declared: the contract's "cannot be exported"
            with pytest.raises(GenzooError, match=f"model '{name}' cannot be exported"):
                GenerativeModel.export_module(object.__new__(cls), 1)  # type: ignore[arg-type]
            continue
        kind = next(k for k in (DataKind.IMAGE, DataKind.TOKENS, DataKind.VECTOR) if k in cls.data_kinds)
        data = tiny_dataset(kind)
        model = build_model(name, data.info, dict(cls.smoke_config), tokenizer=data.tokenizer).eval()
        try:
            spec = model.export_module(2)
        except GenzooError as err:
            assert f"'{name}'" in str(err)
            continue
        with torch.no_grad():
            out = spec.module(*check_inputs(spec, 0).values())
        assert out.shape[0] == 2 and torch.isfinite(out).all(), name
