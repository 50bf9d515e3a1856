"""Continue training a language model on new text: ``genzoo train MODEL --data text:new.txt --init RUN_OR_HF [--lora]``.

``--init RUN`` starts from a trained genzoo run: same model and hyperparameters, its weights, and its tokenizer and
context for the new text (so token ids mean the same). A LoRA-tuned run's adapters are first merged into its base
weights, so it continues like any run: fully, or with ``--lora`` under new adapters. ``--init hf:NAME`` starts from a
Hugging Face model and reads the text with that model's tokenizer. ``--lora`` trains rank-8 LoRA adapters only
(``--set lora_rank=N`` for another rank); without it the whole model trains. The trainer calls
:func:`plan_training` before it loads the data, loads it with ``load_dataset(plan.data, options=plan.data_options)``
(the tokenizer and context the model needs, as defaults the spec's own ``#options`` still override; the spec itself
is never rewritten) and calls :meth:`TrainingPlan.apply` once the model is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from genzoo.contract import GenerativeModel
from genzoo.data.specs import DataOptions
from genzoo.errors import ConfigError
from genzoo.registry import make_config, model_class
from genzoo.runs import pretrained_class

LORA_RANK = 8


@dataclass
class TrainingPlan:
    """What to train: the model name, its data (the spec or Dataset as given) and hyperparameters, the data options
    to read a spec with (None: the spec's own), and the weights to start from."""

    model: str
    data: Any
    hparams: dict[str, Any]
    data_options: DataOptions | None = None
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
    """Resolve ``--init``/``--lora`` and the text options the model needs.

    ``data`` (a spec string or a Dataset) is returned unchanged; for a spec, ``plan.data_options`` holds the
    tokenizer and context to read it with (an ``--init RUN``'s, or an ``hf`` model's tokenizer) as defaults that the
    spec's own ``#options`` override. ``hparams`` given by the user win over the init run's.
    """
    hparams = dict(hparams)
    plan = TrainingPlan(model, data, hparams)
    text: dict[str, Any] = {}
    if lora:
        hparams.setdefault("lora_rank", LORA_RANK)
    pretrained = pretrained_class(init) if init else None
    if pretrained is not None:  # --init hf:NAME: a model class that loads pretrained weights by name
        if model not in (pretrained.name, init):
            plan.notes.append(f"--init {init} trains the '{pretrained.name}' model (not '{model}')")
        plan.model = pretrained.name
        hparams.setdefault(pretrained.name_argument, init.partition(":")[2])
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
        info = saved["data"]["info"]
        if info.get("kind") == "tokens":  # the new text is read with the run's tokenizer and context
            text.update(tokenizer=str(init), context=info["shape"][0])
    if lora and "lora_rank" not in model_class(plan.model).Config.model_fields:
        raise ConfigError(f"--lora: model '{plan.model}' has no linear layers to adapt; LoRA works for gpt and hf")
    for key, value in model_class(plan.model).data_options(make_config(plan.model, hparams)).items():
        text.setdefault(key, value)
    if text and isinstance(data, str):
        plan.data_options = DataOptions(**text)
    return plan
