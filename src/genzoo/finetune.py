"""Continue training a language model on new text: ``genzoo train MODEL --data text:new.txt --init RUN_OR_HF [--lora]``.

``--init RUN`` starts from a trained genzoo run: same model and hyperparameters, its weights, and its tokenizer and
context for the new text (so token ids mean the same). A LoRA-tuned run's adapters are first merged into its base
weights, so it continues like any run: fully, or with ``--lora`` under new adapters. ``--init hf:NAME`` starts from a
Hugging Face model and reads the text with that model's tokenizer. ``--lora`` trains rank-8 LoRA adapters only
(``--set lora_rank=N`` for another rank); without it the whole model trains. The trainer calls
:func:`plan_training` before it loads the data and :meth:`TrainingPlan.apply` once the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genzoo.contract import GenerativeModel
from genzoo.errors import ConfigError
from genzoo.registry import model_class

LORA_RANK = 8
_TEXT_PREFIXES = ("text", "jsonl")


def with_text_options(spec: str, **options: Any) -> str:
    """Add ``key=value`` options to a ``text:``/``jsonl:`` spec unless the spec already sets them."""
    prefix, sep, rest = spec.partition(":")
    if prefix not in _TEXT_PREFIXES or not sep:
        return spec
    path, _, fragment = rest.partition("#")
    items = [item for item in fragment.split(",") if item]
    present = {item.partition("=")[0] for item in items}
    items += [f"{k}={v}" for k, v in options.items() if v is not None and k not in present]
    return f"{prefix}:{path}" + (f"#{','.join(items)}" if items else "")


@dataclass
class TrainingPlan:
    """What to train: the model name, its data spec and hyperparameters, and the weights to start from."""

    model: str
    data: Any
    hparams: dict[str, Any]
    init_run: Path | None = None
    notes: list[str] = field(default_factory=list)

    def apply(self, model: GenerativeModel) -> None:
        """Copy the init run's weights (its LoRA adapters merged in) into the freshly built ``model``.

        The model's own LoRA layers, if any, keep their fresh adapters.
        """
        if self.init_run is None:
            return
        from genzoo.nn.lora import base_key, merged_weights
        from genzoo.runs import load

        source = merged_weights(load(self.init_run))
        target = model.state_dict()
        missing = [k for k in target if "lora_" not in k and base_key(k) not in source]
        if missing:
            raise ConfigError(f"--init {self.init_run}: its weights do not fit this model (no {missing[0]})")
        for key, value in target.items():
            if "lora_" in key:
                continue
            weight = source[base_key(key)]
            if weight.shape != value.shape:
                raise ConfigError(f"--init {self.init_run}: {base_key(key)} has shape {tuple(weight.shape)}, the "
                                  f"model needs {tuple(value.shape)} (different hyperparameters or context?)")
            value.copy_(weight)


def plan_training(model: str, data: Any, hparams: dict[str, Any], init: str | None = None,
                  lora: bool = False) -> TrainingPlan:
    """Resolve ``--init``/``--lora`` and give text specs the tokenizer the model needs.

    ``data`` may be a spec string or a Dataset (left unchanged). ``hparams`` given by the user win over the init
    run's.
    """
    hparams = dict(hparams)
    plan = TrainingPlan(model, data, hparams)
    if lora:
        hparams.setdefault("lora_rank", LORA_RANK)
    if init and init.startswith("hf:"):
        if model not in ("hf", init):
            plan.notes.append(f"--init {init} trains the Hugging Face model (not '{model}')")
        plan.model = "hf"
        hparams.setdefault("pretrained", init[3:])
    elif init:
        from genzoo.runs import read_config

        saved = read_config(init)
        if model != saved["model"]:
            raise ConfigError(f"--init {init} is a '{saved['model']}' run; train '{saved['model']}' to continue it")
        inherited = dict(saved["hparams"])
        if not lora and "lora_rank" in inherited:  # a LoRA run's adapters are merged: continue with full training
            inherited["lora_rank"] = 0
        plan.hparams = hparams = {**inherited, **hparams}
        plan.init_run = Path(init)
        if isinstance(data, str):
            context = saved["data"]["info"]["shape"][0]
            plan.data = with_text_options(data, tokenizer=init, context=context)
    if lora and "lora_rank" not in model_class(plan.model).Config.model_fields:
        raise ConfigError(f"--lora: model '{plan.model}' has no linear layers to adapt; LoRA works for gpt and hf")
    base, _, arg = plan.model.partition(":")
    if base == "hf" and isinstance(plan.data, str):
        name = hparams.get("pretrained") or arg
        if name:
            plan.data = with_text_options(plan.data, tokenizer=f"hf:{name}")
    return plan
