"""Edge builds of a trained run: ``genzoo.export(run, "onnx" | "int8" | "torchscript", out)``.

A model says which of its networks samples on its own through the contract hook
:meth:`~genzoo.contract.GenerativeModel.export_module` (a GAN's generator, a VAE's decoder, a flow's inverse, a token
model's next-token logits over a fixed window). Exporting writes one folder, atomically (a failed export leaves
nothing behind and an earlier export intact):

* ``onnx`` -- ``model.onnx`` (``torch.onnx.export``), run in onnxruntime on seeded inputs against the original;
* ``torchscript`` -- ``model.pt`` (``torch.jit.trace``; deprecated in recent torch but loadable from C++ libtorch
  without Python), reloaded and run against the original;
* ``int8`` -- ``model.int8.safetensors``: the whole model with dynamic int8 quantization of its ``nn.Linear`` layers
  (int8 weights, activations quantized on the fly per batch: :func:`torch.ao.quantization.quantize_dynamic`) and
  weight-only int8 of its convolutions and LSTMs (per output channel, dequantized when loaded: a 4x smaller file,
  the float kernels' speed). No pickle: int8 values, scales and float tensors are safetensors, the recipe is JSON,
  and :func:`load_int8` rebuilds the model and puts the int8 weights back exactly;

each with ``export.json``: format, inputs and output (names, shapes, dtypes), how to sample with the artefact, the
model, its hyperparameters and data, the source run, and the measured ``max_abs_diff`` against the original float
model on the same inputs. Shapes are fixed (``batch``, and ``context`` for token models): the shared networks fold
the batch size into reshapes when traced.
"""

from __future__ import annotations

import copy
import os
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from genzoo.contract import DataKind, ExportSpec, GenerativeModel, eval_mode
from genzoo.errors import ConfigError, GenzooError, RunDirError
from genzoo.io import load_tensors, read_json, replace_dir_atomically, save_tensors, write_json
from genzoo.kinds import DataInfo
from genzoo.registry import build_model
from genzoo.runs import RunDir

__all__ = ["FORMATS", "Exported", "export", "load_export", "load_int8", "quantize_int8"]

Format = Literal["onnx", "int8", "torchscript"]
FORMATS: tuple[str, ...] = ("onnx", "int8", "torchscript")
ARTEFACTS = {"onnx": "model.onnx", "torchscript": "model.pt", "int8": "model.int8.safetensors"}
SIDECAR = "export.json"
#: layers that keep float kernels but store int8 weights (per output channel); the axis of output channels
WEIGHT_ONLY: dict[type[nn.Module], int] = {nn.Conv1d: 0, nn.Conv2d: 0, nn.ConvTranspose2d: 1, nn.LSTM: 0, nn.GRU: 0}


def export(run: str | Path, format: str, out: str | Path | None = None, *, batch: int = 1,
           context: int | None = None, opset: int = 18, checkpoint: str = "best", seed: int = 0) -> dict[str, Any]:
    """Export the sampling network of ``run`` as ``format`` into folder ``out`` (default ``RUN/export/FORMAT``).

    The artefact is checked against the original model on inputs drawn with ``seed`` and the maximum absolute
    difference recorded; returns the sidecar (also written as ``out/export.json``)."""
    if format not in FORMATS:
        raise ConfigError(f"unknown export format '{format}' (choose from {', '.join(FORMATS)})")
    if batch < 1:
        raise ConfigError(f"batch must be at least 1, got {batch}")
    rundir = RunDir(run)
    if not rundir.exists():
        raise RunDirError(f"{rundir.path}: not a run directory (no config.json)")
    model = rundir.load_model(checkpoint)
    if context is not None and model.data.kind is not DataKind.TOKENS:
        raise ConfigError(f"context is for token models; '{model.name}' is trained on {model.data.kind.value} data")
    with eval_mode(model), torch.no_grad():
        spec = model.export_module(batch, context)
        inputs = check_inputs(spec, seed)
        expected = spec.module(*inputs.values())
    folder = Path(out) if out is not None else rundir.path / "export" / format
    record = _record(model, spec, inputs, expected, format)
    settings = {"batch": batch, "context": context, "opset": opset}
    writer = {"onnx": _write_onnx, "torchscript": _write_torchscript, "int8": _write_int8}[format]

    def fill(tmp: Path) -> None:
        record.update(writer(model, spec, inputs, expected, tmp / ARTEFACTS[format], settings))
        record["size_bytes"] = (tmp / ARTEFACTS[format]).stat().st_size
        model.save_assets(tmp)
        write_json(tmp / SIDECAR, record)

    try:
        replace_dir_atomically(folder, fill)
    except BaseException:
        shutil.rmtree(folder.with_name(f".{folder.name}.tmp"), ignore_errors=True)  # its scratch copy: no debris
        raise
    return record


def check_inputs(spec: ExportSpec, seed: int) -> dict[str, Tensor]:
    """The inputs the artefact is checked on: standard normal noise (from ``seed``) for ``spec.noise`` inputs, the
    model's own example values for the others (class labels, token ids)."""
    generator = torch.Generator().manual_seed(seed)
    return {name: torch.randn(example.shape, generator=generator) if name in spec.noise else example
            for name, example in spec.inputs.items()}


def _record(model: GenerativeModel, spec: ExportSpec, inputs: dict[str, Tensor], expected: Tensor,
            format: str) -> dict[str, Any]:
    def describe(name: str, t: Tensor) -> dict[str, Any]:
        return {"name": name, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}

    return {"format": format, "artefact": ARTEFACTS[format], "model": model.name,
            "hparams": model.config.model_dump(mode="json"), "data": model.data.to_json(), "source": model.provenance,
            "inputs": [describe(k, v) for k, v in inputs.items()], "output": describe(spec.output, expected),
            "noise": list(spec.noise), "sampling": spec.sampling, "torch": torch.__version__}


def _max_abs_diff(a: Tensor, b: Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


# ----- formats ---------------------------------------------------------------------------------------------------
def _write_onnx(model: GenerativeModel, spec: ExportSpec, inputs: dict[str, Tensor], expected: Tensor,
                path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``torch.onnx.export`` with the TorchScript-based exporter (``dynamo=False``): a second per model where the
    torch.export-based one takes ~10 s and gives the same graph here; then onnxruntime against torch."""
    import onnxruntime

    opset = settings["opset"]
    try:
        # the exporter's deprecation notices and tracer warnings, and the graph it prints on a failure
        with warnings.catch_warnings(), torch.no_grad(), _quiet_stdout():
            warnings.simplefilter("ignore")
            torch.onnx.export(spec.module, tuple(inputs.values()), str(path), input_names=list(inputs),
                              output_names=[spec.output], opset_version=opset, dynamo=False)
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    except GenzooError:
        raise
    except Exception as err:  # the exporter and onnxruntime raise many types; all mean "this graph does not export"
        raise GenzooError(f"model '{model.name}' did not export to ONNX (opset {opset}): "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    return {"max_abs_diff": _max_abs_diff(torch.from_numpy(got), expected), "checked_with": "onnxruntime " +
            onnxruntime.__version__, "opset": opset, "exporter": "torch.onnx.export(dynamo=False)"}


@contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Standard output (file descriptor 1) to /dev/null: the ONNX exporter prints its whole graph from C++ on an
    unsupported operator, before the error that says which."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def _write_torchscript(model: GenerativeModel, spec: ExportSpec, inputs: dict[str, Tensor], expected: Tensor,
                       path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """``torch.jit.trace`` (deprecated since torch 2.9 in favour of torch.export, still the format libtorch loads),
    saved, reloaded and run against the original."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(spec.module, tuple(inputs.values()), check_trace=False)
            torch.jit.save(traced, str(path))
            got = torch.jit.load(str(path))(*inputs.values())
    except Exception as err:
        raise GenzooError(f"model '{model.name}' did not trace to TorchScript: "
                          f"{type(err).__name__}: {str(err).splitlines()[0][:300]}") from None
    return {"max_abs_diff": _max_abs_diff(got, expected), "checked_with": "torch.jit.load",
            "exporter": "torch.jit.trace"}


def _write_int8(model: GenerativeModel, spec: ExportSpec, inputs: dict[str, Tensor], expected: Tensor,
                path: Path, settings: dict[str, Any]) -> dict[str, Any]:
    quantized = quantize_int8(model)
    tensors, recipe = int8_tensors(quantized)
    save_tensors(path, tensors)
    with eval_mode(quantized), torch.no_grad():
        got = quantized.export_module(settings["batch"], settings["context"]).module(*inputs.values())
    return {"max_abs_diff": _max_abs_diff(got, expected), "checked_with": "torch (quantized modules)",
            "quantization": recipe}


# ----- int8 ------------------------------------------------------------------------------------------------------
def quantize_int8(model: GenerativeModel) -> GenerativeModel:
    """A copy of ``model`` with dynamic int8 ``nn.Linear`` layers and int8-rounded convolution and recurrent weights.

    Dynamic quantization (torch.ao) stores each Linear's weight as int8 with one scale (symmetric, per tensor) and
    quantizes activations per batch at run time. PyTorch has no dynamic int8 kernel for convolutions (static int8
    convolutions need calibration and fused, quantization-aware modules), so their weights are rounded to int8 per
    output channel and run in float: the quality cost of int8 weights, not its speed."""
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    # plain Linear layers only: a parametrized one (spectral norm) recomputes its weight and stays float
    linears = {name: default_dynamic_qconfig for name, m in model.named_modules() if type(m) is nn.Linear}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice (moving to torchao)
        quantized = quantize_dynamic(copy.deepcopy(model), linears, dtype=torch.qint8)
    for module in quantized.modules():
        for _, weight in _weight_only(module):
            int8, scale = _round_int8(weight, WEIGHT_ONLY[type(module)])
            weight.data.copy_(_dequantize(int8, scale, WEIGHT_ONLY[type(module)]))
    return quantized.eval()


def _weight_only(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The weights of ``module`` stored as int8 per output channel (none unless it is a WEIGHT_ONLY layer)."""
    if type(module) not in WEIGHT_ONLY:
        return []
    return [(name, p) for name, p in module.named_parameters(recurse=False) if name.startswith("weight")]


def _round_int8(weight: Tensor, axis: int) -> tuple[Tensor, Tensor]:
    """Symmetric int8 per channel of ``axis``: q = round(w / s) in [-127, 127], s = max |w| / 127."""
    dims = [d for d in range(weight.dim()) if d != axis]
    scale = weight.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-12) / 127.0
    return (weight.detach() / scale).round().clamp(-127, 127).to(torch.int8), scale.flatten()


def _dequantize(int8: Tensor, scale: Tensor, axis: int) -> Tensor:
    shape = [1] * int8.dim()
    shape[axis] = -1
    return int8.float() * scale.view(shape)


def int8_tensors(quantized: GenerativeModel) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Every tensor of a :func:`quantize_int8` model, flat for safetensors, and the recipe that reads them back."""
    tensors: dict[str, Tensor] = {}
    dynamic, weight_only = [], []
    for prefix, module in quantized.named_modules():
        if isinstance(module, torch.ao.nn.quantized.dynamic.Linear):
            weight, bias = module._weight_bias()
            tensors[f"{prefix}.weight.int8"] = weight.int_repr()
            tensors[f"{prefix}.weight.scale"] = torch.tensor(weight.q_scale(), dtype=torch.float64)
            tensors[f"{prefix}.weight.zero_point"] = torch.tensor(weight.q_zero_point())
            if bias is not None:
                tensors[f"{prefix}.bias"] = bias.detach()
            dynamic.append(prefix)
        for name, weight in _weight_only(module):
            tensors[f"{prefix}.{name}.int8"], tensors[f"{prefix}.{name}.scale"] = _round_int8(
                weight, WEIGHT_ONLY[type(module)])
            weight_only.append(f"{prefix}.{name}")
    skip = set(weight_only)
    for key, value in quantized.state_dict().items():
        if isinstance(value, Tensor) and not value.is_quantized and key not in skip and not _in(key, dynamic):
            tensors[key] = value
    recipe = {"dynamic_int8_linear": dynamic, "weight_only_int8": weight_only,
              "scheme": "symmetric int8: per tensor (dynamic Linear, torch.ao), per output channel (weight-only)"}
    return tensors, recipe


def _in(key: str, prefixes: list[str]) -> bool:
    return any(key.startswith(f"{p}.") for p in prefixes)


def load_int8(folder: str | Path) -> GenerativeModel:
    """The model of an ``int8`` export: rebuilt from its sidecar, quantized the same way, and given the stored int8
    weights (exactly, not re-quantized)."""
    info = _sidecar(folder, "int8")
    folder = Path(folder)
    try:
        model = build_model(info["model"], DataInfo.from_json(info["data"]), info["hparams"])
    except ConfigError as err:
        raise RunDirError(f"{folder / SIDECAR}: {err}") from None
    model.load_assets(folder)
    quantized = quantize_int8(model)
    tensors = load_tensors(folder / info["artefact"])
    recipe = info["quantization"]
    modules = dict(quantized.named_modules())
    try:
        for prefix in recipe["dynamic_int8_linear"]:
            weight = torch._make_per_tensor_quantized_tensor(
                tensors.pop(f"{prefix}.weight.int8"), float(tensors.pop(f"{prefix}.weight.scale")),
                int(tensors.pop(f"{prefix}.weight.zero_point")))
            modules[prefix].set_weight_bias(weight, tensors.pop(f"{prefix}.bias", None))
        for key in recipe["weight_only_int8"]:
            prefix, _, name = key.rpartition(".")
            module = modules[prefix]
            getattr(module, name).data.copy_(_dequantize(tensors.pop(f"{key}.int8"), tensors.pop(f"{key}.scale"),
                                                         WEIGHT_ONLY[type(module)]))
    except KeyError as err:
        raise RunDirError(f"{folder / info['artefact']}: missing int8 tensor {err}") from None
    state = quantized.state_dict()  # the quantized layers' packed weights as just set, then the float tensors
    unexpected = sorted(set(tensors) - set(state))
    if unexpected:
        raise RunDirError(f"{folder / info['artefact']}: tensors do not match the model ({unexpected[:5]})")
    state.update(tensors)  # in place: the dict's _metadata holds the quantized layers' format version
    quantized.load_state_dict(state)
    return quantized.with_provenance(**{**info["source"], "weights": "int8"}).eval()


# ----- using an artefact -----------------------------------------------------------------------------------------
def _sidecar(folder: str | Path, format: str | None = None) -> dict[str, Any]:
    path = Path(folder) / SIDECAR
    if not path.is_file():
        raise RunDirError(f"{folder}: not an export folder (no {SIDECAR})")
    info = read_json(path)
    if not isinstance(info, dict) or info.get("format") not in FORMATS or "artefact" not in info:
        raise RunDirError(f"{path}: not a genzoo export sidecar")
    if format is not None and info["format"] != format:
        raise GenzooError(f"{folder} holds a {info['format']} export, not {format}")
    return info


@dataclass
class Exported:
    """An ``onnx`` or ``torchscript`` artefact ready to run: :meth:`run` on named inputs, :meth:`sample` to draw
    examples the way the sidecar says (fixed batch: ``n`` is drawn in batches, the last one padded)."""

    info: dict[str, Any]
    runner: Any

    @property
    def batch(self) -> int:
        return int(self.info["inputs"][0]["shape"][0])

    def run(self, **inputs: Tensor) -> Tensor:
        if self.info["format"] == "onnx":
            return torch.from_numpy(self.runner.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
        with torch.no_grad():
            return self.runner(*(inputs[spec["name"]] for spec in self.info["inputs"]))

    def sample(self, n: int, seed: int = 0, labels: Tensor | None = None) -> Tensor:
        """``n`` samples: noise inputs from a generator seeded with ``seed`` (the numbers ``model.sample`` draws),
        ``labels`` for a class-conditional generator; token models draw ids one position at a time."""
        generator = torch.Generator().manual_seed(seed)
        names = [spec["name"] for spec in self.info["inputs"]]
        if names == ["ids"]:
            return self._sample_tokens(n, generator)
        if set(names) - set(self.info["noise"]) - {"labels"}:
            raise GenzooError(f"this export takes inputs {names}; sample() draws noise and labels only")
        if ("labels" in names) != (labels is not None):
            raise GenzooError("a class-conditional export samples given labels" if labels is None else
                              "this export takes no labels")
        shapes = {spec["name"]: spec["shape"][1:] for spec in self.info["inputs"]}
        noise = {name: torch.randn(n, *shapes[name], generator=generator) for name in names if name != "labels"}
        if labels is not None:
            noise["labels"] = torch.as_tensor(labels, dtype=torch.long).expand(n)
        chunks = [self.run(**{k: _padded(v[i: i + self.batch], self.batch) for k, v in noise.items()})
                  for i in range(0, n, self.batch)]
        return torch.cat(chunks)[:n]

    def _sample_tokens(self, n: int, generator: torch.Generator) -> Tensor:
        context = self.info["inputs"][0]["shape"][1]
        bos = DataInfo.from_json(self.info["data"]).levels or 0
        ids = torch.full((n, context + 1), bos, dtype=torch.long)  # BOS, then ``context`` drawn tokens
        for t in range(context):
            logits = torch.cat([self.run(ids=_padded(ids[i: i + self.batch, :context], self.batch))
                                for i in range(0, n, self.batch)])[:n, t]
            ids[:, t + 1] = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
        return ids[:, 1:]


def _padded(x: Tensor, size: int) -> Tensor:
    """``x`` with its first row repeated up to ``size`` rows (a fixed-batch artefact's last, partial batch)."""
    return x if len(x) == size else torch.cat([x, x[:1].expand(size - len(x), *x.shape[1:])])


def load_export(folder: str | Path) -> Exported | GenerativeModel:
    """An export folder ready to use: :class:`Exported` for onnx and torchscript, the int8 model for int8."""
    info = _sidecar(folder)
    if info["format"] == "int8":
        return load_int8(folder)
    path = Path(folder) / info["artefact"]
    if not path.is_file():
        raise RunDirError(f"{path}: file is missing")
    if info["format"] == "onnx":
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()  # genzoo's thread setting, not all cores
        return Exported(info, onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Exported(info, torch.jit.load(str(path)))

